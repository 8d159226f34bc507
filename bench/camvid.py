"""Train CamVid configs and record each run: one JSON line in bench/results.jsonl and a row in
bench/RESULTS.md.

    python bench/camvid.py configs/camvid/suponly_1-8.yaml configs/camvid/suponly_full.yaml \
        --set train.num_threads=1 data.num_workers=1 --parallel 2 --runs ../runs/bench

Each config trains with ``u2plus train ... resume=auto`` into ``<runs>/<name><tag>_s<seed>`` (a
killed benchmark continues where it stopped when started again). With ``train.eval_every=K`` the
run evaluates every K steps (the EMA teacher for semi-supervised methods, the student for SupOnly)
and the curve is recorded. The JSON line holds config, method, labeled / unlabeled counts, seed,
steps, image size, crop, batches, final and best val mIoU, per-class IoU, mAcc, the curve, wall
seconds, the exact command, the commit and the machine; the RESULTS.md row the headline numbers.

``--record RUN_DIR ...`` records finished run folders instead of training (e.g. runs started by
hand with ``u2plus train``; their command is rebuilt from the folder's config).

Domain-adaptive configs (``configs/camvid_dusk/``) evaluate on the target (the dusk images) and
on the source's val split (day val): their JSON lines hold both (``eval``, and ``sets`` in each
curve point), and their RESULTS.md block, in the section "CamVid day -> dusk", adds the mean and
standard deviation over seeds of each config and its mean per-class IoU on dusk:

    python bench/camvid.py configs/camvid_dusk/{source_only,daformer,daformer_u2pl_plus}.yaml \
        --seeds 0 1 2 --set train.num_threads=1 data.num_workers=1 --parallel 2 --note "CamVid day -> dusk"
``--parallel N`` runs N trainings at once. On the 2-core machine one 2-thread run after another is
faster in total (SupOnly 1/8: 1.1 s/step alone at two threads, 2.9 s/step at one thread beside
another training); ``bench/camvid_protocol.sh`` queues them so. ``bench/plot_curves.py`` draws the curves.
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
sys.path.insert(0, str(REPO))
from u2plus.paths import resolve_root, use_data_dir_if_unset  # noqa: E402

use_data_dir_if_unset(REPO.parent / "shared" / "data")  # this machine's data directory, unless U2PLUS_DATA is set
ENV = {"MALLOC_MMAP_THRESHOLD_": "17179869184", "MALLOC_TRIM_THRESHOLD_": "17179869184",
       "MALLOC_TOP_PAD_": "1073741824"}
SECTIONS = {"suponly": "## CamVid SupOnly", "semi": "## CamVid semi-supervised", "da": "## CamVid day -> dusk"}


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


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "u2plus", "configs"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def run_folder(runs: Path, config: str, tag: str, seed: int) -> Path:
    """The folder of one bench run: ``<config name><tag>_s<seed>`` under ``runs``."""
    return runs / f"{Path(config).stem}{tag}_s{seed}"


def run_one(config: str, seed: int, extra: list[str], tag: str, runs: Path) -> Path | None:
    """Train (or continue) one run; returns its folder, or None when it had finished before (its
    metrics.json exists: it is not trained or recorded again; --record records a folder)."""
    out_dir = run_folder(runs, config, tag, seed)
    if (out_dir / "metrics.json").exists():
        print(f"{out_dir} has finished before: skipped (record it with --record)", flush=True)
        return None
    cmd = [sys.executable, "-m", "u2plus", "train", config, f"seed={seed}", f"out_dir={out_dir}",
           "resume=auto", *extra]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(out_dir.with_suffix(".log"), "a") as f:
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **ENV}, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed, see {out_dir.with_suffix('.log')}")
    display = ["u2plus", "train", os.path.relpath(config, REPO), f"seed={seed}", f"out_dir={out_dir}",
               "resume=auto", *extra]
    (out_dir / "bench_command.txt").write_text(shlex.join(display) + "\n")
    (out_dir / "bench_wall_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    return out_dir


def image_size(cfg: dict) -> list[int] | None:
    """[height, width] of the val images as trained on (first val image, after data.resize_factor);
    in the domain-adaptive setting those of the target's val split."""
    data = cfg["data"]
    target = data.get("target") or {}
    if target.get("dataset"):
        data = {**data, **{k: v for k, v in target.items() if v is not None and k in ("root", "val_split")}}
    folder = resolve_root(data["root"], cwd=REPO)  # the runs start in REPO
    try:
        from PIL import Image

        first = sorted((folder / data["val_split"]).iterdir())[0]
        w, h = Image.open(first).size
    except (OSError, IndexError):
        return None
    f = float(data.get("resize_factor", 1.0))
    return [round(h * f), round(w * f)]


