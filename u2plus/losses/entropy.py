"""Pixel-wise entropy of the teacher's class distribution (paper Eq. 11)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pixel_entropy"]


def pixel_entropy(prob: Tensor) -> Tensor:
    """Entropy ``H(p) = -sum_c p(c) log p(c)`` per pixel (Eq. 11), natural log.

    Args:
        prob: class probabilities ``[B, C, H, W]`` (softmax output, any float dtype).

    Returns:
        ``[B, H, W]`` float32 entropies, with the convention ``0 * log 0 = 0``.
    """
    p = prob.float()
    return -torch.special.xlogy(p, p).sum(dim=1)
