"""Class activation maps and their pseudo-labels (paper Eq. 5-8; AFA, Ru et al., CVPR 2022).

The classification head f_cls is global pooling + a 1x1 convolution without bias on the
encoder's last feature map F; its weights w ``[C - 1, d]`` (foreground classes) give the CAMs.
Channel ``k`` of a CAM tensor is foreground class ``k + 1`` (train id 0 is the background).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["class_activation_maps", "cam_pseudo_labels", "multilabel_soft_margin_loss", "normalise_cams"]


def class_activation_maps(features: Tensor, weight: Tensor) -> Tensor:
    """Eq. 5: ``M^c = ReLU(sum_i w_{c,i} F_i)``.

    Args:
        features: ``[B, d, h, w]``; weight: ``[K, d]`` or the 1x1 conv weight ``[K, d, 1, 1]``.

    Returns:
        ``[B, K, h, w]``.
    """
    return F.relu(F.conv2d(features, weight.reshape(weight.shape[0], -1, 1, 1)))


def normalise_cams(cams: Tensor, present: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Min-max normalisation of each image's map of each class to ``[0, 1]`` (Sec. 3.1):
    ``(M - min M) / (max M - min M + eps)`` (AFA's ``eps``); maps of classes not in ``present``
    ``[B, K]`` are zeroed."""
    shifted = cams - cams.amin(dim=(2, 3), keepdim=True)
    out = shifted / (shifted.amax(dim=(2, 3), keepdim=True) + eps)
    if present is not None:
        out = out * present.to(out.dtype)[:, :, None, None]
    return out


def cam_pseudo_labels(cams: Tensor, fg_threshold: float, bg_threshold: float, ignore_index: int = 255,
                      valid: Tensor | None = None) -> Tensor:
    """Pixel pseudo-labels from foreground CAMs in ``[0, 1]`` (Eq. 8 and AFA's two thresholds).

    With ``m`` the best foreground map at a pixel and ``k`` its class: label ``k + 1`` where
    ``m > fg_threshold``, background (0) where ``m <= bg_threshold``, ``ignore_index`` between
    (AFA: 0.55 / 0.35). ``fg_threshold == bg_threshold == beta`` is Eq. 8's single threshold
    (no ignore band). Pixels where ``valid`` ``[B, H, W]`` is False (crop padding) are ignored.

    Args:
        cams: ``[B, C - 1, H, W]`` (zeros for classes the image lacks).

    Returns:
        ``[B, H, W]`` long.
    """
    best, cls = cams.max(dim=1)
    labels = torch.full_like(cls, ignore_index)
    labels = torch.where(best > fg_threshold, cls + 1, labels)
    labels = torch.where(best <= bg_threshold, torch.zeros_like(labels), labels)
    if valid is not None:
        labels = labels.masked_fill(~valid.to(torch.bool), ignore_index)
    return labels


def multilabel_soft_margin_loss(logits: Tensor, tags: Tensor) -> Tensor:
    """Eq. 6, the multi-label soft margin loss of the classification head: per image
    ``-(1/K) sum_k [y_k log sigmoid(x_k) + (1 - y_k) log sigmoid(-x_k)]``, averaged over images.

    Args:
        logits: ``[B, K]`` (K = C - 1 foreground classes); tags: ``[B, K]`` in {0, 1}.
    """
    return F.multilabel_soft_margin_loss(logits.float(), tags.float())
