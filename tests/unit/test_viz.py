"""Palettes, colourised masks, overlays, entropy maps and PNG saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from u2plus.viz import (
    CAMVID_PALETTE,
    CITYSCAPES_PALETTE,
    VOC_PALETTE,
    colorize,
    entropy_map_rgb,
    overlay,
    palette_for,
    save_png,
)


def test_standard_palettes():
    assert CITYSCAPES_PALETTE.shape == (19, 3) and CITYSCAPES_PALETTE.dtype == np.uint8
    assert CITYSCAPES_PALETTE[0].tolist() == [128, 64, 128]  # road
    assert CITYSCAPES_PALETTE[13].tolist() == [0, 0, 142]  # car
    assert CITYSCAPES_PALETTE[18].tolist() == [119, 11, 32]  # bicycle
    assert CAMVID_PALETTE.shape == (11, 3)
    assert CAMVID_PALETTE[0].tolist() == [128, 128, 128]  # sky
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    assert VOC_PALETTE[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert VOC_PALETTE[15].tolist() == [192, 128, 128]  # person
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in VOC_PALETTE.tolist()}) == 256


def test_palette_for_sizes_names_and_fallback():
    assert np.array_equal(palette_for(19, "Cityscapes"), CITYSCAPES_PALETTE)
    assert np.array_equal(palette_for(16, "synthia"), CITYSCAPES_PALETTE[:16])
    assert np.array_equal(palette_for(21, "voc"), VOC_PALETTE[:21])
    assert np.array_equal(palette_for(11, "camvid"), CAMVID_PALETTE)
    for k in (0, 1, 7, 12, 300):
        p = palette_for(k, None)
        assert p.shape == (k, 3) and p.dtype == np.uint8
        assert len({tuple(c) for c in p.tolist()}) == k  # distinct
        assert not any(c == [0, 0, 0] for c in p.tolist())  # never the ignore colour
    assert np.array_equal(palette_for(300), palette_for(300))  # deterministic
    # a named palette too short for K falls back to the generic one
    assert palette_for(12, "camvid").shape == (12, 3)
    assert np.array_equal(palette_for(5, "my_folder_dataset"), palette_for(5))


def test_colorize_known_values_and_ignore_black():
    mask = np.array([[0, 1], [255, 18]])
    rgb = colorize(mask, CITYSCAPES_PALETTE)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 0].tolist() == [128, 64, 128]
    assert rgb[0, 1].tolist() == [244, 35, 232]
    assert rgb[1, 0].tolist() == [0, 0, 0]
    assert rgb[1, 1].tolist() == [119, 11, 32]
    # tensors work; 255 is black even with the 256-entry VOC palette; unknown labels black
    rgb = colorize(torch.tensor([[1, 255], [300, -1]]), VOC_PALETTE)
    assert rgb[0, 0].tolist() == [128, 0, 0]
    assert rgb[0, 1].tolist() == [0, 0, 0] and rgb[1, 0].tolist() == [0, 0, 0]
    assert rgb[1, 1].tolist() == [0, 0, 0]


def test_overlay_blending_arithmetic():
    image = np.full((1, 3, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 1, 255]])
    out = overlay(image, mask, CITYSCAPES_PALETTE, alpha=0.5)
    assert out.dtype == np.uint8
    # (100 + 128) / 2 = 114, (100 + 64) / 2 = 82
    assert out[0, 0].tolist() == [114, 82, 114]
    # (100 + 244) / 2 = 172, (100 + 35) / 2 = 67.5 -> 68 (round half to even), (100+232)/2 = 166
    assert out[0, 1].tolist() == [172, 68, 166]
    assert out[0, 2].tolist() == [100, 100, 100]  # ignore keeps the photo
    assert np.array_equal(overlay(image, mask, CITYSCAPES_PALETTE, alpha=0.0), image)
    full = overlay(image, mask, CITYSCAPES_PALETTE, alpha=1.0)
    assert full[0, 0].tolist() == [128, 64, 128]
    # alpha 0.25: 0.75 * 100 + 0.25 * 128 = 107
    assert overlay(image, mask, CITYSCAPES_PALETTE, alpha=0.25)[0, 0].tolist() == [107, 91, 107]
    with pytest.raises(ValueError):
        overlay(image, np.zeros((2, 2), dtype=np.int64), CITYSCAPES_PALETTE)


def test_entropy_map_rgb():
    e = np.array([[0.0, 0.5, 1.0], [2.0, np.nan, 0.25]])
    rgb = entropy_map_rgb(e, vmax=1.0)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == [68, 1, 84]  # low end
    assert rgb[0, 2].tolist() == [253, 231, 37]  # high end
    assert rgb[1, 0].tolist() == [253, 231, 37]  # clipped above vmax
    assert rgb[1, 1].tolist() == [0, 0, 0]  # NaN
    assert rgb[1, 2].tolist() == [59, 82, 139]  # an anchor
    # default vmax = the map's max: 2.0 -> 0.5 maps to 0.25
    assert entropy_map_rgb(e)[0, 1].tolist() == [59, 82, 139]
    # brightness grows with entropy along the ramp
    ramp = entropy_map_rgb(np.linspace(0, 1, 11)[None], vmax=1.0)[0].astype(int).sum(1)
    assert np.all(np.diff(ramp) > 0)


def test_save_png_creates_parents_and_round_trips(tmp_path):
    rgb = colorize(np.array([[0, 1], [2, 255]]), CITYSCAPES_PALETTE)
    path = save_png(rgb, tmp_path / "a" / "b" / "x.png")
    assert path.is_file()
    assert np.array_equal(np.asarray(Image.open(path)), rgb)
    gray = save_png(torch.tensor([[0, 255]]), tmp_path / "g.png")
    assert np.asarray(Image.open(gray)).tolist() == [[0, 255]]
    with pytest.raises(ValueError):
        save_png(np.array([[0.5]]), tmp_path / "f.png")
