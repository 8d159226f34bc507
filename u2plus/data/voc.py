"""PASCAL VOC 2012: ``JPEGImages/{id}.jpg`` with ``SegmentationClass/{id}.png`` (``classic``) or
``SegmentationClassAug/{id}.png`` (``blender``, SBD-augmented) masks, chosen by
``data.voc_variant``. Ids look like ``2007_000033``; 21 classes, 255 (object boundaries) = void.

Splits:
  * ``val``: ``ImageSets/Segmentation/val.txt`` if present, else the shipped
    ``splits/pascal/val.txt`` (1,449 ids).
  * ``train``, blender: every id with a mask in ``SegmentationClassAug`` (10,582 for SBD),
    minus the val ids.
  * ``train``, classic: every ``JPEGImages`` id minus the val ids, so that the shipped partitions
    (labeled ids from the 1,464 VOC train images, unlabeled ids from SBD) are subsets of it. Ids
    in ``ImageSets/Segmentation/train.txt`` (or, without it, every id with a mask) get their
    ``SegmentationClass`` mask, the others ``mask=None``: pass ``data.labeled`` (e.g.
    ``pascal/1464/labeled.txt``) to train on the labeled images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import SampleRef, SegmentationDataset, read_id_list, require_dir

CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOID = 255
MASK_DIRS = {"classic": "SegmentationClass", "blender": "SegmentationClassAug"}


def label_map(ignore_index: int = 255) -> np.ndarray:
    """Palette index -> train id: 0..20 kept, 255 -> ``ignore_index`` (others are reported)."""
    lut = np.arange(256, dtype=np.int64)
    lut[VOID] = ignore_index
    return lut


def val_split_file(root: Path) -> Path:
    own = root / "ImageSets" / "Segmentation" / "val.txt"
    if own.is_file():
        return own
    from . import SPLITS_DIR  # late import: the package imports this module

    return SPLITS_DIR / "pascal" / "val.txt"


def _stems(folder: Path, ext: str) -> set[str]:
    return {p.stem for p in folder.glob(f"*{ext}")} if folder.is_dir() else set()


def list_split(root: str | Path, split: str, variant: str = "classic") -> list[SampleRef]:
    root = Path(root)
    if variant not in MASK_DIRS:
        raise DataError(f"unknown VOC variant {variant!r} (classic or blender)")
    images = require_dir(root / "JPEGImages", "VOC image folder")
    mask_dir = require_dir(root / MASK_DIRS[variant], f"VOC {variant} mask folder")
    image_ids = _stems(images, ".jpg")
    val_file = val_split_file(root)
    val_ids = read_id_list(val_file)
    if split == "val":
        missing = [i for i in val_ids if i not in image_ids]
        if missing:
            raise DataError(
                f"{val_file}: {len(missing)} val id(s) have no image, e.g. {images / (missing[0] + '.jpg')}"
            )
        other = root / MASK_DIRS["classic" if variant == "blender" else "blender"]
        refs = []
        for i in val_ids:
            mask = mask_dir / f"{i}.png"
            if not mask.is_file() and (other / f"{i}.png").is_file():
                mask = other / f"{i}.png"
            refs.append(SampleRef(i, images / f"{i}.jpg", mask))
        return refs
    if split != "train":
        raise DataError(f"VOC has no split '{split}' (train or val)")
    held_out = set(val_ids)
    mask_ids = _stems(mask_dir, ".png")
    if variant == "blender":
        ids = sorted(mask_ids - held_out)
        missing = [i for i in ids if i not in image_ids]
        if missing:
            raise DataError(f"mask {mask_dir / (missing[0] + '.png')} has no image in {images}")
        return [SampleRef(i, images / f"{i}.jpg", mask_dir / f"{i}.png") for i in ids]
    train_file = root / "ImageSets" / "Segmentation" / "train.txt"
    labeled = set(read_id_list(train_file)) & mask_ids if train_file.is_file() else mask_ids
    return [
        SampleRef(i, images / f"{i}.jpg", (mask_dir / f"{i}.png") if i in labeled else None)
        for i in sorted(image_ids - held_out)
    ]


def build(cfg, split: str) -> SegmentationDataset:
    return SegmentationDataset(
        list_split(cfg.root, split, cfg.voc_variant), CLASSES, cfg.ignore_index,
        label_map(cfg.ignore_index), cfg.resize_factor,
        name=f"VOC {cfg.voc_variant} {split} ({cfg.root})",
    )
