"""Where one U2PL+ training step makes the host wait for the GPU.

Runs warm U2PL+ steps (the real method and model from a config, synthetic batches) on CUDA with
``torch.cuda.set_sync_debug_mode("warn")`` and prints each Python line that caused a
synchronising call (``.item()``, ``.tolist()``, a boolean mask's size, ...), with its count per step,
then the profiler's top operators by CUDA time.

    python bench/cuda_syncs.py                       # CamVid setting: 160x224, 4 + 4
    python bench/cuda_syncs.py --config configs/voc/_base.yaml --crop 513 513 --batch 8
"""

from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from step_cost import build_training_step  # noqa: E402
from u2plus.config import load_config  # noqa: E402
from u2plus.methods import build_method  # noqa: E402
from u2plus.models import build_segmentor  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/camvid/_base.yaml")
    p.add_argument("--crop", type=int, nargs=2, default=(160, 224))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--method", default="u2pl_plus")
    args = p.parse_args()
    device = torch.device("cuda")
    cfg = load_config(REPO / args.config, [f"method.name={args.method}", "model.pretrained=none",
                                           f"train.amp={args.amp}", "method.sup_only_epochs=0"])
    torch.manual_seed(0)
    method = build_method(cfg, build_segmentor(cfg.model, cfg.data.num_classes))
    step = build_training_step(method, cfg, args.batch, tuple(args.crop), device)
    for i in range(3):
        step(i)
    torch.cuda.synchronize()
    sites: collections.Counter[str] = collections.Counter()
    steps = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        for i in range(3, 3 + steps):
            step(i)
        torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        sites[f"{Path(w.filename).name}:{w.lineno}"] += 1
    print(f"synchronising calls per step: {sum(sites.values()) / steps:g}")
    for site, n in sites.most_common():
        print(f"  {n / steps:5g}  {site}")
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(10, 13):
            step(i)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
