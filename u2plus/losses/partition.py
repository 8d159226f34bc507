"""Reliable / unreliable partition of pseudo-labels (paper Eq. 12-13).

``unreliable_fraction`` is the dynamic partition adjustment (DPA, Eq. 13), ``entropy_threshold``
the entropy quantile ``gamma_t`` and ``reliable_mask``/``pseudo_labels`` Eq. 12.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["unreliable_fraction", "entropy_threshold", "classwise_entropy_threshold", "reliable_mask", "pseudo_labels"]


def unreliable_fraction(alpha0: float, progress: float, dynamic: bool = True) -> float:
    """``alpha_t = alpha_0 * (1 - t / T)`` (Eq. 13).

    Args:
        alpha0: initial unreliable proportion (0.2 in the paper).
        progress: training progress ``t / T``; clipped to ``[0, 1]``.
        dynamic: ``False`` switches DPA off and returns ``alpha0`` unchanged.
    """
    if not dynamic:
        return float(alpha0)
    progress = min(max(float(progress), 0.0), 1.0)
    return float(alpha0) * (1.0 - progress)


def entropy_threshold(entropy: Tensor, alpha_t: float, valid: Tensor | None = None) -> Tensor:
    """Entropy threshold ``gamma_t``: the ``(1 - alpha_t)`` quantile of ``entropy`` (Sec. 3.3).

    Same semantics as ``np.percentile(H.flatten(), 100 * (1 - alpha_t))`` (linear interpolation
    between the two nearest order statistics). Implemented with ``torch.sort`` so it works for
    any number of elements (``torch.quantile`` is limited to 2**24; ``torch.kthvalue`` is
    quadratic on CPU for reverse-sorted input).

    Args:
        entropy: entropies of any shape.
        alpha_t: unreliable fraction; ``1 - alpha_t`` is clipped to ``[0, 1]``.
        valid: optional bool mask of ``entropy``'s shape; only ``True`` pixels are used.

    Returns:
        0-dim float32 tensor on ``entropy``'s device. With no (valid) pixel at all it returns
        ``0.0``: then ``reliable = H < 0`` is empty (nobody is reliable, which is safe: no
        pseudo-label is trusted). Note ``alpha_t = 0`` gives the maximum, so with the strict
        ``H < gamma`` of Eq. 12 the maximal-entropy pixel(s) stay unreliable (as with numpy).
    """
    flat = entropy.detach().float().reshape(-1)
    if valid is not None:
        flat = flat[valid.reshape(-1).to(torch.bool)]
    n = flat.numel()
    if n == 0:
        return torch.zeros((), dtype=torch.float32, device=entropy.device)
    q = min(max(1.0 - float(alpha_t), 0.0), 1.0)
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    ordered = torch.sort(flat).values
    v_lo = ordered[lo]
    if frac == 0.0 or hi == lo:
        return v_lo
    return v_lo + (ordered[hi] - v_lo) * frac


def classwise_entropy_threshold(entropy: Tensor, predicted: Tensor, alpha_t: float, num_classes: int,
                                valid: Tensor | None = None) -> Tensor:
    """Per-class ``gamma_t`` (an option beyond the paper): for each class c, the ``(1 - alpha_t)``
    quantile of the entropies of the pixels whose teacher prediction is c, with the
    interpolation of :func:`entropy_threshold`. Reliable then means ``H < gamma[predicted]``, so
    every predicted class keeps the same share of reliable pixels; with one quantile over all
    pixels, the classes the teacher is least sure of (thin, rare ones) lose nearly all.

    Args:
        entropy: entropies of any shape; ``predicted``: the teacher's class per pixel, same shape.
        valid: optional bool mask; only ``True`` pixels are used.

    Returns:
        ``[num_classes]`` float32; 0 for a class that no pixel predicts.
    """
    flat = entropy.detach().reshape(-1).double()
    cls = predicted.reshape(-1).long()
    if valid is not None:
        keep = valid.reshape(-1).to(torch.bool)
        flat, cls = flat[keep], cls[keep]
    q = min(max(1.0 - float(alpha_t), 0.0), 1.0)
    # one sort orders the pixels by class, then by entropy (entropy <= log C < offset)
    offset = float(flat.max().item()) + 1.0 if flat.numel() else 1.0
    ordered = (torch.sort(cls.double() * offset + flat).values - cls.sort().values.double() * offset)
    counts = torch.bincount(cls, minlength=num_classes)
    start = torch.cumsum(counts, 0) - counts
    pos = q * (counts - 1).clamp_min(0).double()
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (counts - 1).clamp_min(0))
    frac = pos - lo.double()
    n = max(ordered.numel() - 1, 0)
    v_lo = ordered[(start + lo).clamp_max(n)] if ordered.numel() else torch.zeros_like(frac)
    v_hi = ordered[(start + hi).clamp_max(n)] if ordered.numel() else torch.zeros_like(frac)
    gamma = v_lo + (v_hi - v_lo) * frac
    return torch.where(counts > 0, gamma, torch.zeros_like(gamma)).float()


def reliable_mask(entropy: Tensor, gamma: Tensor) -> Tensor:
    """Reliable pixels ``H < gamma_t`` (strict, Eq. 12).

    The unreliable set is the complement ``~reliable`` (``H >= gamma_t``), so the two sets
    partition the pixels exactly (Eq. 27 writes ``H > gamma_t``; the difference is only the
    pixels exactly at the threshold, which we count as unreliable).
    """
    return entropy < gamma


def pseudo_labels(prob: Tensor, reliable: Tensor, ignore_index: int = 255) -> Tensor:
    """Eq. 12: ``argmax_c p(c)`` on reliable pixels, ``ignore_index`` elsewhere.

    Args:
        prob: ``[B, C, H, W]`` (possibly denoised, Eq. 20) probabilities.
        reliable: ``[B, H, W]`` bool.

    Returns:
        ``[B, H, W]`` long labels. Ties go to the lowest class index.
    """
    # max(dim).indices: the same first-maximum index as argmax, ~5x faster on CPU over dim 1
    label = prob.max(dim=1).indices
    return torch.where(reliable, label, torch.full_like(label, ignore_index))
