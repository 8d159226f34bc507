"""Run CamVid configs and append their val mIoU to bench/RESULTS.md.

    python bench/camvid.py configs/camvid/suponly_1-8.yaml configs/camvid/suponly_full.yaml \
        --set train.num_threads=1 --parallel 2

Each config trains with ``u2plus train`` into runs/bench/<name>_s<seed>, then one row per run is
appended to the results table: config, seed, labeled images, steps, val mIoU, val mean class
accuracy (mAcc, "-" for runs that predate it), wall time, the exact command and the machine.
``--parallel N`` runs N trainings at once (use train.num_threads=1 with N=2 on a 2-core machine:
faster in total than one 2-thread run after another).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
ENV = {"MALLOC_MMAP_THRESHOLD_": "17179869184", "MALLOC_TRIM_THRESHOLD_": "17179869184",
       "MALLOC_TOP_PAD_": "1073741824"}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {dev}, torch {torch.__version__}, {platform.system()}"


def run_one(config: str, seed: int, extra: list[str], tag: str) -> dict:
    name = Path(config).stem
    out_dir = REPO / "runs" / "bench" / f"{name}{tag}_s{seed}"
    cmd = [sys.executable, "-m", "u2plus", "train", config, f"seed={seed}", f"out_dir={out_dir}", *extra]
    log = out_dir.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=f, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed, see {log}")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    display = ["u2plus", "train", os.path.relpath(config, REPO), f"seed={seed}",
               f"out_dir={os.path.relpath(out_dir, REPO)}", *extra]
    return {"config": name, "seed": seed, "labeled": metrics["labeled_images"], "steps": metrics["steps"],
            "mIoU": metrics["mIoU"], "mAcc": metrics.get("mAcc"), "wall_min": wall / 60,
            "sec_per_step": metrics["seconds_per_step"],
            "command": shlex.join(display)}


SECTIONS = {"suponly": "## CamVid SupOnly", "semi": "## CamVid semi-supervised"}


def add_to_section(block: str, heading: str) -> None:
    """Insert ``block`` at the end of the RESULTS.md section whose heading starts with
    ``heading`` (before the next ``## `` heading); append it when there is no such section."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find("\n" + heading)
    if start < 0:
        text = text.rstrip("\n") + "\n" + block
    else:
        end = text.find("\n## ", start + 1)
        end = len(text) if end < 0 else end
        text = text[:end].rstrip("\n") + "\n" + block + text[end:]
    RESULTS.write_text(text)


def append_rows(rows: list[dict], note: str, section: str) -> None:
    header = ("| config | seed | labeled | steps | val mIoU | val mAcc | wall (min) | s/step | command |\n"
              "|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"\n### {time.strftime('%Y-%m-%d %H:%M')} — {note}\n", f"Machine: {machine()}\n\n", header]
    for r in rows:
        macc = "-" if r["mAcc"] is None else f"{r['mAcc']:.2f}"
        lines.append(f"| {r['config']} | {r['seed']} | {r['labeled']} | {r['steps']} | {r['mIoU']:.2f} | {macc} | "
                     f"{r['wall_min']:.1f} | {r['sec_per_step']:.2f} | `{r['command']}` |\n")
    add_to_section("".join(lines), SECTIONS[section])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for every run")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--tag", default="", help="suffix of the run folders")
    p.add_argument("--note", default="CamVid val", help="heading of the appended results block")
    p.add_argument("--section", choices=("auto", *SECTIONS), default="auto",
                   help="RESULTS.md section of the block (auto: suponly when every config is SupOnly)")
    args = p.parse_args()
    jobs = [(c, s) for c in args.configs for s in args.seeds]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(run_one, c, s, args.set, args.tag) for c, s in jobs]
        rows = []
        for fut in futures:
            row = fut.result()
            rows.append(row)
            print(json.dumps(row), flush=True)
    section = args.section
    if section == "auto":
        section = "suponly" if all(Path(c).stem.startswith("suponly") for c in args.configs) else "semi"
    append_rows(rows, args.note, section)


if __name__ == "__main__":
    main()
