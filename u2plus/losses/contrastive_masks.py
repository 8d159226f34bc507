"""Which pixels are anchors and which are negatives of each class: in the semi-supervised (and
domain-adaptive) setting paper Eq. 21-28, the probability-rank thresholds (PRT) and the Table III
switches (:func:`semi_supervised_masks`); in the weakly-supervised setting Eq. 29 and 31 with the
Table XIV switches (:func:`weakly_supervised_masks`). Algorithm 1
(:func:`u2plus.losses.contrastive.contrastive_loss`) takes the two masks.

Fault 1 of the conference reference code is not reproduced: the negatives of class ``c`` are
pixels whose label is ``!= c``, never ANDed with ``label == c``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .contrastive import ContrastiveConfig

__all__ = ["anchor_mask", "class_rank", "labeled_negative_mask", "semi_supervised_masks", "unlabeled_negative_mask",
           "weakly_supervised_masks"]


def class_rank(prob: Tensor) -> Tensor:
    """``O(c)``: position of class ``c`` in the probabilities sorted high to low (0 = argmax).

    Ties are broken by the lower class index first (stable sort).

    Args:
        prob: ``[B, C, H, W]``.

    Returns:
        ``[B, C, H, W]`` long ranks in ``[0, C)``.
    """
    order = torch.sort(prob.detach(), dim=1, descending=True, stable=True).indices
    C = prob.shape[1]
    positions = torch.arange(C, device=prob.device).view(1, C, 1, 1).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _class_ids(C: int, device: torch.device) -> Tensor:
    return torch.arange(C, device=device).view(1, C, 1, 1)


def anchor_mask(labels: Tensor, prob: Tensor, delta_p: float, ignore_index: int = 255) -> Tensor:
    """Anchor candidates ``label == c and p(c) > delta_p`` (Eq. 21-23).

    For unlabeled images pass pseudo-labels with ``ignore_index`` on unreliable pixels (Eq. 22).

    Returns:
        ``[B, C, H, W]`` bool.
    """
    C = prob.shape[1]
    lab = labels.long().unsqueeze(1)
    is_c = (lab == _class_ids(C, prob.device)) & (lab != ignore_index)
    return is_c & (prob > delta_p)


def labeled_negative_mask(labels: Tensor, rank: Tensor, r_l: int, ignore_index: int = 255) -> Tensor:
    """Labeled negatives ``n^l(c) = [y != c] * [0 <= O(c) < r_l]`` on non-ignored pixels (Eq. 26).

    Returns:
        ``[B, C, H, W]`` bool.
    """
    C = rank.shape[1]
    lab = labels.long().unsqueeze(1)
    not_c = (lab != _class_ids(C, rank.device)) & (lab != ignore_index)
    return not_c & (rank < r_l)


def unlabeled_negative_mask(unreliable: Tensor, rank: Tensor, r_l: int, r_h: int) -> Tensor:
    """Unlabeled negatives ``n^u(c) = [unreliable] * [r_l <= O(c) < r_h]`` (Eq. 27), ``r_h``
    clipped to ``C``.

    Returns:
        ``[B, C, H, W]`` bool.
    """
    r_h = min(int(r_h), rank.shape[1])
    return unreliable.to(torch.bool).unsqueeze(1) & (rank >= r_l) & (rank < r_h)


_NEG_SOURCES = ("unreliable", "reliable", "both")


def _negative_mask(labels: Tensor, rank: Tensor, is_labeled: Tensor, unreliable: Tensor, cfg: ContrastiveConfig,
                   ign: int) -> Tensor:
    """``n(c)`` of Eq. 25-27 (with the ablation switches) as ``[B, C, h, w]`` bool."""
    if cfg.negatives_from not in _NEG_SOURCES:
        raise ValueError(f"negatives_from must be one of {_NEG_SOURCES}, got {cfg.negatives_from!r}")
    B, C = rank.shape[:2]
    lab = labels.long()
    not_c = lab.unsqueeze(1) != _class_ids(C, rank.device)  # true for ignored pixels too
    # labeled images (Eq. 26)
    if not cfg.labeled_negatives:
        neg_l = torch.zeros_like(rank, dtype=torch.bool)
    elif cfg.rank_threshold:
        neg_l = labeled_negative_mask(lab, rank, cfg.r_l, ign)
    else:
        neg_l = not_c & (lab != ign).unsqueeze(1)
    # unlabeled images (Eq. 27)
    unrel = unreliable.to(torch.bool)
    reliable = (~unrel) & (lab != ign)
    if cfg.negatives_from == "unreliable":
        src = unrel
    elif cfg.negatives_from == "reliable":
        src = reliable
    else:
        src = unrel | reliable
    neg_u = src.unsqueeze(1) & not_c  # reliable pixels are never negatives of their own class
    if cfg.rank_threshold:
        r_h = min(int(cfg.r_h), C)
        neg_u = neg_u & (rank >= cfg.r_l) & (rank < r_h)
    lab_img = is_labeled.to(device=rank.device, dtype=torch.bool).view(B, 1, 1, 1)
    return torch.where(lab_img, neg_l, neg_u)


def semi_supervised_masks(labels: Tensor, prob: Tensor, is_labeled: Tensor, unreliable: Tensor,
                          cfg: ContrastiveConfig, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Anchor and negative masks ``[B, C, h, w]`` (bool) of a batch of labeled and unlabeled images.

    Anchors of class ``c`` (Eq. 21-23): label (or reliable pseudo-label) ``c`` and ``p(c) >
    delta_p``. Negatives of ``c`` (Eq. 25-28): on labeled images, label ``!= c`` and rank
    ``O(c) < r_l``; on unlabeled images, unreliable pixels with ``r_l <= O(c) < r_h`` (with the
    Table III / PRT switches of ``cfg``).

    Args:
        labels: ``[B, h, w]`` ground truth on labeled images, pseudo-labels (``ignore_index`` on
            unreliable pixels) on unlabeled ones.
        prob: ``[B, C, h, w]`` teacher probabilities; is_labeled: ``[B]`` bool;
        unreliable: ``[B, h, w]`` bool (False on labeled images and on padding).
    """
    prob = prob.detach().float()
    anchors = anchor_mask(labels, prob, cfg.delta_p, ignore_index)
    negatives = _negative_mask(labels, class_rank(prob), is_labeled, unreliable, cfg, ignore_index)
    return anchors, negatives


