"""The training loop: plain and readable, the same for every method, setting and process count.

claim the run folder -> build the method's data streams and the evaluated sets -> check every
file -> build model + method -> optimiser + schedule -> (resume, or a supervised warm-up from
another run) -> loop {step, log, checkpoint, evaluate} -> final checkpoint, evaluation and
``metrics.json``.

The loop knows no method: a method declares its data ``streams`` (the trainer builds and feeds
them in that order), its optimiser groups (``param_groups()``), its ``loss_terms`` and the
``progress_fields`` of the progress bar (:mod:`u2plus.methods.base`).

Every way a run can end leaves a run folder that ``resume=auto`` continues exactly: SIGTERM or
SIGINT finish the current step, write the checkpoint and end with :class:`RunStopped`
(:mod:`u2plus.engine.stopping`); a non-finite loss is skipped or ends the run with a report
before it reaches the weights (:mod:`u2plus.engine.nonfinite`); a second run into a folder in
use is refused (:mod:`u2plus.engine.run_folder`).

Under ``torchrun`` every process runs this loop on its slice of each global batch with the
student wrapped in DDP; only rank 0 logs, evaluates and writes checkpoints
(:mod:`u2plus.engine.distributed`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from ..config import MODEL_KEYS, config_from_checkpoint, save_config
from ..data import STREAMS, build_eval_sets, build_stream_sets, cam_quality_set, check_crop_fits, check_same_classes
from ..data.sampler import collate, leave_stop_signals_to_main, make_train_loader
from ..data.transforms import EvalTransform, TrainTransform
from ..errors import CheckpointError, ConfigError, NonFiniteLossError, RunStopped
from ..losses.supervised import median_frequency_weights
from ..methods import StepContext, build_method, method_class
from ..models import build_segmentor
from .cam_quality import run_cam_quality
from .checkpoint import (VERSION_FIELDS, check_model, evaluated_model_weights, load_run_checkpoint, load_weights,
                         rng_state, save_checkpoint, set_rng_state)
from .crf import crf_labels, require_crf
from .distributed import DistInfo, init_distributed, shutdown_distributed
from .evaluate import evaluate, format_iou_table, iou_from_confusion
from .nonfinite import REPORT_NAME, SkipCounter, nonfinite_buffers, nonfinite_terms, stop_reason, write_report
from .optim import build_optimizer, build_scheduler
from .run_folder import claimed_run_folder
from .stopping import StopRequest


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


def eval_loader(cfg, ds, mean, std):
    ds.transform = EvalTransform(mean, std)
    return ds, torch.utils.data.DataLoader(ds, batch_size=cfg.eval.batch_size, shuffle=False,
                                           num_workers=min(cfg.data.num_workers, 2), collate_fn=collate,
                                           worker_init_fn=leave_stop_signals_to_main)


def build_eval_loader(cfg, split: str | None, mean, std):
    """(dataset, loader) of the headline evaluated set, or of ``split`` (of the target domain in
    the domain-adaptive setting)."""
    return eval_loader(cfg, next(iter(build_eval_sets(cfg.data, split).values())), mean, std)


def run_evaluation(cfg, model, loader, dataset, device, progress: bool = False, crf: bool = False) -> dict:
    """Evaluate ``model`` in eval mode on ``loader`` (with ``crf``, also after the dense CRF, under
    ``"crf"``); the caller puts it back into training mode (the trainer through ``method.train()``,
    which keeps frozen BatchNorm layers frozen). The mIoU is over ``eval.classes`` (all when
    null); ``mIoU<n>`` over each of ``eval.class_subsets``."""
    model.eval()
    e = cfg.eval
    mean, std = normalisation(cfg, model)
    result = evaluate(model.predict, loader, dataset.num_classes, mode=e.mode, crop_size=tuple(e.crop_size),
                      stride=tuple(e.stride) if e.stride else None, scales=tuple(e.scales), flip=e.flip,
                      ignore_index=cfg.data.ignore_index, device=device, class_names=dataset.class_names,
                      eval_classes=list(e.classes) if e.classes is not None else None, progress=progress,
                      crf=partial(crf_labels, mean=mean, std=std) if crf else None)
    for subset in e.class_subsets:
        result[f"mIoU{len(subset)}"] = iou_from_confusion(torch.tensor(result["confusion"]), list(subset))[1]
    return result


def train(cfg) -> dict:
    """Train with ``cfg``; returns the final metrics (also written to ``out_dir/metrics.json``).

    Under ``torchrun`` it joins the process group first; processes other than rank 0 return
    ``{}``.
    """
    info, device = init_distributed(cfg.device)
    try:
        return _train(cfg, info, device)
    finally:
        shutdown_distributed(info)


def resolve_class_weights(value, labeled) -> torch.Tensor | None:
    """``train.class_weights`` as a ``[C]`` tensor: a list is taken as given (one per class),
    ``median_frequency`` is computed from the labeled set's masks."""
    if value is None:
        return None
    if isinstance(value, str):  # "median_frequency" (the config check allows nothing else)
        return median_frequency_weights(*labeled.class_pixel_counts())
    weights = [float(v) for v in value]
    if len(weights) != labeled.num_classes:
        raise ConfigError(f"train.class_weights has {len(weights)} values but {labeled.name} has "
                          f"{labeled.num_classes} classes")
    return torch.tensor(weights)


