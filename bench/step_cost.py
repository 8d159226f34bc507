"""Cost of one training step, on whatever device this runs on.

Times (median over warm steps, forward + backward + optimiser + EMA) of
- suponly:        the student on B labeled images,
- selftrain:      teacher + student on B labeled + B unlabeled, entropy-filtered pseudo-labels,
- u2pl_plus:      the full U2PL+ step,
- u2pl_plus_noop: the same forwards as u2pl_plus (teacher with representations, student with
                  representations) but every piece of loss machinery replaced by a no-op,
and the ratios machinery = u2pl_plus / u2pl_plus_noop and u2pl_plus / suponly; the time of one
memory-bank enqueue into empty vs full queues; peak RSS, and on a GPU each variant's peak CUDA memory.

    python bench/step_cost.py            # CamVid CPU setting: crops 160x224, 4 + 4 images
    python bench/step_cost.py --quick    # < 3 minutes on a 2-core CPU
    python bench/step_cost.py --amp bf16 --config configs/voc/_base.yaml --crop 513 513 --batch 8
                                         # a GPU at the paper's VOC setting (ResNet-101, crop 513)

Synthetic images and labels (timing does not depend on content); the model and method are the
real ones built from ``--config`` (default configs/camvid/_base.yaml) with ``model.pretrained=none``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from u2plus.config import load_config  # noqa: E402
from u2plus.engine.optim import build_optimizer  # noqa: E402
from u2plus.engine.trainer import autocast_context  # noqa: E402
from u2plus.losses.queues import ClassQueues  # noqa: E402
from u2plus.losses.supervised import pixel_cross_entropy  # noqa: E402
from u2plus.methods import StepContext, build_method  # noqa: E402
from u2plus.methods import SemiSupervised  # noqa: E402
from u2plus.models import build_segmentor  # noqa: E402
from u2plus.paths import use_data_dir_if_unset  # noqa: E402

use_data_dir_if_unset(REPO.parent / "shared" / "data")  # this machine's data directory, unless U2PLUS_DATA is set


class U2PLPlusNoop(SemiSupervised):
    """All forwards of the U2PL+ step, none of its loss machinery."""

    def training_step(self, labeled, unlabeled, ctx):
        x_l, y_l = labeled["image"], labeled["mask"]
        with torch.no_grad():
            t_out = self.teacher(torch.cat([x_l, unlabeled["image"]]), with_rep=True)
        s_out = self.student(torch.cat([x_l, unlabeled["image_strong"]]), with_rep=True)
        b = x_l.shape[0]
        loss = pixel_cross_entropy(s_out["logits"][:b], y_l) + 0.0 * s_out["logits"][b:].sum() \
            + 0.0 * s_out["rep"].sum() + 0.0 * t_out["logits"].sum()
        return loss, {}


def make_batches(batch: int, crop, num_classes: int, device):
    g = torch.Generator().manual_seed(0)
    h, w = crop
    labeled = {"image": torch.randn(batch, 3, h, w, generator=g).to(device),
               "mask": torch.randint(0, num_classes, (batch, h, w), generator=g).to(device)}
    unlabeled = {"image": torch.randn(batch, 3, h, w, generator=g).to(device)}
    unlabeled["image_strong"] = unlabeled["image"] + 0.1
    return labeled, unlabeled


def build_training_step(method, cfg, batch: int, crop, device):
    """A closure ``step(i)`` running one training step on synthetic batches as the trainer runs it:
    the method's step under ``train.amp`` autocast, backward (through a GradScaler for fp16) outside
    it, then optimiser and EMA; channels-last model and images when ``train.channels_last``."""
    method.to(device).train()
    opt = build_optimizer(cfg.train, method.param_groups())
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    labeled, unlabeled = make_batches(batch, crop, cfg.data.num_classes, device)
    if cfg.train.channels_last:
        method.to(memory_format=torch.channels_last)
        for b in (labeled, unlabeled):
            for k in ("image", "image_strong"):
                if k in b:
                    b[k] = b[k].contiguous(memory_format=torch.channels_last)

    def step(i: int) -> None:
        ctx = StepContext(i, 1000, 100)
        with autocast_context(cfg.train.amp, device):
            loss, _ = method.training_step(labeled, unlabeled if "unlabeled" in method.streams else None, ctx)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        method.after_optimizer_step(ctx)

    return step


def time_method(name: str, cfg, batch: int, crop, steps: int, warmup: int, device) -> float:
    """Median time of a warm training step (:func:`build_training_step`)."""
    torch.manual_seed(0)
    model = build_segmentor(cfg.model, cfg.data.num_classes)
    method = U2PLPlusNoop(cfg, model) if name == "u2pl_plus_noop" else build_method(cfg, model)
    step = build_training_step(method, cfg, batch, crop, device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_enqueue(num_classes: int, dim: int, size: int, keys: int, repeats: int, device) -> tuple[float, float]:
    q = ClassQueues(num_classes, dim, size).to(device)
    new = torch.randn(keys, dim, device=device)
    cls = torch.randint(0, num_classes, (keys,), device=device)

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        q.enqueue(new, cls)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    empties = []
    for _ in range(repeats):
        q.reset()
        empties.append(once())
    empty = statistics.median(empties)
    while int(q.count.min()) < size:  # fill every queue
        q.enqueue(torch.randn(size * num_classes, dim, device=device),
                  torch.arange(num_classes, device=device).repeat_interleave(size))
    full = statistics.median(once() for _ in range(repeats))
    return empty, full


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small crops and few steps (< 3 min on 2 CPU cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=4, help="labeled (= unlabeled) images per step")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--config", default="configs/camvid/_base.yaml",
                   help="model and method settings (default: the CamVid CPU setting)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="crop size (default: 160 224, or 96 128 with --quick)")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="config overrides")
    args = p.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    crop = tuple(args.crop) if args.crop else ((96, 128) if args.quick else (160, 224))
    steps, warmup = (args.steps or (4 if args.quick else 10)), (1 if args.quick else 3)
    results = {}
    for name in ("suponly", "selftrain", "u2pl_plus", "u2pl_plus_noop"):
        method_name = "u2pl_plus" if name == "u2pl_plus_noop" else name
        cfg = load_config(REPO / args.config,
                          [f"method.name={method_name}", "model.pretrained=none", f"train.amp={args.amp}",
                           "method.sup_only_epochs=0", *args.set])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results[name] = time_method(name, cfg, args.batch, crop, steps, warmup, device)
        mem = f"  peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if device.type == "cuda" else ""
        print(f"{name:15s} {results[name] * 1000:8.1f} ms/step{mem}", flush=True)
    empty, full = time_enqueue(11, 256, 30000, 4096, 5 if args.quick else 20, device)
    print(f"enqueue 4096 keys: empty queues {empty * 1e3:.2f} ms, full queues {full * 1e3:.2f} ms")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={device} ({where}) config={args.config} {' '.join(args.set)} amp={args.amp} "
          f"crop={crop[0]}x{crop[1]} batch={args.batch}+{args.batch} "
          f"threads={torch.get_num_threads()}")
    print(f"machinery_ratio={results['u2pl_plus'] / results['u2pl_plus_noop']:.3f} "
          f"u2pl_plus_over_suponly={results['u2pl_plus'] / results['suponly']:.3f} "
          f"enqueue_full_over_empty={full / empty:.3f}")


if __name__ == "__main__":
    main()
