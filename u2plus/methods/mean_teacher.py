"""The mean-teacher base shared by the semi-supervised, domain-adaptive and weakly-supervised
recipes: an EMA teacher of the student (paper Eq. 2), run in eval mode, copied
from the student through a supervised-only warm-up (docs/method.md, step 11)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .base import Method, StepContext

__all__ = ["MeanTeacher", "ema_momentum", "ema_update", "unsup_rampup"]


def ema_momentum(step: int, max_momentum: float, start: int = 0, ramp: bool = True) -> float:
    """Momentum of the EMA update after ``step`` (docs/method.md, step 11). Before ``start`` it is 0: the
    teacher follows the student exactly (the reference code's copy at the end of the
    supervised-only warm-up). From ``start`` on, with ``ramp``: ``m_t = min(1 - 1/(t + 1),
    max_momentum)``, ``t = step - start`` (0 at ``start``, so that update copies the student
    too); without: ``max_momentum`` at once, for a teacher that starts from a trained network."""
    t = step - start
    if t < 0:
        return 0.0
    if not ramp:
        return max_momentum
    return min(1.0 - 1.0 / (t + 1), max_momentum)


def unsup_rampup(t: int, length: int) -> float:
    """Weight of the unlabeled losses ``t`` steps after the first semi-supervised step (beyond
    the paper, ``method.unsup_rampup_steps``): the sigmoid-shaped ramp of Laine & Aila (2017)
    and Mean Teacher, ``exp(-5 (1 - t / length)^2)`` for ``0 <= t < length`` (0.0067 at ``t = 0``),
    then 1; 0 before the first semi-supervised step, 1 throughout when ``length`` is 0."""
    if length <= 0:
        return 1.0
    if t < 0:
        return 0.0
    if t >= length:
        return 1.0
    return math.exp(-5.0 * (1.0 - t / length) ** 2)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``theta_t <- m * theta_t + (1 - m) * theta_s`` (Eq. 2), in place on ``teacher``.

    Parameters *and* floating-point buffers (BN running mean/var) are blended; integer buffers
    (``num_batches_tracked``) are copied. The two modules must have the same structure (pass
    the unwrapped student, not a DDP wrapper). Uses ``torch._foreach_*`` ops.
    """
    t_params = list(teacher.parameters())
    s_params = list(student.parameters())
    t_bufs = list(teacher.buffers())
    s_bufs = list(student.buffers())
    if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
        raise ValueError("ema_update: teacher and student have different structures")
    t_float, s_float, t_int, s_int = [], [], [], []
    for t, s in zip(t_params + t_bufs, s_params + s_bufs):
        if t.shape != s.shape:
            raise ValueError(f"ema_update: shape mismatch {tuple(t.shape)} vs {tuple(s.shape)}")
        if t.is_floating_point():
            t_float.append(t)
            s_float.append(s.detach().to(dtype=t.dtype, device=t.device))
        else:
            t_int.append(t)
            s_int.append(s.detach().to(device=t.device))
    if t_float:
        torch._foreach_mul_(t_float, momentum)
        torch._foreach_add_(t_float, s_float, alpha=1.0 - momentum)
    if t_int:
        torch._foreach_copy_(t_int, s_int)


class MeanTeacher(Method):
    """Student + EMA teacher. The first ``method.sup_only_epochs`` train with L_s alone
    (:meth:`in_warmup`); the teacher copies the student through them and its EMA ramp counts from
    the first step that uses the unlabeled stream (``method.ema_from_semi_start``)."""

    streams = ("labeled", "unlabeled")

    def __init__(self, cfg, student: nn.Module):
        super().__init__(cfg, student)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher always runs in eval mode (BN running statistics)
        return self

    def eval_model(self) -> nn.Module:
        return self.teacher if self.cfg.method.eval_teacher else self.student

    def first_semi_step(self, ctx: StepContext) -> int:
        """First step with the unlabeled losses (after ``sup_only_epochs`` of L_s alone, or
        ``sup_only_fraction`` of the schedule, whichever ends later)."""
        m = self.cfg.method
        return max(math.ceil(m.sup_only_epochs * max(ctx.iters_per_epoch, 1) - 1e-9),
                   math.ceil(m.sup_only_fraction * ctx.max_iters - 1e-9))

    def in_warmup(self, ctx: StepContext) -> bool:
        return ctx.step < self.first_semi_step(ctx)

    def unsup_weight(self, ctx: StepContext) -> float:
        """Factor on the unlabeled losses at ``ctx.step``: :func:`unsup_rampup` over
        ``method.unsup_rampup_steps`` from the first semi-supervised step (1 when 0)."""
        return unsup_rampup(ctx.step - self.first_semi_step(ctx), self.cfg.method.unsup_rampup_steps)

    def step_seed(self, step: int) -> int:
        """Seed of a step's draws (CutMix boxes, anchors, negatives): deterministic given
        (seed, step), so resume replays the same draws, and the global RNG is untouched."""
        return self.cfg.seed * 1_000_003 + step

    def generator(self, step: int, device) -> torch.Generator:
        """This process's generator of the step (each process mixes its own images)."""
        g = torch.Generator(device=device)
        g.manual_seed(self.step_seed(step) * 131 + self.comm.rank)
        return g

    def state_from_warmup(self, supervised: dict) -> dict:
        """This method's full state after a supervised-only warm-up that another run trained:
        the student of ``supervised`` (a SupOnly checkpoint's method state), the teacher a copy
        of it (as through this method's own warm-up), everything else fresh."""
        state = self.state_dict()
        student = {k: v for k, v in supervised.items() if k.startswith("student.")}
        missing = sorted(k for k in state if k.startswith("student.") and k not in student)
        if missing:
            raise KeyError(f"the checkpoint has no {missing[0]}")
        state.update(student)
        state.update({"teacher." + k[len("student."):]: v for k, v in student.items()})
        return state

    def after_optimizer_step(self, ctx: StepContext) -> None:
        m = self.cfg.method
        start = self.first_semi_step(ctx) if m.ema_from_semi_start else 0
        ema_update(self.teacher, self.student, ema_momentum(ctx.step, m.ema_momentum, start, m.ema_ramp))
