"""Class prototypes with momentum update (paper Eq. 15-18; Eq. 30 for the weakly-supervised anchors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["class_feature_sums", "masked_class_feature_sums", "momentum_prototype_update", "prototype_share_left",
           "PrototypeMemory"]


def class_feature_sums(
    features: Tensor, labels: Tensor, num_classes: int, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """Per-class sums and counts of features (numerator / denominator of Eq. 15).

    Sums rather than means so that they can be all-reduced across processes before dividing.
    Labels outside ``[0, num_classes)`` (``ignore_index`` included) are skipped.

    Args:
        features: ``[N, D]`` (L2-normalised teacher) features.
        labels: ``[N]`` long labels.

    Returns:
        ``sums [C, D]`` float32 and ``counts [C]`` long.
    """
    feats = features.detach().float()
    labels = labels.long()
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    # Invalid entries go to an extra trash row C, dropped afterwards (no multiplication, so
    # non-finite features on ignored pixels cannot leak into the sums).
    idx = torch.where(valid, labels, torch.full_like(labels, num_classes))
    sums = feats.new_zeros(num_classes + 1, feats.shape[1]).index_add_(0, idx, feats)
    counts = torch.zeros(num_classes + 1, dtype=torch.long, device=feats.device)
    counts.index_add_(0, idx, torch.ones_like(idx))
    return sums[:num_classes], counts[:num_classes]


def masked_class_feature_sums(features: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class sums and counts of the features under per-class masks (numerator and denominator
    of Eq. 30: a pixel may count for several classes, e.g. the anchors of Eq. 29).

    Args:
        features: ``[B, D, h, w]`` (L2-normalised teacher) features; masks: ``[B, C, h, w]`` bool.

    Returns:
        ``sums [C, D]`` float32 and ``counts [C]`` long.
    """
    m = masks.to(torch.float32)
    sums = torch.einsum("bchw,bdhw->cd", m, features.detach().float())
    return sums, masks.sum(dim=(0, 2, 3)).long()


def momentum_prototype_update(
    prototypes: Tensor,
    initialized: Tensor,
    sums: Tensor,
    counts: Tensor,
    momentum: float,
) -> tuple[Tensor, Tensor]:
    """Momentum prototype update (Eq. 18), re-normalised.

    ``centroid_c = sums_c / counts_c`` (Eq. 15-17; the features summed must already be
    L2-normalised, that is the caller's job). For classes with ``counts_c > 0``:
    ``new_c = normalize(m * old_c + (1 - m) * centroid_c)`` if the class is initialised, else
    ``normalize(centroid_c)`` (a class seen for the first time takes its centroid). Classes with
    count 0 are unchanged. ``momentum = 0`` gives in-batch centroids (momentum prototype off).

    Returns:
        ``(new_prototypes [C, D] float32, new_initialized [C] bool)``.
    """
    old = prototypes.float()
    present = counts > 0
    centroid = sums.float() / counts.clamp_min(1).to(old.dtype).unsqueeze(1)
    init = initialized.to(torch.bool)
    blended = torch.where(init.unsqueeze(1), momentum * old + (1.0 - momentum) * centroid, centroid)
    blended = F.normalize(blended, dim=1)
    new = torch.where(present.unsqueeze(1), blended, old)
    return new, init | present


def prototype_share_left(momentum: float, updates: int) -> float:
    """About how much of a class's first centroid is left in its prototype after ``updates``
    further updates of Eq. 18: ``m ** T``, its weight in the un-normalised average (the
    re-normalisation keeps a little more: 0.57 instead of 0.50 at ``m = 0.999, T = 693`` for a
    centroid orthogonal to the later ones). The first centroids come from a representation head
    that has not trained yet, so short schedules lower ``m``."""
    return float(momentum) ** max(int(updates), 0)


class PrototypeMemory(nn.Module):
    """Momentum prototypes as buffers (saved in ``state_dict``/checkpoints).

    Buffers: ``prototypes [C, D]`` (zeros) and ``initialized [C]`` (bool, False).
    """

    prototypes: Tensor
    initialized: Tensor

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dim = dim
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, sums: Tensor, counts: Tensor, momentum: float) -> None:
        """In-place :func:`momentum_prototype_update` of the buffers."""
        new, init = momentum_prototype_update(
            self.prototypes, self.initialized, sums.to(self.prototypes.device),
            counts.to(self.prototypes.device), momentum,
        )
        self.prototypes.copy_(new)
        self.initialized.copy_(init)

    @torch.no_grad()
    def reset(self) -> None:
        self.prototypes.zero_()
        self.initialized.zero_()
