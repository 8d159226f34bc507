"""Cityscapes (fine annotations): ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` images and
``gtFine/{split}/{city}/*_gtFine_labelTrainIds.png`` labels (19 train ids, 255 = void).

Where a ``*_labelTrainIds.png`` file is absent, the raw ``*_gtFine_labelIds.png`` is read and
mapped on the fly with :data:`LABEL_ID_TO_TRAIN_ID` (the official 34 -> 19 table; every other
id, license plate -1 included, is void). The choice is made per file, so a partly converted tree
works. Ids are the image paths relative to the root, as in the shipped split files
(``leftImg8bit/train/hamburg/hamburg_000000_080169_leftImg8bit.png``).

This module owns the label-id table; GTA5 (whose labels are Cityscapes label ids) imports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import SampleRef, SegmentationDataset, read_label_png, require_dir

CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic_light", "traffic_sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# Official cityscapesScripts labels.py: label id -> train id, for the 19 evaluated classes.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"


def lookup_table(mapping: dict[int, int], ignore_index: int = 255, size: int = 256) -> np.ndarray:
    """A lookup table raw value -> train id: ``mapping`` where given, ``ignore_index`` elsewhere."""
    lut = np.full(size, ignore_index, dtype=np.int64)
    lut[list(mapping)] = list(mapping.values())
    return lut


def label_id_map(ignore_index: int = 255) -> np.ndarray:
    """Cityscapes label id (0..255 as stored in 8-bit PNGs) -> train id or ``ignore_index``."""
    return lookup_table(LABEL_ID_TO_TRAIN_ID, ignore_index)


def train_id_map(ignore_index: int = 255) -> np.ndarray:
    """``*_labelTrainIds.png`` values: kept as they are, 255 -> ``ignore_index``.

    Values 19..254 stay themselves so that :meth:`SegmentationDataset.check_files` reports them.
    """
    lut = np.arange(256, dtype=np.int64)
    lut[255] = ignore_index
    return lut


def apply_map(raw: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    """``lut[raw]`` with a DataError naming ``path`` for values outside the table."""
    if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
        raise DataError(f"mask {path} has label value {int(raw.max())} outside the dataset's label ids")
    return lut[raw]


class CityscapesDataset(SegmentationDataset):
    """Decides per mask file whether it holds train ids or label ids."""

    def load_mask(self, path: Path) -> np.ndarray:
        if Path(path).name.endswith(LABEL_IDS_SUFFIX):
            return apply_map(read_label_png(path), self.label_id_lut, path)
        return super().load_mask(path)


def mask_for(root: Path, image: Path) -> Path | None:
    """The label file of one image: labelTrainIds if present, else labelIds, else None."""
    rel = image.relative_to(root / "leftImg8bit")
    base = root / "gtFine" / rel.parent / rel.name[: -len(IMAGE_SUFFIX)]
    for suffix in (TRAIN_IDS_SUFFIX, LABEL_IDS_SUFFIX):
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def list_split(root: str | Path, split: str) -> list[SampleRef]:
    root = Path(root)
    folder = require_dir(root / "leftImg8bit" / split, f"Cityscapes split folder '{split}'")
    images = sorted(folder.rglob(f"*{IMAGE_SUFFIX}"))
    if not images:
        raise DataError(f"no *{IMAGE_SUFFIX} images in {folder}")
    return [SampleRef(p.relative_to(root).as_posix(), p, mask_for(root, p)) for p in images]


def build(cfg, split: str) -> SegmentationDataset:
    ds = CityscapesDataset(
        list_split(cfg.root, split), CLASSES, cfg.ignore_index, train_id_map(cfg.ignore_index),
        cfg.resize_factor, name=f"Cityscapes {split} ({cfg.root})",
    )
    ds.label_id_lut = label_id_map(cfg.ignore_index)
    return ds
