"""Optimiser and per-iteration learning-rate schedule.

Parameter groups come from the method (:meth:`u2plus.methods.Method.param_groups`): each at
``lr * lr_mult`` (the encoder at ``lr``, decoder + heads at ``lr * head_lr_mult``, x10 in the paper). Schedules: poly ``(1 - t/T)^power`` (SS), linear decay (DA), constant; optional
linear warm-up (DA: 1,500 iterations) that multiplies the schedule. The scheduler is a LambdaLR stepped once per iteration, so its state_dict
restores the exact learning rate on resume.
"""

from __future__ import annotations

import torch


def build_optimizer(train_cfg, param_groups: list[dict]) -> torch.optim.Optimizer:
    """SGD or AdamW over ``param_groups`` (``name``, ``params``, ``lr_mult``); frozen parameters
    are left out."""
    groups = [{"name": g["name"], "params": [p for p in g["params"] if p.requires_grad],
               "lr": train_cfg.lr * g["lr_mult"]} for g in param_groups]
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train_cfg.lr, momentum=train_cfg.momentum,
                               weight_decay=train_cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def lr_factor(step: int, max_iters: int, schedule: str, power: float = 0.9, warmup_iters: int = 0,
              warmup_ratio: float = 1e-6) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (0-based): the schedule's decay
    over all ``max_iters``, times ``warmup_ratio + (1 - warmup_ratio) * step / warmup_iters``
    during the warm-up (mmcv's linear warm-up, as DAFormer uses it: continuous at its end)."""
    progress = min(step / max(max_iters, 1), 1.0)
    if schedule == "poly":
        factor = (1.0 - progress) ** power
    elif schedule == "linear":
        factor = 1.0 - progress
    else:
        factor = 1.0
    if warmup_iters and step < warmup_iters:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters
    return factor


def build_scheduler(train_cfg, optimizer, max_iters: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        return lr_factor(step, max_iters, train_cfg.lr_schedule, train_cfg.poly_power,
                         train_cfg.warmup_iters, train_cfg.warmup_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
