"""GTA5 (Playing for Data): ``images/*.png`` and ``labels/*.png`` matched by file name.

Labels are Cityscapes label ids (0..33), mapped to the 19 Cityscapes train ids with the table of
:mod:`u2plus.data.cityscapes`; anything else is void. GTA5 is a training source only: its one
split, ``train``, holds every image (restrict it with ``data.labeled``); evaluate on Cityscapes.
Ids are file stems (``00001``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import SampleRef, SegmentationDataset, list_images, require_dir
from .cityscapes import CLASSES, label_id_map


def list_split(root: str | Path, split: str) -> list[SampleRef]:
    root = Path(root)
    if split != "train":
        raise DataError(
            f"GTA5 has no '{split}' split (only 'train'); GTA5 has no val split, evaluate on "
            "Cityscapes (set the validation dataset to cityscapes)"
        )
    images = list_images(require_dir(root / "images", "GTA5 image folder"))
    if not images:
        raise DataError(f"no images found in {root / 'images'}")
    labels = root / "labels"
    has_labels = labels.is_dir()
    return [SampleRef(p.stem, p, (labels / f"{p.stem}.png") if has_labels else None) for p in images]


def build(cfg, split: str) -> SegmentationDataset:
    return SegmentationDataset(
        list_split(cfg.root, split), CLASSES, cfg.ignore_index, label_id_map(cfg.ignore_index),
        cfg.resize_factor, name=f"GTA5 {split} ({cfg.root})",
    )
