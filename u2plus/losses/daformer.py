"""DAFormer's training terms beyond the supervised loss (Hoyer et al., "DAFormer", CVPR 2022):
the confidence weight of the pseudo-labels (DACS, Tranheden et al. 2021; DAFormer Sec. 3.1) and
the ImageNet feature distance on thing classes (DAFormer Sec. 3.4)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..comm import LOCAL, Comm

__all__ = ["confidence_weight", "pseudo_label_weights", "majority_label_downscale", "feature_distance"]


def confidence_weight(confidence: Tensor, threshold: float = 0.968, valid: Tensor | None = None,
                      comm: Comm = LOCAL) -> Tensor:
    """``q = |{pixels with max_c p(c) >= threshold}| / |{pixels}|`` (DAFormer Sec. 3.1): the share of
    (valid) target pixels whose teacher confidence reaches the threshold, over the global batch.

    Args:
        confidence: ``[B, H, W]`` the teacher's maximum softmax probability per pixel.
        valid: ``[B, H, W]`` bool, False on crop padding (not counted).
    """
    valid = torch.ones_like(confidence, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    confident, counted = comm.sum(torch.stack([((confidence >= threshold) & valid).sum(), valid.sum()])).unbind()
    return confident.float() / counted.clamp_min(1).float()


def pseudo_label_weights(q: Tensor, shape: Sequence[int], ignore_rows: Sequence[int] = (0, 0)) -> Tensor:
    """``[B, H, W]`` weights of the pseudo-labels: ``q`` everywhere but 0 in the ``ignore_rows =
    (top, bottom)`` rows of each crop (DAFormer's rectification-artefact and ego-car rows on
    Cityscapes, 15 and 120)."""
    weights = q.reshape(1, 1, 1).expand(*shape).clone()
    top, bottom = ignore_rows
    if top:
        weights[:, :top] = 0
    if bottom:
        weights[:, -bottom:] = 0
    return weights


def majority_label_downscale(labels: Tensor, size: Sequence[int], num_classes: int, min_ratio: float = 0.75,
                             ignore_index: int = 255) -> Tensor:
    """Labels at a feature map's resolution: the class covering the largest share of each feature
    pixel's label pixels (adaptive average pooling of the one-hot map, the ignore label one of the
    channels), ignore where that share is below ``min_ratio`` or the majority is ignored
    (DAFormer's ``downscale_label_ratio``).

    Args:
        labels: ``[B, H, W]``; size: ``(h, w)`` of the feature map.

    Returns:
        ``[B, h, w]`` long.
    """
    index = torch.where(labels == ignore_index, num_classes, labels).long()
    one_hot = F.one_hot(index, num_classes + 1).permute(0, 3, 1, 2).float()
    share, majority = F.adaptive_avg_pool2d(one_hot, tuple(size)).max(1)
    return torch.where((share < min_ratio) | (majority == num_classes), ignore_index, majority)


def feature_distance(student: Tensor, frozen: Tensor, labels: Tensor | None = None,
                     classes: Sequence[int] | None = None, min_ratio: float = 0.75, num_classes: int | None = None,
                     ignore_index: int = 255) -> Tensor:
    """ImageNet feature distance (DAFormer Sec. 3.4): the mean over feature pixels of
    ``||F_student - F_ImageNet||_2`` (over channels), restricted to the pixels whose
    majority-downscaled source label (:func:`majority_label_downscale`) is one of ``classes``
    (the thing classes); every pixel when ``classes`` is None. No such pixel: an exact,
    differentiable 0.

    Args:
        student, frozen: ``[B, D, h, w]`` the student's and the frozen ImageNet encoder's deepest
            features of the source images.
        labels: ``[B, H, W]`` source labels (needed with ``classes``).
    """
    distance = (student.float() - frozen.detach().float()).norm(dim=1)
    if classes is None:
        return distance.mean()
    small = majority_label_downscale(labels, distance.shape[-2:], num_classes, min_ratio, ignore_index)
    mask = torch.isin(small, torch.as_tensor(list(classes), device=small.device))
    return (distance * mask).sum() / mask.sum().clamp_min(1)
