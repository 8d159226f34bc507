"""Non-finite losses (``train.nonfinite``): the skip policy and the report a stopped run leaves.

The trainer checks the loss of every step before its backward pass. ``stop`` ends the run at
the first non-finite loss; ``skip`` drops that step's update and goes on, until
``train.nonfinite_skip_limit`` steps in a row were non-finite or the forward pass left a
non-finite buffer (BatchNorm statistics, prototypes, queues: skipping cannot undo that). Either
way the run ends with ``nonfinite_report.json`` in the run folder: the step, the loss and every
scalar the method logged (its loss terms, gamma, the pseudo-label diagnostics), the learning rates
and the ids of the batch's images.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

REPORT_NAME = "nonfinite_report.json"

__all__ = ["REPORT_NAME", "SkipCounter", "nonfinite_buffers", "nonfinite_terms", "stop_reason", "write_report"]


@dataclass
class SkipCounter:
    """Skipped steps of a run (``total``) and the current streak (``in_a_row``); checkpointed."""

    total: int = 0
    in_a_row: int = 0

    def skip_allowed(self, mode: str, limit: int, buffers_finite: bool) -> bool:
        """Count one more non-finite step; whether its update may be skipped."""
        self.in_a_row += 1
        if mode == "skip" and buffers_finite and self.in_a_row < limit:
            self.total += 1
            return True
        return False

    def finite_step(self) -> None:
        self.in_a_row = 0


def nonfinite_buffers(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point buffers that hold NaN or infinity."""
    return [name for name, b in module.named_buffers()
            if b is not None and b.is_floating_point() and not bool(torch.isfinite(b).all())]


def _number(x: float):
    return x if math.isfinite(x) else str(x)  # JSON has no NaN: "nan", "inf", "-inf"


def write_report(path: Path, step: int, reason: str, scalars: dict, lrs: dict, image_ids: dict,
                 bad_buffers: list[str]) -> None:
    report = {"step": step, "reason": reason, "logs": {k: _number(v) for k, v in scalars.items()},
              "lr": lrs, "image_ids": image_ids, "nonfinite_buffers": len(bad_buffers),
              "first_nonfinite_buffers": bad_buffers[:10]}
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def stop_reason(train_cfg, corrupted: bool, bad_buffers: list[str], in_a_row: int) -> str:
    """Why ``train.nonfinite=skip`` did not skip (empty under ``stop``)."""
    if train_cfg.nonfinite == "stop":
        return ""
    if corrupted:
        named = ", ".join(bad_buffers[:2]) or "on another process"
        return f"it left non-finite buffers ({named}), which skipping cannot undo"
    return f"{in_a_row} steps in a row (train.nonfinite_skip_limit={train_cfg.nonfinite_skip_limit})"


def nonfinite_terms(scalars: dict, terms) -> str:
    """``loss=nan, loss_unsup=nan``: the total and each loss term that is not finite."""
    names = ["loss", *terms]
    return ", ".join(f"{k}={scalars[k]:g}" for k in names if k in scalars and not math.isfinite(scalars[k]))
