"""Memory stays flat over a long U2PL+ run: train N steps on CPU and print the resident memory
(the trainer's ``sys/rss_mib`` curve) at a few points, after the memory bank has filled.

    python bench/rss_flat.py                  # 2000 steps, small crops, ~10-15 min on 2 cores
    python bench/rss_flat.py --steps 500      # shorter

Uses the embedded demo data and configs/demo/u2pl_plus.yaml with small crops (64x96, 2 + 2
images per step) so that 2,000 steps fit a short session; the memory bank is the paper's
(30,000 keys per class), so it fills during the run. Appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def malloc_env() -> str:
    """The glibc ``MALLOC_*`` variables the run inherits (the Makefile sets three; RSS depends on them)."""
    found = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    return ", ".join(f"{k}={v}" for k, v in sorted(found.items())) or "none (glibc defaults)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--out", default="runs/bench/rss_flat")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "u2plus", "train", "configs/demo/u2pl_plus.yaml", f"out_dir={args.out}",
           f"train.max_iters={args.steps}", "train.log_every=20", f"train.checkpoint_every={args.steps // 4}",
           "data.batch_size=2", "data.unlabeled_batch_size=2", "data.crop_size=[64,96]", "data.num_workers=1",
           f"train.num_threads={args.threads}", "method.sup_only_epochs=0", "overwrite=true"]
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    minutes = (time.time() - t0) / 60

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(REPO / args.out / "tb"))
    acc.Reload()
    rss = {e.step: e.value for e in acc.Scalars("sys/rss_mib")}
    fill = {e.step: e.value for e in acc.Scalars("train/per_class/queue_fill/road")} \
        if "train/per_class/queue_fill/road" in acc.Tags()["scalars"] else {}
    points = sorted({s for s in rss if s in (20, 100)} | {s for s in rss if s % (args.steps // 8) == 0})
    later = [v for s, v in rss.items() if s >= args.steps // 4]
    lines = ["| step | RSS (MiB) | road queue fill |", "|---|---|---|"]
    lines += [f"| {s} | {rss[s]:.0f} | {fill.get(s, float('nan')):.0f} |" for s in points]
    steps_later = [s for s in rss if s >= args.steps // 4]
    n = len(steps_later)
    mean_s, mean_v = sum(steps_later) / n, sum(later) / n
    slope = sum((s - mean_s) * (v - mean_v) for s, v in zip(steps_later, later)) / \
        max(sum((s - mean_s) ** 2 for s in steps_later), 1e-9)
    summary = (f"RSS from step {args.steps // 4} to {args.steps} (bank full): min {min(later):.0f} MiB, "
               f"mean {mean_v:.0f} MiB, max {max(later):.0f} MiB, least-squares trend "
               f"{slope * 1000:+.0f} MiB per 1000 steps; wall {minutes:.1f} min")
    print("\n".join(lines))
    print(summary)
    if not args.no_record:
        block = [f"\n### {time.strftime('%Y-%m-%d %H:%M')} — memory over a long run: "
                 f"`python bench/rss_flat.py --steps {args.steps}`",
                 f"Machine: {platform.processor() or platform.machine()}, {platform.system()}; command: "
                 f"`{' '.join(cmd[1:])}`; allocator settings: {malloc_env()}", "", *lines, "", summary, ""]
        with open(REPO / "bench" / "RESULTS.md", "a") as f:
            f.write("\n".join(block))


if __name__ == "__main__":
    main()
