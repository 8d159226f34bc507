"""Exponential moving average teacher (paper Eq. 2)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_momentum", "ema_update"]


def ema_momentum(step: int, max_momentum: float, start: int = 0, ramp: bool = True) -> float:
    """Momentum of the EMA update after ``step`` (docs/method.md step 11). Before ``start`` it is 0: the
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