def weakly_supervised_masks(cams: Tensor, tags: Tensor, beta: float, valid: Tensor | None = None,
                            absent_class_negatives: bool = True,
                            low_cam_negatives: bool = True) -> tuple[Tensor, Tensor]:
    """Anchor and negative masks ``[B, K, h, w]`` (bool) from CAMs and image-level labels.

    Anchors of class ``c`` (Eq. 29): pixels of images tagged ``c`` with ``M^c > beta``.
    Negatives of ``c`` (Eq. 31): ``n_ij(c) = 1[y_i^c = 0] or 1[M_ij^c < beta]``: every pixel of an
    image without ``c``, and the pixels of an image with ``c`` whose CAM of ``c`` is below
    ``beta`` (not reliably ``c``). Table XIV's switches drop either term. Pixels where ``valid``
    ``[B, h, w]`` is False (crop padding) are neither.

    Args:
        cams: ``[B, K, h, w]`` in ``[0, 1]``; tags: ``[B, K]`` in {0, 1} (the same K classes).
    """
    present = tags.to(device=cams.device, dtype=torch.bool)[:, :, None, None]
    anchors = present & (cams > beta)
    negatives = torch.zeros_like(anchors)
    if absent_class_negatives:
        negatives = negatives | ~present
    if low_cam_negatives:
        negatives = negatives | (present & (cams < beta))
    if valid is not None:
        inside = valid.to(device=cams.device, dtype=torch.bool).unsqueeze(1)
        anchors, negatives = anchors & inside, negatives & inside
    return anchors, negatives
