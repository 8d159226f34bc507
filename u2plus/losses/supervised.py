"""Supervised pixel losses on labeled images (Eq. 3), with the OHEM option used for Cityscapes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..comm import LOCAL, Comm


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of stride-4 logits to label resolution."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                        count_override: torch.Tensor | None = None,
                        class_weights: torch.Tensor | None = None,
                        pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_s (Eq. 3): mean CE over non-ignored pixels; 0 (differentiable) when all are ignored.

    With ``class_weights [C]`` it is the weighted mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}``
    (torch's ``weight=`` convention). With ``pixel_weights [B, H, W]`` each pixel's loss is
    scaled by its weight and the mean stays over the valid pixels (DAFormer's pseudo-label
    weights; ``class_weights`` are then not used). With ``count_override`` (the number of valid pixels over all processes, or the
    sum of their class weights) it returns the local (weighted) sum divided by that count: this
    process's share of the global mean.
    """
    logits = upsample_logits(logits, target.shape[-2:]).float()
    if pixel_weights is not None:
        per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
        count = (target != ignore_index).sum() if count_override is None else count_override.to(per_pixel.device)
        return (per_pixel * pixel_weights.float()).sum() / count.float().clamp_min(1.0)
    weight = None if class_weights is None else class_weights.to(device=logits.device, dtype=torch.float32)
    if count_override is not None:
        total = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="sum")
        return total / count_override.to(total.device).float().clamp_min(1e-12)
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def weighted_pixel_count(target: torch.Tensor, ignore_index: int = 255,
                         class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The denominator of :func:`pixel_cross_entropy`: valid pixels, or the sum of their class
    weights (to be summed over processes)."""
    valid = target != ignore_index
    if class_weights is None:
        return valid.sum()
    w = class_weights.to(device=target.device, dtype=torch.float32)
    return w[target[valid].long()].sum()


def median_frequency_weights(class_pixels: torch.Tensor, image_pixels: torch.Tensor) -> torch.Tensor:
    """Median frequency balancing (Eigen & Fergus 2015; SegNet's CamVid weights):
    ``w_c = median_k(f_k) / f_c`` with ``f_c = class_pixels[c] / image_pixels[c]``, the pixels
    of class ``c`` over the (labelled) pixels of the images where ``c`` occurs. The median is
    over the classes that occur; a class that never occurs gets weight 1 (it has no pixels to
    weigh).

    Args:
        class_pixels: ``[C]`` pixel counts per class.
        image_pixels: ``[C]`` labelled pixels of the images containing each class.

    Returns:
        ``[C]`` float32 weights.
    """
    class_pixels = class_pixels.double()
    present = class_pixels > 0
    if not bool(present.any()):
        return torch.ones(class_pixels.shape[0], dtype=torch.float32)
    freq = class_pixels / image_pixels.double().clamp_min(1)
    median = freq[present].median()  # lower median for an even count, like torch.median
    weights = torch.where(present, median / freq.clamp_min(1e-300), torch.ones_like(freq))
    return weights.float()


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
