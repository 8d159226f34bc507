"""Mixing: CutMix of the strongly augmented unlabeled batch (docs/method.md step 4), DACS's
ClassMix of source pixels onto target images (domain-adaptive recipes), and, beyond the paper,
a paste of rarely well-predicted classes from labeled images onto unlabeled ones (AEL's adaptive
copy-paste, Hu et al. 2021: ``method.rare_paste_prob``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cutmix_masks", "apply_cutmix", "cutmix_partners", "paste", "class_mix_masks", "rare_class_paste_masks",
           "true_class_confidence"]

# Aspect ratio (box width / box height) is log-uniform in [ASPECT_MIN, 1 / ASPECT_MIN].
ASPECT_MIN = 0.3


def _rand(n: int, generator: torch.Generator | None, device: torch.device | None) -> Tensor:
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def cutmix_masks(
    batch: int,
    height: int,
    width: int,
    prob: float = 0.5,
    area_range: tuple[float, float] = (0.02, 0.4),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """One random box per image with probability ``prob``.

    Box: area ratio ``a ~ U(area_range)`` of ``height * width``; aspect ratio ``r = w / h``
    log-uniform in ``[0.3, 1 / 0.3]``; ``box_h = round(sqrt(a*H*W / r))`` clipped to
    ``[1, H]``, ``box_w = round(a*H*W / box_h)`` clipped to ``[1, W]`` (clipping can make the box
    smaller than asked); top-left corner uniform among the positions where the whole box fits
    in the image.

    Returns:
        ``[B, H, W]`` bool, True inside the box (all False for images without a box).
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    u = _rand(5 * batch, generator, dev).view(5, batch)
    has_box = u[0] < prob
    lo, hi = area_range
    area = (lo + (hi - lo) * u[1]) * (height * width)
    log_r = math.log(ASPECT_MIN) + (-2.0 * math.log(ASPECT_MIN)) * u[2]
    r = torch.exp(log_r)
    box_h = torch.round(torch.sqrt(area / r)).clamp(1, height)
    box_w = torch.round(area / box_h).clamp(1, width)
    y0 = torch.floor(u[3] * (height - box_h + 1)).clamp(max=height - box_h)
    x0 = torch.floor(u[4] * (width - box_w + 1)).clamp(max=width - box_w)
    ys = torch.arange(height, device=dev, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, device=dev, dtype=torch.float32).view(1, 1, width)
    y0, x0, box_h, box_w = (t.view(batch, 1, 1) for t in (y0, x0, box_h, box_w))
    inside = (ys >= y0) & (ys < y0 + box_h) & (xs >= x0) & (xs < x0 + box_w)
    return inside & has_box.view(batch, 1, 1)


def paste(mask: Tensor, partner: Tensor, into: Tensor, source: Tensor) -> Tensor:
    """``where(mask, source[partner], into)``: image ``i`` of ``into`` takes the pixels of
    ``source[partner[i]]`` where ``mask[i]``. ``into`` and ``source`` are ``[B, ..., H, W]``
    (images, labels, bool masks, probabilities); the ``[B, H, W]`` mask broadcasts over any
    channel dims."""
    B, H, W = mask.shape
    if into.shape[0] != B or tuple(into.shape[-2:]) != (H, W) or into.shape[1:] != source.shape[1:]:
        raise ValueError(f"paste: tensors of shape {tuple(into.shape)} and {tuple(source.shape)} do not match "
                         f"mask {tuple(mask.shape)}")
    m = mask.to(into.device).view(B, *([1] * (into.dim() - 3)), H, W)
    return torch.where(m, source[partner.to(into.device)], into)


