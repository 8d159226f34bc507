"""What every training method shares: the student, the supervised loss and the step context.

A method is an ``nn.Module`` holding all of its trainable and stateful parts (student, teacher,
prototypes, queues), so one ``state_dict`` checkpoints all of them. The engine calls
``training_step`` (returns the loss to back-propagate and scalar logs) and, after the optimiser
step, ``after_optimizer_step``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..losses.supervised import ohem_cross_entropy, pixel_cross_entropy


@dataclass
class StepContext:
    step: int  # 0-based iteration
    max_iters: int
    iters_per_epoch: int

    @property
    def progress(self) -> float:
        """t / T in epochs (Eq. 13), in [0, 1]."""
        epochs = self.max_iters / max(self.iters_per_epoch, 1)
        return min((self.step // max(self.iters_per_epoch, 1)) / max(epochs, 1e-12), 1.0)


class Method(nn.Module):
    semi_supervised = False

    def __init__(self, cfg, student: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.student = student
        self.ignore_index = cfg.data.ignore_index

    def supervised_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_s (Eq. 3), OHEM when ``train.ohem``."""
        t = self.cfg.train
        if t.ohem:
            return ohem_cross_entropy(logits, target, t.ohem_thresh, t.ohem_min_kept, self.ignore_index)
        return pixel_cross_entropy(logits, target, self.ignore_index)

    def training_step(self, labeled: dict, unlabeled: dict | None, ctx: StepContext):
        raise NotImplementedError

    def after_optimizer_step(self, ctx: StepContext) -> None:
        pass

    def eval_model(self) -> nn.Module:
        """The network evaluated and exported (the student; EMA methods may pick the teacher)."""
        return self.student
