"""The training loop: plain and readable, the same for every method and process count.

build data -> check every file -> build model + method -> optimiser + schedule -> (resume) ->
loop {step, log, checkpoint, evaluate} -> final checkpoint, evaluation and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from ..config import save_config
from ..data import build_dataset, build_train_sets
from ..data.sampler import collate, make_train_loader
from ..data.transforms import EvalTransform, TrainTransform
from ..errors import CheckpointError
from ..methods import StepContext, build_method, method_class
from ..models import build_segmentor
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .evaluate import evaluate, format_iou_table
from .optim import build_optimizer, build_scheduler


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def normalisation(cfg, model):
    mean = list(cfg.data.mean) if cfg.data.mean is not None else list(model.mean)
    std = list(cfg.data.std) if cfg.data.std is not None else list(model.std)
    return mean, std


def autocast_context(amp: str, device: torch.device):
    if amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_eval_loader(cfg, split: str, mean, std):
    ds = build_dataset(cfg.data, split)
    ds.transform = EvalTransform(mean, std)
    return ds, torch.utils.data.DataLoader(ds, batch_size=cfg.eval.batch_size, shuffle=False,
                                           num_workers=min(cfg.data.num_workers, 2), collate_fn=collate)


def run_evaluation(cfg, model, loader, dataset, device, progress: bool = False) -> dict:
    was_training = model.training
    model.eval()
    e = cfg.eval
    result = evaluate(model.predict, loader, dataset.num_classes, mode=e.mode, crop_size=tuple(e.crop_size),
                      stride=tuple(e.stride) if e.stride else None, scales=tuple(e.scales), flip=e.flip,
                      ignore_index=cfg.data.ignore_index, device=device, class_names=dataset.class_names,
                      progress=progress)
    model.train(was_training)
    return result


def train(cfg) -> dict:
    """Train with ``cfg``; returns the final metrics (also written to ``out_dir/metrics.json``)."""
    out_dir = Path(cfg.out_dir)
    device = resolve_device(cfg.device)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.seed)

    # --- data, checked before anything trains ------------------------------------------
    semi = method_class(cfg).semi_supervised
    labeled, unlabeled = build_train_sets(cfg.data, semi)
    val_set = build_dataset(cfg.data, cfg.data.val_split)
    if cfg.data.validate:
        for ds in (labeled, unlabeled, val_set):
            if ds is not None:
                ds.check_files()

    # --- model, method, optimisation ----------------------------------------------------
    model = build_segmentor(cfg.model, labeled.num_classes)
    mean, std = normalisation(cfg, model)
    labeled.transform = TrainTransform(cfg.data, mean, std, strong=False)
    if unlabeled is not None:
        unlabeled.transform = TrainTransform(cfg.data, mean, std, strong=True)
    method = build_method(cfg, model).to(device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    if cfg.train.channels_last:
        method.to(memory_format=memory_format)
    iters_per_epoch = math.ceil(
        len(unlabeled) / cfg.data.unlabeled_batch_size if unlabeled is not None else len(labeled) / cfg.data.batch_size
    )
    max_iters = math.ceil(cfg.train.epochs * iters_per_epoch) if cfg.train.epochs else cfg.train.max_iters
    optimizer = build_optimizer(cfg.train, method.student)
    scheduler = build_scheduler(cfg.train, optimizer, max_iters)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")

    start_step = 0
    resume_path = _resume_path(cfg, out_dir)
    if resume_path is not None:
        state = load_checkpoint(resume_path)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_step = int(state["step"])
        print(f"resumed from {resume_path} at step {start_step}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".last.pt.*.tmp"):  # partial writes of a killed run
        stale.unlink()
    save_config(cfg, out_dir / "config.yaml")

    workers = cfg.data.num_workers
    labeled_loader = iter(make_train_loader(labeled, cfg.data.batch_size, cfg.seed, start_step, workers, stream=0))
    unlabeled_loader = (iter(make_train_loader(unlabeled, cfg.data.unlabeled_batch_size, cfg.seed, start_step,
                                               workers, stream=1)) if unlabeled is not None else None)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out_dir / "tb"))

    def checkpoint(step: int) -> None:
        save_checkpoint({
            "step": step, "method": method.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
            "config": OmegaConf.to_container(cfg), "num_classes": labeled.num_classes,
            "class_names": labeled.class_names,
        }, out_dir / "last.pt")

    val_loader = None
    method.train()
    t0 = time.time()
    bar = tqdm(range(start_step, max_iters), initial=start_step, total=max_iters, desc=cfg.method.name,
               dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        ctx = StepContext(step, max_iters, iters_per_epoch)
        batch_l = _to_device(next(labeled_loader), device, memory_format)
        batch_u = _to_device(next(unlabeled_loader), device, memory_format) if unlabeled_loader is not None else None
        with autocast_context(cfg.train.amp, device):
            loss, logs = method.training_step(batch_l, batch_u, ctx)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        method.after_optimizer_step(ctx)

        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr or check the data")
        done = step + 1
        if done % cfg.train.log_every == 0 or done == max_iters:
            scalars = {"loss": float(loss.detach())}
            scalars.update({k: float(v) for k, v in logs.items() if _is_scalar(v)})
            for k, v in scalars.items():
                writer.add_scalar(f"train/{k}", v, done)
            for k, v in logs.items():  # per-class vectors: one curve per class
                if isinstance(v, torch.Tensor) and v.numel() == labeled.num_classes and v.dim() == 1:
                    for name, x in zip(labeled.class_names, v.tolist()):
                        writer.add_scalar(f"train/{k}/{name}", x, done)
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], done)
            bar.set_postfix(_progress_fields(scalars, optimizer.param_groups[0]["lr"]), refresh=False)
        if cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0 and done < max_iters:
            checkpoint(done)
        if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < max_iters:
            if val_loader is None:
                val_set, val_loader = build_eval_loader(cfg, cfg.data.val_split, mean, std)
            res = run_evaluation(cfg, method.eval_model(), val_loader, val_set, device)
            writer.add_scalar("val/mIoU", res["mIoU"], done)
            bar.write(f"step {done}: val mIoU {res['mIoU']:.2f}")
    bar.close()
    train_time = time.time() - t0
    checkpoint(max_iters)

    val_set, val_loader = build_eval_loader(cfg, cfg.data.val_split, mean, std)
    result = run_evaluation(cfg, method.eval_model(), val_loader, val_set, device)
    writer.add_scalar("val/mIoU", result["mIoU"], max_iters)
    writer.close()
    metrics = {
        "mIoU": result["mIoU"], "per_class": result["per_class"], "split": cfg.data.val_split,
        "method": cfg.method.name, "steps": max_iters, "train_seconds": round(train_time, 1),
        "seconds_per_step": round(train_time / max(max_iters - start_step, 1), 4),
        "labeled_images": len(labeled), "unlabeled_images": len(unlabeled) if unlabeled is not None else 0,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(format_iou_table(result))
    return metrics


def _resume_path(cfg, out_dir: Path):
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        p = out_dir / "last.pt"
        return p if p.is_file() else None
    p = Path(cfg.resume)
    if not p.is_file():
        raise CheckpointError(f"resume={cfg.resume}: checkpoint not found")
    return p


def _to_device(batch: dict, device: torch.device, memory_format=torch.contiguous_format) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if v.dim() == 4:
                v = v.contiguous(memory_format=memory_format)
        out[k] = v
    return out


def _progress_fields(scalars: dict, lr: float) -> dict:
    short = {"loss": "loss", "loss_unsup": "Lu", "loss_contrastive": "Lc", "reliable_fraction": "rel",
             "lambda_u": "lam_u", "gamma": "gamma"}
    fields = {name: f"{scalars[k]:.3f}" for k, name in short.items() if k in scalars}
    fields["lr"] = f"{lr:.2e}"
    return fields


def _is_scalar(v) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