def _check_distributed(cfg, info: DistInfo, device: torch.device) -> None:
    for key in ("batch_size", "unlabeled_batch_size"):
        if cfg.data[key] % info.world_size:
            raise ConfigError(f"data.{key}={cfg.data[key]} is the global batch; it must be divisible by "
                              f"the {info.world_size} processes")
    if cfg.model.sync_bn and device.type == "cpu":
        raise ConfigError("model.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                          "on CPU use model.freeze_bn=true or plain BatchNorm")


@dataclass
class Run:
    """Everything a training run holds between its phases (build, resume, loop, finish)."""

    cfg: object
    info: DistInfo
    device: torch.device
    comm: object
    out_dir: Path
    method: object
    train_sets: dict  # stream -> dataset, in the method's stream order (the first is labeled)
    mean: list
    std: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    iters_per_epoch: int
    max_iters: int
    memory_format: torch.memory_format
    cam_set: object = None  # tagged training images with masks: CAM quality (data.supervision=tags)
    start_step: int = 0
    curve: list = field(default_factory=list)  # val mIoU every train.eval_every steps
    evaluated: dict = field(default_factory=dict)  # name -> last result, for each evaluated set
    writer: object = None
    train_seconds: float = 0.0  # training seconds of the whole run, over every resume
    seconds_before: float = 0.0  # of them, those spent before this process's first step (the checkpoint's)
    loop_started: float = 0.0  # time.time() when this process's steps began
    last_logs: dict = field(default_factory=dict)  # scalars of the last logged step
    stop: StopRequest = field(default_factory=StopRequest)
    skips: SkipCounter = field(default_factory=SkipCounter)
    checkpoint_step: int = -1  # step of the last checkpoint this run wrote

    @property
    def labeled(self):
        """The first stream's set: it holds the class names and count of the run."""
        return next(iter(self.train_sets.values()))


def _train(cfg, info: DistInfo, device: torch.device) -> dict:
    with claimed_run_folder(cfg, info.is_main), StopRequest() as stop:
        run = _build_run(cfg, info, device)
        run.stop = stop
        try:
            _resume(run)
            _loop(run)
            return _finish(run)
        finally:
            if run.writer is not None:
                run.writer.close()  # also flushes the logs of a run that stopped early


def _build_run(cfg, info: DistInfo, device: torch.device) -> Run:
    """Data (every file checked before anything trains), model, method and optimisation."""
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.seed)
    if info.enabled:
        _check_distributed(cfg, info, device)
    comm = info.comm()
    train_sets, cam_set = _build_data(cfg, info.is_main, comm)
    method, mean, std = _build_method(cfg, train_sets, info.is_main)
    memory_format = _place(method, cfg, info, device, comm)
    # one epoch = one pass over the method's last stream (the unlabeled set when it has one)
    epoch_stream, epoch_set = list(train_sets.items())[-1]
    iters_per_epoch = math.ceil(len(epoch_set) / cfg.data[STREAMS[epoch_stream].batch_key])
    max_iters = math.ceil(cfg.train.epochs * iters_per_epoch) if cfg.train.epochs else cfg.train.max_iters
    optimizer = build_optimizer(cfg.train, method.param_groups())
    return Run(cfg=cfg, info=info, device=device, comm=comm, out_dir=Path(cfg.out_dir), method=method,
               train_sets=train_sets, mean=mean, std=std, optimizer=optimizer,
               scheduler=build_scheduler(cfg.train, optimizer, max_iters),
               scaler=torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16"),
               iters_per_epoch=iters_per_epoch, max_iters=max_iters, memory_format=memory_format, cam_set=cam_set)