def run_record(out_dir: Path) -> dict:
    """The JSON line of a finished run folder."""
    from omegaconf import OmegaConf

    metrics = json.loads((out_dir / "metrics.json").read_text())
    cfg = OmegaConf.to_container(OmegaConf.load(out_dir / "config.yaml"))
    command_file = out_dir / "bench_command.txt"
    command = command_file.read_text().strip() if command_file.exists() else f"u2plus train {out_dir}/config.yaml"
    wall_file = out_dir / "bench_wall_seconds.txt"
    # a run that continued from a checkpoint (resumed, or warm-up taken from a SupOnly run): the
    # training seconds summed over its processes and the warm-up's (older runs: this process's wall)
    resumed = metrics.get("start_step", 0) > 0
    wall = float(wall_file.read_text()) if wall_file.exists() and not resumed else metrics["train_seconds"]
    def rounded(r: dict) -> dict:
        return {"mIoU": round(r["mIoU"], 2), "per_class": {k: round(v, 2) for k, v in r.get("per_class", {}).items()
                                                           if v is not None}}

    curve = [{"step": p["step"], **rounded(p), **({"sets": {k: rounded(v) for k, v in p["sets"].items()}}
                                                  if "sets" in p else {})}
             for p in metrics.get("curve", [])]
    d = cfg["data"]
    return {
        # the config file's name; a run started by hand (no bench_command.txt): its method's name
        "run": out_dir.name, "config": Path(command.split()[2]).stem if command_file.exists() else cfg["method"]["name"],
        "method": cfg["method"]["name"], "labeled": metrics["labeled_images"],
        "unlabeled": metrics["unlabeled_images"], "seed": cfg["seed"], "steps": metrics["steps"],
        "image_size": image_size(cfg), "crop": d["crop_size"], "batch": d["batch_size"],
        "unlabeled_batch": d["unlabeled_batch_size"] if metrics["unlabeled_images"] else 0,
        "init_from": cfg["train"].get("init_from"),
        "warmup_from": cfg["train"].get("warmup_from"),  # the SupOnly checkpoint its warm-up came from
        "mIoU": round(metrics["mIoU"], 2), "best_mIoU": round(metrics.get("best_mIoU", metrics["mIoU"]), 2),
        "best_step": metrics.get("best_step", metrics["steps"]), "mAcc": round(metrics["mAcc"], 2),
        "per_class": {k: round(v, 2) for k, v in metrics["per_class"].items()}, "curve": curve,
        "wall_seconds": round(wall), "start_step": metrics.get("start_step", 0),
        "seconds_per_step": metrics["seconds_per_step"], "command": command,
        **({"eval": {k: {"mIoU": round(v["mIoU"], 2), "mAcc": round(v["mAcc"], 2), "images": v["num_images"],
                         "per_class": rounded(v)["per_class"]} for k, v in metrics["eval"].items()}}
           if "eval" in metrics else {}),
        "commit": commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def add_to_section(results: Path, block: str, heading: str) -> None:
    """Insert ``block`` at the end of the RESULTS.md section whose heading starts with
    ``heading`` (before the next ``## `` heading); append it when there is no such section."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    start = text.find("\n" + heading)
    if start < 0:
        text = text.rstrip("\n") + "\n" + block
    else:
        end = text.find("\n## ", start + 1)
        end = len(text) if end < 0 else end
        text = text[:end].rstrip("\n") + "\n" + block + text[end:]
    results.write_text(text)


def da_block(rows: list[dict]) -> list[str]:
    """The domain-adaptive table: per run, target (dusk) and source val (day) mIoU; per config,
    their mean and standard deviation over the seeds and the mean per-class IoU on the target."""
    import statistics

    def mean_std(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"

    lines = ["| run | method | steps | target mIoU | best target mIoU (step) | source val mIoU (trained on) | wall (min) | s/step | "
             "command |\n", "|---|---|---|---|---|---|---|---|---|\n"]
    for r in rows:
        day = r["eval"].get("source", {}).get("mIoU", float("nan"))
        lines.append(f"| {r['run']} | {r['method']} | {r['steps']} | {r['mIoU']:.2f} | {r['best_mIoU']:.2f} "
                     f"({r['best_step']}) | {day:.2f} | {r['wall_seconds'] / 60:.1f} | {r['seconds_per_step']:.2f} | "
                     f"`{r['command']}` |\n")
    configs = list(dict.fromkeys(r["config"] for r in rows))
    classes = list(rows[0]["per_class"])
    lines += ["\n| config | seeds | target mIoU | source val mIoU (trained on) | " + " | ".join(classes) + " |\n",
              "|---|---|---|---|" + "---|" * len(classes) + "\n"]
    for c in configs:
        runs = [r for r in rows if r["config"] == c]
        per_class = [statistics.mean([r["per_class"][k] for r in runs if k in r["per_class"]] or [float("nan")])
                     for k in classes]
        day = [r["eval"]["source"]["mIoU"] for r in runs if "source" in r["eval"]]
        lines.append(f"| {c} | {len(runs)} | {mean_std([r['mIoU'] for r in runs])} | "
                     f"{mean_std(day) if day else 'n/a'} | " + " | ".join(f"{v:.1f}" for v in per_class) + " |\n")
    return lines


def record(rows: list[dict], note: str, section: str, bench_dir: Path) -> None:
    """Append the JSON lines to results.jsonl and one block to RESULTS.md."""
    with open(bench_dir / "results.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    if section == "da":
        lines = [f"\n### {time.strftime('%Y-%m-%d %H:%M')} — {note}\n",
                 f"Machine: {rows[0]['machine']}; commit {rows[0]['commit']}; target = "
                 f"{rows[0]['eval']['target']['images']} images, curves (target and source val) and per-class "
                 "IoU in `bench/results.jsonl`.\n\n", *da_block(rows)]
        add_to_section(bench_dir / "RESULTS.md", "".join(lines), SECTIONS[section])
        return
    header = ("| run | method | labeled | steps | final mIoU | best mIoU (step) | mAcc | wall (min) | s/step | command |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"\n### {time.strftime('%Y-%m-%d %H:%M')} — {note}\n",
             f"Machine: {rows[0]['machine']}; commit {rows[0]['commit']}; curves and per-class IoU in "
             "`bench/results.jsonl`.\n\n", header]
    for r in rows:
        lines.append(f"| {r['run']} | {r['method']} | {r['labeled']} | {r['steps']} | {r['mIoU']:.2f} | "
                     f"{r['best_mIoU']:.2f} ({r['best_step']}) | {r['mAcc']:.2f} | {r['wall_seconds'] / 60:.1f} | "
                     f"{r['seconds_per_step']:.2f} | `{r['command']}` |\n")
    add_to_section(bench_dir / "RESULTS.md", "".join(lines), SECTIONS[section])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", help="configs to train (or run folders with --record)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="overrides for every run")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--tag", default="", help="suffix of the run folders")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "bench", help="folder of the run folders")
    p.add_argument("--bench-dir", type=Path, default=REPO / "bench",
                   help="where results.jsonl and RESULTS.md are (another checkout's bench/ when this "
                        "script runs from a worktree)")
    p.add_argument("--record", action="store_true", help="record finished run folders, train nothing")
    p.add_argument("--note", default="CamVid val", help="heading of the appended results block")
    p.add_argument("--section", choices=("auto", *SECTIONS), default="auto",
                   help="RESULTS.md section of the block (auto: suponly when every run is SupOnly)")
    args = p.parse_args()
    runs = args.runs.resolve()
    if args.record:
        folders = [Path(c) for c in args.configs]
    else:
        jobs = [(c, s) for c in args.configs for s in args.seeds]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            folders = [f for f in pool.map(lambda job: run_one(*job, args.set, args.tag, runs), jobs) if f]
    rows = [run_record(f) for f in folders]
    if not rows:
        return
    for r in rows:
        print(json.dumps({k: r[k] for k in ("run", "mIoU", "best_mIoU", "best_step", "wall_seconds")}), flush=True)
    section = args.section
    if section == "auto":
        section = ("da" if all("eval" in r for r in rows) else
                   "suponly" if all(r["method"] == "suponly" for r in rows) else "semi")
    record(rows, args.note, section, args.bench_dir.resolve())


if __name__ == "__main__":
    main()
