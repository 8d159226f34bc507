"""Prototypical pseudo-label denoising (paper Eq. 19-20)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["prototype_weights", "denoise_probabilities"]

_NO_INFO_DISTANCE = math.sqrt(2.0)


def prototype_weights(features: Tensor, prototypes: Tensor, initialized: Tensor) -> Tensor:
    """Class weights ``w(c) = softmax_c(-||z - z_proto_c||_2)`` per pixel (Eq. 19).

    Args:
        features: ``[B, D, H, W]`` L2-normalised teacher representations.
        prototypes: ``[C, D]`` L2-normalised prototypes.
        initialized: ``[C]`` bool; a class whose prototype is not initialised gets distance
            ``sqrt(2)``, the distance between orthogonal unit vectors ("no information").

    Returns:
        ``[B, C, H, W]`` float32 weights summing to 1 over ``C``.
    """
    with torch.autocast(features.device.type, enabled=False):  # float32 under train.amp too
        z = features.float()
        p = prototypes.to(z.device).float()
        dot = torch.einsum("bdhw,cd->bchw", z, p)
        sq = (z * z).sum(1, keepdim=True) + (p * p).sum(1).view(1, -1, 1, 1) - 2.0 * dot
        dist = sq.clamp_min(0.0).sqrt()
        init = initialized.to(device=z.device, dtype=torch.bool).view(1, -1, 1, 1)
        dist = torch.where(init, dist, torch.full_like(dist, _NO_INFO_DISTANCE))
        return torch.softmax(-dist, dim=1)


def denoise_probabilities(prob: Tensor, weights: Tensor) -> Tensor:
    """Denoised prediction ``p* = w * p`` element-wise (Eq. 20).

    Not renormalised: only its argmax is used (the pseudo-label of Eq. 12); the
    reliable/unreliable partition stays the one computed from ``H(p)``.
    """
    return prob.float() * weights.float()