def _build_data(cfg, main: bool, comm) -> tuple[dict, object]:
    """The training set of each of the method's streams (in its order) and, with
    ``data.supervision: tags``, the images that score the CAMs; the evaluated sets are checked
    too: same classes everywhere, crops the images can fill, every file decodes (rank 0)."""
    train_sets = build_stream_sets(cfg.data, method_class(cfg).streams)
    eval_sets = build_eval_sets(cfg.data)
    check_same_classes({**train_sets, **{f"evaluated {k}": v for k, v in eval_sets.items()}})
    for ds in train_sets.values():
        check_crop_fits(cfg.data, ds)
    cam_set = cam_quality_set(cfg.data) if cfg.data.supervision == "tags" else None
    if cfg.eval.crf:
        require_crf()
    if cfg.data.validate and main:
        for ds in (*train_sets.values(), *eval_sets.values(), cam_set):
            if ds is not None:
                ds.check_files()
    comm.barrier()
    return train_sets, cam_set


def _build_method(cfg, train_sets: dict, main: bool):
    """(method with the network it trains, input mean, std); the training sets get their
    transforms (streams without labels the strong view too)."""
    labeled = next(iter(train_sets.values()))
    model = method_class(cfg).prepare_student(build_segmentor(cfg.model, labeled.num_classes), cfg)
    if cfg.train.init_from:
        _init_weights(model, cfg.train.init_from)
        if main:
            print(f"initial weights from {cfg.train.init_from}")
    mean, std = normalisation(cfg, model)
    for name, ds in train_sets.items():
        ds.transform = TrainTransform(cfg.data, mean, std, strong=not STREAMS[name].labeled)
    method = build_method(cfg, model)
    method.set_class_weights(resolve_class_weights(cfg.train.class_weights, labeled))
    if main and method.class_weights is not None:
        print("L_s class weights: " + ", ".join(f"{v:.3g}" for v in method.class_weights.tolist()))
    return method, mean, std