def apply_cutmix(mask: Tensor, partner: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """``where(mask, t[partner], t)`` for each ``t`` of shape ``[B, ..., H, W]`` (:func:`paste`
    within one batch). Returns a tuple."""
    return tuple(paste(mask, partner, t, t) for t in tensors)


def class_mix_masks(labels: Tensor, generator: torch.Generator | None = None, ignore_index: int = 255,
                    num_classes: int | None = None) -> Tensor:
    """ClassMix masks of DACS (Tranheden et al. 2021, as DAFormer uses them): for each label map,
    ``ceil(n / 2)`` of the ``n`` classes present in it, drawn uniformly without replacement;
    True on the pixels of those classes. The ignore label is not a class (DACS draws it like one).

    Args:
        labels: ``[B, H, W]`` source labels.
        generator: the step's generator (a resumed run draws the same classes).

    Returns:
        ``[B, H, W]`` bool: the pixels to paste.
    """
    valid = labels != ignore_index
    b = labels.shape[0]
    c = num_classes or (int(labels[valid].max()) + 1 if bool(valid.any()) else 1)
    index = torch.where(valid, labels, c).long().flatten(1)  # ignored pixels: an extra column c
    present = torch.zeros(b, c + 1, dtype=torch.bool, device=labels.device).scatter_(1, index, True)[:, :c]
    # a random order of each image's classes, present ones first: the first ceil(n/2) are chosen
    score = _rand(b * c, generator, labels.device).view(b, c) + (~present).float()
    rank = score.argsort(1).argsort(1)
    chosen = present & (rank < (present.sum(1, keepdim=True) + 1) // 2)
    return torch.cat([chosen, chosen.new_zeros(b, 1)], 1).gather(1, index).view_as(labels)


def cutmix_partners(
    batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Partner of each image (docs/method.md step 4): image ``i`` takes its box content from
    ``partner[i]``, drawn uniformly among the *other* images of the batch (never ``i`` itself,
    whose box would change nothing); an image may be the partner of several. A batch of one
    image has no partner: its partner is itself and CutMix leaves it unchanged."""
    if batch < 2:
        return torch.zeros(batch, dtype=torch.long, device=device)
    shift = 1 + torch.floor(_rand(batch, generator, device) * (batch - 1)).long().clamp_max(batch - 2)
    return (torch.arange(batch, device=shift.device) + shift) % batch


def rare_class_paste_masks(labels: Tensor, batch: int, class_weights: Tensor, prob: float,
                           classes_per_image: int = 2, generator: torch.Generator | None = None,
                           ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Which labeled pixels to paste onto each of ``batch`` unlabeled images (beyond the paper,
    after AEL's adaptive copy-paste): with probability ``prob`` an image gets a labeled partner,
    drawn uniformly from the labeled batch, and the pixels of ``classes_per_image`` of the classes
    present in the partner's labels (all of them if fewer), drawn without replacement with
    probability proportional to ``class_weights`` (Efraimidis-Spirakis keys ``u ** (1 / w)``);
    ``1 - confidence`` weights favour the classes the teacher gets wrong.

    Args:
        labels: ``[B_l, H, W]`` labels of the labeled batch (``ignore_index`` is not a class).
        class_weights: ``[C]`` non-negative weights (a class of weight 0 is drawn only when
            every other present class is drawn already).

    Returns:
        ``(mask [batch, H, W] bool, partner [batch] long)``: image ``i`` takes the pixels of
        labeled image ``partner[i]`` where ``mask[i]`` (all False without a paste).
    """
    b_l, dev, c = labels.shape[0], labels.device, class_weights.numel()
    u = _rand(2 * batch, generator, dev).view(2, batch)
    has_paste = u[0] < prob
    partner = torch.floor(u[1] * b_l).long().clamp(0, b_l - 1)
    source = labels[partner]
    valid = source != ignore_index
    index = torch.where(valid, source, c).long().flatten(1)  # ignored pixels: an extra column c
    present = torch.zeros(batch, c + 1, dtype=torch.bool, device=dev).scatter_(1, index, True)[:, :c]
    # log of the key u ** (1 / w): the largest keys are a weighted draw without replacement
    w = class_weights.to(device=dev, dtype=torch.float32).clamp_min(1e-6)
    log_key = _rand(batch * c, generator, dev).view(batch, c).clamp_min(1e-12).log() / w
    log_key = torch.where(present, log_key, torch.full_like(log_key, -math.inf))
    rank = log_key.argsort(1, descending=True).argsort(1)
    chosen = present & (rank < classes_per_image) & has_paste[:, None]
    mask = torch.cat([chosen, chosen.new_zeros(batch, 1)], 1).gather(1, index).view_as(source)
    return mask, partner


def true_class_confidence(logits: Tensor, labels: Tensor, num_classes: int,
                          ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """``(sums [C], counts [C])``: over the labeled pixels of each class, the sum of the softmax
    probability of that (true) class and the pixel count, at the logits' resolution (labels
    resized nearest): the per-class confidence ``sums / counts`` of AEL's confidence bank."""
    labels = labels[:, None].float()
    if tuple(labels.shape[-2:]) != tuple(logits.shape[-2:]):
        labels = torch.nn.functional.interpolate(labels, size=tuple(logits.shape[-2:]), mode="nearest")
    labels = labels[:, 0].long()
    valid = labels != ignore_index
    prob = logits.float().softmax(1)
    p_true = prob.gather(1, labels.clamp(0, num_classes - 1)[:, None])[:, 0]
    cls = labels[valid]
    sums = torch.zeros(num_classes, device=logits.device).index_add_(0, cls, p_true[valid])
    return sums, torch.bincount(cls, minlength=num_classes).float()
