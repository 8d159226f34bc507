"""Supervised pixel losses on labeled images (Eq. 3), with the OHEM option used for Cityscapes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine.distributed import LOCAL, Comm


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of stride-4 logits to label resolution."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                        count_override: torch.Tensor | None = None) -> torch.Tensor:
    """L_s (Eq. 3): mean CE over non-ignored pixels; 0 (differentiable) when all are ignored.

    With ``count_override`` (the number of valid pixels over all processes) it returns the local
    sum divided by that count: this process's share of the global mean.
    """
    logits = upsample_logits(logits, target.shape[-2:]).float()
    if count_override is not None:
        total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
        return total / count_override.to(total.device).float().clamp_min(1.0)
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7,
                       min_kept: int = 100000, ignore_index: int = 255, comm: Comm = LOCAL) -> torch.Tensor:
    """Online hard example mining CE: mean over pixels whose true-class probability is below
    ``thresh``, keeping at least the ``min_kept`` hardest valid pixels of the global batch
    (``comm`` gathers the probabilities of all processes; each returns its share of the mean)."""
    logits = upsample_logits(logits, target.shape[-2:]).float()
    pixel_loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = (target != ignore_index).flatten()
    with torch.no_grad():
        prob_true = torch.exp(-pixel_loss)  # softmax probability of the true class
        prob_true = torch.where(valid, prob_true, torch.ones_like(prob_true))
        num_valid = int(comm.sum(valid.sum()))
        if num_valid:
            k = min(num_valid, max(min_kept, 1))
            kth = torch.kthvalue(comm.cat(prob_true), k).values
            threshold = torch.maximum(kth, torch.tensor(thresh, device=kth.device))
            keep = valid & (prob_true <= threshold)
            kept = comm.sum(keep.sum())
    if num_valid == 0:
        return logits.sum() * 0.0
    return torch.where(keep, pixel_loss, torch.zeros_like(pixel_loss)).sum() / kept.clamp_min(1).float()