def _place(method, cfg, info: DistInfo, device: torch.device, comm) -> torch.memory_format:
    """The method on its device (channels-last where asked), its student in DDP under torchrun;
    returns the memory format of the images."""
    method.to(device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    if cfg.train.channels_last:
        method.to(memory_format=memory_format)
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(
            method.student, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # e.g. the representation head during a supervised warm-up
        )
        method.attach_distributed(comm, runner)
        if info.rank:  # dropout etc. draw different numbers on each process
            torch.manual_seed(cfg.seed * 7919 + info.rank)
    return memory_format


def _resume(run: Run) -> None:
    """Continue from ``resume`` (``auto``: the run folder's ``last.pt``) or from the supervised
    warm-up of another run (``train.warmup_from``) when there is one, and prepare the run folder."""
    state, path, key = _starting_state(run)
    if state is not None:
        _restore(run, state, path, key)
    if run.info.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in run.out_dir.glob(".last.pt.*.tmp"):  # partial writes of a killed run
            stale.unlink()
        save_config(run.cfg, run.out_dir / "config.yaml")
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(str(run.out_dir / "tb"))


def _starting_state(run: Run) -> tuple[dict | None, str, str]:
    """(the checkpoint state this run continues from, its path, the key that names it): the run's
    own checkpoint (its model checked against the config), else ``train.warmup_from``, else none."""
    cfg = run.cfg
    path = _resume_path(cfg, run.out_dir)
    if path is not None:
        state = load_run_checkpoint(path)
        check_model(state, path, cfg, "this run's config", MODEL_KEYS + ("method.name",),
                    f"; resume with the config it was trained with ({path.parent / 'config.yaml'}) or choose "
                    "another out_dir")
        return state, str(path), "resume"
    if cfg.train.warmup_from:
        return _warmup_state(run), cfg.train.warmup_from, "train.warmup_from"
    return None, "", ""


def _restore(run: Run, state: dict, path: str, key: str) -> None:
    """Every state of the run from the ``state`` of the checkpoint at ``path`` (config ``key``),
    RNG states included."""
    cfg, info = run.cfg, run.info
    load_weights(run.method, state["method"], f"{key}={path}")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.start_step = int(state["step"])
    run.seconds_before = float(state.get("train_seconds", 0.0))  # (checkpoints before 2026-12-05: 0)
    run.curve = list(state.get("curve", []))
    run.skips = SkipCounter(*state.get("skipped", (0, 0)))
    per_rank = state.get("rng_per_rank") or [state["rng"]]
    if len(per_rank) == info.world_size:  # same process count: exact continuation
        set_rng_state(per_rank[info.rank])
    elif info.rank == 0:
        set_rng_state(state["rng"])
    else:
        torch.manual_seed(cfg.seed * 7919 + info.rank + 104729 * run.start_step)
    if info.is_main:
        print(f"resumed from {path} at step {run.start_step}")


# settings that must agree for a SupOnly run's steps to be this run's own warm-up steps
_WARMUP_KEYS = ("seed", "data.dataset", "data.root", "data.labeled", "data.batch_size", "data.crop_size",
                "data.scale_range", "data.hflip", "data.resize_factor", "data.resize", "model", "train.max_iters",
                "train.epochs", "train.optimizer", "train.lr", "train.head_lr_mult", "train.momentum",
                "train.weight_decay", "train.lr_schedule", "train.poly_power", "train.warmup_iters", "train.ohem",
                "train.class_weights", "train.amp")


def _warmup_state(run: Run) -> dict:
    """The SupOnly checkpoint ``train.warmup_from`` made into this run's checkpoint at the same
    step, when that step lies inside this run's supervised warm-up and the settings that shape
    those steps agree; otherwise a ConfigError naming the reason."""
    cfg, source = run.cfg, run.cfg.train.warmup_from
    state = load_run_checkpoint(source)
    if not hasattr(run.method, "state_from_warmup"):
        raise ConfigError(f"train.warmup_from: method.name={cfg.method.name} has no supervised warm-up")
    # its config on today's defaults: keys added since it was written compare as their defaults
    other = config_from_checkpoint(state)
    differ = [k for k in _WARMUP_KEYS if OmegaConf.select(other, k) != OmegaConf.select(cfg, k)]
    if differ:
        raise ConfigError(f"train.warmup_from={source}: its run differs in {', '.join(differ)}")
    step = int(state["step"])
    first_semi = run.method.first_semi_step(StepContext(0, run.max_iters, run.iters_per_epoch))
    if step > first_semi:
        raise ConfigError(f"train.warmup_from={source} is at step {step}, after this run's supervised warm-up "
                          f"(the first semi-supervised step is {first_semi}; see method.sup_only_epochs)")
    try:
        return {**state, "method": run.method.state_from_warmup(state["method"])}
    except KeyError as e:
        raise CheckpointError(f"train.warmup_from={source}: {e.args[0]}") from None


def _checkpoint(run: Run, step: int) -> None:
    """``last.pt`` (and ``step_<k>.pt`` at the steps of ``train.save_at``), written atomically."""
    rngs = _gather_objects(rng_state(), run.info)
    if run.info.is_main:
        state = {
            **VERSION_FIELDS, "step": step, "method": run.method.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "rng": rngs[0], "rng_per_rank": rngs, "world_size": run.info.world_size,
            "config": OmegaConf.to_container(run.cfg), "num_classes": run.labeled.num_classes,
            "class_names": run.labeled.class_names, "curve": run.curve,
            "skipped": [run.skips.total, run.skips.in_a_row], "train_seconds": _seconds_so_far(run),
        }
        save_checkpoint(state, run.out_dir / "last.pt")
        if step in run.cfg.train.save_at:
            save_checkpoint(state, run.out_dir / f"step_{step}.pt")
    run.checkpoint_step = step
    run.comm.barrier()


def _evaluate(run: Run, step: int, final: bool = False) -> dict | None:
    """Rank 0 evaluates the method's eval model on every evaluated set (the headline first) and
    adds a point to the curve; the others wait. Returns the headline result. The final
    evaluation adds the dense CRF (``eval.crf``) and the CAM quality (tags) to it."""
    res = None
    if run.info.is_main:
        cfg = run.cfg
        model = run.method.eval_model()
        for name, ds in build_eval_sets(cfg.data).items():
            _, loader = eval_loader(cfg, ds, run.mean, run.std)
            run.evaluated[name] = run_evaluation(cfg, model, loader, ds, run.device, crf=final and cfg.eval.crf)
        (headline, res), *others = run.evaluated.items()
        if final and run.cam_set is not None:
            res["cam"] = run_cam_quality(cfg, model, run.cam_set, run.mean, run.std, run.device)
        run.method.train()  # back to training mode, frozen BatchNorm layers kept frozen
        point = {"step": step, "mIoU": res["mIoU"], "mAcc": res["mAcc"], "per_class": res["per_class"]}
        if others:
            point["sets"] = {k: {"mIoU": r["mIoU"], "mAcc": r["mAcc"], "per_class": r["per_class"]} for k, r in others}
        run.curve[:] = [p for p in run.curve if p["step"] != step]  # a resumed finished run re-evaluates
        run.curve.append(point)
        for name, r in run.evaluated.items():
            prefix = "val" if name == headline else f"val_{name}"
            run.writer.add_scalar(f"{prefix}/mIoU", r["mIoU"], step)
            run.writer.add_scalar(f"{prefix}/mAcc", r["mAcc"], step)
    run.comm.barrier()
    return res


def _log(run: Run, done: int, loss: torch.Tensor, logs: dict, bar) -> None:
    scalars, vectors = _reduce_logs(loss, logs, run.labeled.num_classes, run.comm)
    if not run.info.is_main:
        return
    if math.isfinite(scalars["loss"]):  # a skipped step's NaN stays out of metrics.json
        run.last_logs = {"step": done, **scalars}
    writer, lr = run.writer, run.optimizer.param_groups[0]["lr"]
    for k, v in scalars.items():
        writer.add_scalar(f"train/{k}", v, done)
    for k, v in vectors.items():  # per-class vectors: one curve per class
        for name, x in zip(run.labeled.class_names, v):
            writer.add_scalar(f"train/{k}/{name}", x, done)
    writer.add_scalar("train/lr", lr, done)
    if run.cfg.train.nonfinite == "skip":
        writer.add_scalar("train/skipped_steps", run.skips.total, done)
    rss = _rss_mib()
    if rss is not None:
        writer.add_scalar("sys/rss_mib", rss, done)
    if run.device.type == "cuda":
        writer.add_scalar("sys/cuda_max_allocated_mib", torch.cuda.max_memory_allocated(run.device) / 2**20, done)
    fields = {"loss": f"{scalars['loss']:.3f}"}
    fields.update({short: f"{scalars[k]:.3f}" for k, short in run.method.progress_fields.items() if k in scalars})
    fields["lr"] = f"{lr:.2e}"
    if run.skips.total:
        fields["skipped"] = str(run.skips.total)
    bar.set_postfix(fields, refresh=False)


def _train_loaders(run: Run) -> list:
    """An iterator over each of the method's streams (in its order) from the run's first step on."""
    cfg, info = run.cfg, run.info
    return [iter(make_train_loader(ds, cfg.data[STREAMS[name].batch_key], cfg.seed, run.start_step,
                                   cfg.data.num_workers, stream=i, rank=info.rank, world_size=info.world_size))
            for i, (name, ds) in enumerate(run.train_sets.items())]


def _loop(run: Run) -> None:
    """The training steps, with logging, periodic checkpoints and evaluations; a stop signal ends
    the run after the step it arrived in."""
    cfg, info = run.cfg, run.info
    loaders = _train_loaders(run)
    run.method.train()
    run.loop_started = time.time()
    bar = tqdm(range(run.start_step, run.max_iters), initial=run.start_step, total=run.max_iters,
               desc=cfg.method.name, dynamic_ncols=True, mininterval=2.0, disable=not info.is_main)
    _stop_if_signalled(run, run.start_step)  # a signal during the set-up
    for step in bar:
        ctx = StepContext(step, run.max_iters, run.iters_per_epoch)
        # the method's streams in order (a one-stream method gets None as its second batch)
        batches = [_to_device(next(it), run.device, run.memory_format) for it in loaders]
        loss, logs, stop = _train_step(run, ctx, *(batches + [None])[:2])
        done = step + 1
        if done % cfg.train.log_every == 0 or done == run.max_iters:
            _log(run, done, loss, logs, bar)
        if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < run.max_iters:
            res = _evaluate(run, done)
            if info.is_main:
                bar.write(f"step {done}: val mIoU {res['mIoU']:.2f}")
        if (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0 or done in cfg.train.save_at) \
                and done < run.max_iters:
            _checkpoint(run, done)
        _stop_if_signalled(run, done, stop)
    bar.close()
    run.train_seconds = _seconds_so_far(run)


def _seconds_so_far(run: Run) -> float:
    """Training seconds of the whole run up to now: those of the checkpoint it continued from (its
    own, or the SupOnly run that gave its warm-up) plus this process's."""
    return run.seconds_before + (time.time() - run.loop_started if run.loop_started else 0.0)


def _train_step(run: Run, ctx: StepContext, batch_1: dict, batch_2: dict | None) -> tuple[torch.Tensor, dict, bool]:
    """Forward on the batches of the method's streams; then, unless the loss is non-finite on
    some process, backward and update. Returns the loss, the logs and whether a stop signal came
    to some process (both flags in one all-reduce, so that every process decides alike)."""
    method, info = run.method, run.info
    with autocast_context(run.cfg.train.amp, run.device):
        loss, logs = method.training_step(batch_1, batch_2, ctx)
    nonfinite, stop = _agree(run, not bool(torch.isfinite(loss.detach()).all()), run.stop.requested)
    if nonfinite:
        _on_nonfinite(run, ctx.step + 1, loss, logs, (batch_1, batch_2))
    else:
        run.skips.finite_step()
        run.optimizer.zero_grad(set_to_none=True)
        # each process holds its share of the global-mean loss; DDP averages gradients
        run.scaler.scale(loss * info.world_size).backward()
        run.scaler.step(run.optimizer)  # fp16: skips steps with inf gradients itself (not counted here)
        run.scaler.update()
        method.after_optimizer_step(ctx)
    run.scheduler.step()  # the schedule follows the step count, skipped steps included
    return loss, logs, stop


def _on_nonfinite(run: Run, done: int, loss: torch.Tensor, logs: dict, batches: tuple) -> None:
    """Skip the update of a step with a non-finite loss (``train.nonfinite=skip``), or end the
    run with a report naming the step's loss terms, learning rates and the images of each stream."""
    t = run.cfg.train
    bad_buffers = nonfinite_buffers(run.method)
    (corrupted,) = _agree(run, bool(bad_buffers))
    if run.skips.skip_allowed(t.nonfinite, t.nonfinite_skip_limit, not corrupted):
        if run.info.is_main:
            tqdm.write(f"step {done}: non-finite loss, update skipped ({run.skips.in_a_row} in a row, "
                       f"{run.skips.total} in all)")
        return
    scalars, _ = _reduce_logs(loss, logs, run.labeled.num_classes, run.comm)
    per_rank = _gather_objects([b["id"] for b in batches if b is not None], run.info)
    image_ids = {name: [i for ids in per_rank for i in ids[k]] for k, name in enumerate(run.train_sets)}
    reason = stop_reason(t, corrupted, bad_buffers, run.skips.in_a_row)
    path = run.out_dir / REPORT_NAME
    if run.info.is_main:
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(run.optimizer.param_groups)}
        write_report(path, done, reason, scalars, lrs, image_ids, bad_buffers)
    advice = "" if t.nonfinite == "skip" else " or set train.nonfinite=skip"
    raise NonFiniteLossError(f"non-finite loss at step {done} ({nonfinite_terms(scalars, run.method.loss_terms)})"
                             f"{'; ' + reason if reason else ''}; report: {path}; lower train.lr, check the "
                             f"images it names{advice}")


