"""SYNTHIA-RAND-CITYSCAPES: ``RGB/*.png`` images and ``GT/LABELS/*.png`` labels matched by name.

Labels are 16-bit PNGs holding the SYNTHIA class id in the first channel. Pillow truncates
16-bit RGB PNGs to their high byte, so they are decoded with ``torchvision.io`` instead. Ids map
to the 19 Cityscapes train ids (:data:`SYNTHIA_TO_TRAIN_ID`); SYNTHIA has no terrain, truck or
train, so results are reported as mIoU over :data:`SYNTHIA_16` (and often the 13 without wall,
fence, pole). Training source only: its one split is ``train``. Ids are file stems.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_png

from ..errors import DataError
from .base import SampleRef, SegmentationDataset, list_images, require_dir
from .cityscapes import CLASSES, apply_map, lookup_table

# SYNTHIA class id -> Cityscapes train id (standard DA mapping); every other id is void.
SYNTHIA_TO_TRAIN_ID = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 10,
    10: 11, 17: 12, 8: 13, 19: 15, 12: 17, 11: 18,
}
# Train ids of the 16 classes SYNTHIA has (mIoU16).
SYNTHIA_16 = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)


def label_map(ignore_index: int = 255) -> np.ndarray:
    """SYNTHIA id (any 16-bit value) -> Cityscapes train id or ``ignore_index``."""
    return lookup_table(SYNTHIA_TO_TRAIN_ID, ignore_index, size=1 << 16)


def read_label_png16(path: Path) -> np.ndarray:
    """First channel of an 8- or 16-bit PNG as int64 [H, W], all 16 bits kept."""
    try:
        data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (pinned here)
            warnings.simplefilter("ignore", DeprecationWarning)
            label = decode_png(data, mode=ImageReadMode.UNCHANGED)[0]
    except FileNotFoundError:
        raise DataError(f"mask not found: {path}") from None
    except (RuntimeError, ValueError, OSError) as e:
        raise DataError(f"cannot decode mask {path}: {e}") from None
    return label.to(torch.int64).numpy()


class SynthiaDataset(SegmentationDataset):
    def load_mask(self, path: Path) -> np.ndarray:
        return apply_map(read_label_png16(path), self.label_map, path)


def list_split(root: str | Path, split: str) -> list[SampleRef]:
    root = Path(root)
    if split != "train":
        raise DataError(
            f"SYNTHIA has no '{split}' split (only 'train'); evaluate on Cityscapes"
        )
    images = list_images(require_dir(root / "RGB", "SYNTHIA image folder"))
    if not images:
        raise DataError(f"no images found in {root / 'RGB'}")
    labels = root / "GT" / "LABELS"
    has_labels = labels.is_dir()
    return [SampleRef(p.stem, p, (labels / f"{p.stem}.png") if has_labels else None) for p in images]


def build(cfg, split: str) -> SegmentationDataset:
    return SynthiaDataset(
        list_split(cfg.root, split), CLASSES, cfg.ignore_index, label_map(cfg.ignore_index),
        cfg.resize_factor, name=f"SYNTHIA {split} ({cfg.root})",
    )
