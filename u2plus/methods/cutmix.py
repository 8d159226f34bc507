"""CutMix for the strongly augmented unlabeled batch (docs/method.md step 4)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cutmix_masks", "apply_cutmix", "cutmix_partners"]

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


def apply_cutmix(mask: Tensor, partner: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """``where(mask, t[partner], t)`` for each ``t`` of shape ``[B, ..., H, W]``.

    The ``[B, H, W]`` mask broadcasts over any channel dims: works for images ``[B, 3, H, W]``,
    labels ``[B, H, W]``, bool masks and probabilities ``[B, C, H, W]``. Returns a tuple.
    """
    B, H, W = mask.shape
    out = []
    for t in tensors:
        if t.shape[0] != B or tuple(t.shape[-2:]) != (H, W):
            raise ValueError(f"apply_cutmix: tensor of shape {tuple(t.shape)} does not match mask {tuple(mask.shape)}")
        m = mask.to(t.device).view(B, *([1] * (t.dim() - 3)), H, W)
        out.append(torch.where(m, t[partner.to(t.device)], t))
    return tuple(out)


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