def _stop_if_signalled(run: Run, step: int, agreed: bool | None = None) -> None:
    """After ``step``: if a stop signal came to some process (``agreed``, else asked here),
    write the checkpoint and end the run."""
    if agreed is None:
        (agreed,) = _agree(run, run.stop.requested)
    if not agreed:
        return
    if run.checkpoint_step != step:
        _checkpoint(run, step)
    message = (f"stopped by {run.stop.name} after step {step} of {run.max_iters}; checkpoint "
               f"{run.out_dir / 'last.pt'}; continue with resume=auto") if run.info.is_main else ""
    raise RunStopped(message, run.stop.exit_code)


def _agree(run: Run, *flags: bool) -> list[bool]:
    """Each flag, true where it is true on some process (one all-reduce of a few numbers)."""
    if run.comm.world_size == 1:
        return [bool(f) for f in flags]
    total = run.comm.sum(torch.tensor([float(f) for f in flags], device=run.device))
    return [bool(v > 0) for v in total.tolist()]


def _finish(run: Run) -> dict:
    """Final evaluation, the final checkpoint (with the whole curve), metrics.json. The trained
    weights are written before the evaluation too: a run killed during a long one (multi-scale,
    dense CRF) continues with ``resume=auto`` at the evaluation, without training again."""
    _stop_if_signalled(run, run.max_iters)  # before an evaluation that may outlast a grace period
    if run.checkpoint_step != run.max_iters:
        _checkpoint(run, run.max_iters)
    result = _evaluate(run, run.max_iters, final=True)
    _checkpoint(run, run.max_iters)
    if not run.info.is_main:
        return {}
    metrics = _metrics(run, result)
    (run.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for name, r in run.evaluated.items():
        if len(run.evaluated) > 1:
            print(f"evaluated set: {name}")
        print(format_iou_table(r))
        if "crf" in r:
            print(f"with dense CRF: mIoU {r['crf']['mIoU']:.2f}")
    if "cam" in result:
        cam = result["cam"]
        print(f"CAM quality ({cam['num_images']} training images with masks): mIoU {cam['mIoU']:.2f} on "
              f"{100 * cam['labelled_fraction']:.1f}% of the pixels, dense {cam['mIoU_dense']:.2f}")
    return metrics


def _metrics(run: Run, result: dict) -> dict:
    """What ``metrics.json`` holds: the headline evaluation ``result`` (its class subsets, CRF and
    CAM quality), every evaluated set when there are several, the curve and the run's figures."""
    curve, sets = run.curve, list(run.train_sets.values())
    metrics = {
        "mIoU": result["mIoU"], "per_class": result["per_class"], "mAcc": result["mAcc"],
        "aAcc": result["aAcc"], "per_class_acc": result["per_class_acc"], "split": next(iter(run.evaluated)),
        **{k: v for k, v in result.items() if k.startswith("mIoU") and k != "mIoU"},  # class subsets
        "method": run.cfg.method.name, "steps": run.max_iters, "train_seconds": round(run.train_seconds, 1),
        # this process's steps (a resumed run: those after its checkpoint)
        "seconds_per_step": round((run.train_seconds - run.seconds_before) / max(run.max_iters - run.start_step, 1), 4),
        "start_step": run.start_step,
        "labeled_images": len(sets[0]), "unlabeled_images": len(sets[1]) if len(sets) > 1 else 0,
        "processes": run.info.world_size, "last_train_logs": run.last_logs, "skipped_steps": run.skips.total,
        "curve": curve,
        "best_mIoU": max(p["mIoU"] for p in curve), "best_step": max(curve, key=lambda p: p["mIoU"])["step"],
    }
    for key in ("crf", "cam"):  # with eval.crf: the CRF's scores; with tags: the CAM quality
        if key in result:
            metrics[key] = result[key]
    if len(run.evaluated) > 1:  # every evaluated set (domain-adaptive: target, source)
        metrics["eval"] = {name: {k: r[k] for k in ("mIoU", "mAcc", "aAcc", "per_class", "num_images", "crf")
                                  if k in r}
                           for name, r in run.evaluated.items()}
    return metrics


def _init_weights(model, source: str) -> None:
    """Load ``train.init_from`` (a run folder or checkpoint) into ``model``; a mismatch (other
    encoder, other class count) is an error naming the first differing weights."""
    load_weights(model, evaluated_model_weights(source), f"train.init_from={source}")


def _reduce_logs(loss: torch.Tensor, logs: dict, num_classes: int, comm) -> tuple[dict, dict]:
    """Scalars and per-class vectors to log, over all processes in one all-reduce: loss terms
    (each process holds a share of the global mean) are summed, everything else is averaged."""
    names, values = ["loss"], [loss.detach().float().reshape(1)]
    for k, v in logs.items():
        if _is_scalar(v) or (isinstance(v, torch.Tensor) and v.dim() == 1 and v.numel() == num_classes):
            names.append(k)
            values.append(torch.as_tensor(v, dtype=torch.float32, device=loss.device).detach().reshape(-1))
    sizes = [v.numel() for v in values]
    flat = torch.cat(values)
    if comm.world_size > 1:
        weights = torch.cat([torch.full((n,), 1.0 if k.startswith("loss") else 1.0 / comm.world_size,
                                        device=flat.device) for k, n in zip(names, sizes)])
        flat = comm.sum(flat * weights)
    scalars, vectors = {}, {}
    for k, chunk in zip(names, flat.split(sizes)):
        if k == "loss" or _is_scalar(logs[k]):
            scalars[k] = float(chunk)
        else:
            vectors[k] = chunk.tolist()
    return scalars, vectors


def _rss_mib() -> float | None:
    """Current resident memory of this process (Linux), for the ``sys/rss_mib`` curve."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


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


def _is_scalar(v) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)
