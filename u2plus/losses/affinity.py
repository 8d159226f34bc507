"""Affinity from attention and random-walk propagation of CAMs (AFA, Ru et al., CVPR 2022,
Sec. 3.2 and 3.4).

The network predicts a pairwise affinity ``A [B, N, N]`` in (0, 1) between the ``N = h * w``
positions of the encoder's last feature map (:mod:`u2plus.models.image_level`). It learns from
the refined CAM pseudo-labels: pairs with the same label are positives, pairs with different
labels negatives, pairs with an ignored pixel or farther apart than a radius are left out
(:func:`affinity_labels`, :func:`affinity_loss`). Its detached prediction then propagates the
CAMs by a random walk (:func:`random_walk`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["affinity_labels", "affinity_loss", "radius_mask", "random_walk"]


def radius_mask(height: int, width: int, radius: int, device=None) -> Tensor:
    """``[N, N]`` bool: the pairs of positions of an ``height x width`` grid at most ``radius``
    apart in rows and in columns (AFA's local window)."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    return ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)


def affinity_labels(labels: Tensor, radius: int, ignore_index: int = 255) -> Tensor:
    """Pairwise targets ``[B, N, N]`` of labels ``[B, h, w]`` (already at the affinity's grid):
    1 where both positions have the same label, 0 where they differ, ``ignore_index`` where
    either is ignored, the pair lies outside :func:`radius_mask`, or on the diagonal."""
    B, h, w = labels.shape
    flat = labels.reshape(B, -1)
    same = (flat[:, :, None] == flat[:, None, :]).long()
    known = (flat != ignore_index)
    keep = known[:, :, None] & known[:, None, :] & radius_mask(h, w, radius, labels.device)
    keep &= ~torch.eye(h * w, dtype=torch.bool, device=labels.device)
    return torch.where(keep, same, torch.full_like(same, ignore_index))


def affinity_loss(affinity: Tensor, targets: Tensor) -> Tensor:
    """AFA's affinity loss: ``0.5 * mean over positive pairs of (1 - A) + 0.5 * mean over
    negative pairs of A`` (pairs of :func:`affinity_labels`; an empty set adds 0).

    Args:
        affinity: ``[B, N, N]`` in (0, 1); targets: ``[B, N, N]`` (1, 0 or ignored).
    """
    a = affinity.float()
    pos, neg = targets == 1, targets == 0
    pos_loss = torch.where(pos, 1.0 - a, torch.zeros_like(a)).sum() / pos.sum().clamp_min(1)
    neg_loss = torch.where(neg, a, torch.zeros_like(a)).sum() / neg.sum().clamp_min(1)
    return 0.5 * pos_loss + 0.5 * neg_loss


def random_walk(maps: Tensor, affinity: Tensor, power: int = 2, mask: Tensor | None = None,
                eps: float = 1e-5) -> Tensor:
    """Propagate ``maps`` ``[B, K, h, w]`` along ``affinity`` ``[B, N, N]`` (AFA Sec. 3.4):
    ``T = A^power`` (element-wise, sharpening), zero outside ``mask`` ``[N, N]``, each column
    normalised to sum 1 (AFA adds 0.1 to the sum, which only matters to an argmax; here CAM
    thresholds follow, so the walk keeps the maps' scale); then ``M_j <- sum_i M_i T_ij``:
    every position takes the affinity-weighted mean of the maps."""
    B, K, h, w = maps.shape
    t = affinity.detach().float() ** power
    if mask is not None:
        t = t * mask.to(t.dtype)
    t = t / (t.sum(dim=1, keepdim=True) + eps)
    return torch.bmm(maps.float().reshape(B, K, h * w), t).reshape(B, K, h, w)
