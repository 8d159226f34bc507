"""Symmetric cross-entropy (paper Eq. 4) and the adaptive unsupervised loss (Eq. 14)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["symmetric_cross_entropy", "adaptive_unsupervised_loss"]

_LOG_CLAMP = -math.log(1e-4)  # -log(1e-4): value of -log(onehot) off the target after clamping


def symmetric_cross_entropy(
    logits: Tensor,
    target: Tensor,
    xi1: float = 1.0,
    xi2: float = 0.1,
    ignore_index: int = 255,
) -> Tensor:
    """Per-pixel ``l_sce = xi1 * CE + xi2 * RCE`` (Eq. 4, docs/method.md step 7).

    ``RCE = -sum_k p(k) log(clamp(onehot(y)(k), 1e-4, 1)) = -log(1e-4) * (1 - p(y))``.

    Args:
        logits: ``[B, C, H, W]`` student logits (computed in float32).
        target: ``[B, H, W]`` long labels; ``ignore_index`` pixels give 0.

    Returns:
        ``[B, H, W]`` float32 per-pixel losses.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    logp_t = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    ce = -logp_t
    rce = _LOG_CLAMP * (-torch.expm1(logp_t))  # -log(1e-4) * (1 - p_target)
    loss = xi1 * ce + xi2 * rce
    return torch.where(valid, loss, torch.zeros_like(loss))


def adaptive_unsupervised_loss(
    logits: Tensor,
    pseudo_label: Tensor,
    reliable: Tensor,
    eta: float = 1.0,
    xi1: float = 1.0,
    xi2: float = 0.1,
    ignore_index: int = 255,
    count_override: Tensor | None = None,
) -> Tensor:
    """``lambda_u * L_u = eta * sum_{reliable} l_sce / #reliable`` (Eq. 14 with Eq. 4).

    A pixel counts when ``reliable`` is true and its pseudo-label is not ``ignore_index``.

    Args:
        logits: ``[B, C, H, W]`` student logits on the (strongly augmented) unlabeled batch.
        pseudo_label: ``[B, H, W]`` long pseudo-labels.
        reliable: ``[B, H, W]`` bool.
        count_override: optional tensor with the *global* number of reliable pixels (e.g. an
            all-reduced count over processes); then this returns the local sum divided by the
            global count, so summing the per-process values gives the global mean. Any
            world-size factor for DDP gradient averaging is the caller's business.

    Returns:
        0-dim float32 tensor. With zero reliable pixels it is an exact, differentiable zero
        connected to ``logits`` (never NaN).
    """
    per_pixel = symmetric_cross_entropy(logits, pseudo_label, xi1, xi2, ignore_index)
    mask = reliable.to(torch.bool) & (pseudo_label != ignore_index)
    total = torch.where(mask, per_pixel, torch.zeros_like(per_pixel)).sum()
    count = mask.sum() if count_override is None else count_override.to(total.device)
    return eta * total / count.float().clamp_min(1.0)
