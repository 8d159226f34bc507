"""Pixel-adaptive refinement (PAR) of CAMs with the image's colour and position (AFA, Ru et al.,
CVPR 2022, Sec. 3.3).

Each pixel i is linked to its 8 neighbours at each dilation d (``K = 8 * len(dilations)``
neighbours j). Kernel (AFA, Eq. 7-8 of AFA):

    k_rgb(i, j) = softmax_j( -( |I_i - I_j| / (w1 * sigma_rgb(i)) )^2 averaged over colour channels )
    k_pos(i, j) = softmax_j( -( |P_i - P_j| / (w1 * sigma_pos) )^2 )
    a(i, j) = (k_rgb + w2 * k_pos) / (1 + w2)

sigma_rgb(i) is the standard deviation of the neighbours' colours, sigma_pos that of the
neighbour distances (d, or d * sqrt(2) diagonally); w1 = 0.3, w2 = 0.01. A map is refined by
``iterations`` rounds of ``M_i <- sum_j a(i, j) M_j``. AFA does not divide by ``1 + w2``: its
maps go through an argmax, which is scale-free; here thresholds follow, so the weights sum to 1
and a refined CAM stays on the CAM's ``[0, 1]`` scale (a constant map stays constant).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dilated_neighbours", "par_kernel", "pixel_adaptive_refinement"]

# the 8 neighbours of a pixel: (row offset, column offset)
OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _neighbour_views(x: Tensor, dilations: Sequence[int]):
    """The ``K`` neighbour maps of ``x`` ``[B, C, H, W]`` (borders replicated), as views of one
    padded copy, in the order dilations, then OFFSETS."""
    H, W = x.shape[-2:]
    pad = max(dilations)
    padded = F.pad(x, [pad] * 4, mode="replicate")
    for d in dilations:
        for dy, dx in OFFSETS:
            yield padded[..., pad + dy * d: pad + dy * d + H, pad + dx * d: pad + dx * d + W]


def dilated_neighbours(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """The 8 neighbours of every pixel at each dilation (borders replicated).

    Args:
        x: ``[B, C, H, W]``.

    Returns:
        ``[B, C, K, H, W]``, ``K = 8 * len(dilations)``, neighbour order: dilations, then OFFSETS.
    """
    return torch.stack(list(_neighbour_views(x, dilations)), dim=2)


def par_kernel(image: Tensor, dilations: Sequence[int], w_colour: float = 0.3, w_position: float = 0.01) -> Tensor:
    """The refinement weights ``a(i, j)`` ``[B, K, H, W]`` of an image ``[B, 3, H, W]`` (any
    per-channel affine normalisation of the image gives the same kernel). Computed one neighbour
    at a time, never holding the ``[B, 3, K, H, W]`` neighbour stack."""
    image = image.float()
    k = 8 * len(dilations)
    mean = sum(_neighbour_views(image, dilations)) / k
    # unbiased, as torch.std
    sigma = (sum((n - mean) ** 2 for n in _neighbour_views(image, dilations)) / (k - 1)).sqrt()
    colour = torch.stack([-((n - image).abs() / (sigma + 1e-8) / w_colour).pow(2).mean(dim=1)
                          for n in _neighbour_views(image, dilations)], dim=1).softmax(dim=1)
    distance = torch.tensor([d * (math.sqrt(2.0) if dy and dx else 1.0) for d in dilations for dy, dx in OFFSETS],
                            device=image.device)
    position = (-(distance / distance.std() / w_colour) ** 2).softmax(dim=0).view(1, -1, 1, 1)
    return (colour + w_position * position) / (1.0 + w_position)


def pixel_adaptive_refinement(image: Tensor, maps: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
                              iterations: int = 10, w_colour: float = 0.3, w_position: float = 0.01) -> Tensor:
    """PAR: ``maps`` ``[B, M, h, w]`` resized to the image ``[B, 3, H, W]`` (bilinear, as AFA)
    and refined ``iterations`` times with :func:`par_kernel`. Returns ``[B, M, H, W]``.

    AFA runs it on the image downsampled by 2 (``method.par_downscale``); the caller resizes.
    Each round accumulates the ``K`` weighted neighbour views in place (8x faster on a CPU than
    stacking them).
    """
    kernel = par_kernel(image, dilations, w_colour, w_position)
    out = F.interpolate(maps.float(), size=image.shape[-2:], mode="bilinear", align_corners=True)
    for _ in range(iterations):
        refined = torch.zeros_like(out)
        for i, view in enumerate(_neighbour_views(out, dilations)):
            refined.addcmul_(view, kernel[:, i:i + 1])
        out = refined
    return out
