"""Generic dataset: a folder (or list file) of images, optionally with a folder of masks.

Masks are matched to images by relative path stem (``img/a/b.jpg`` <-> ``masks/a/b.png``) and
hold train ids directly (0..C-1, ``ignore_index`` for void). Unlabeled images need no mask.
A list file holds one image path a line (relative to the list file's folder), optionally
followed by a mask path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import DataError
from .base import SampleRef, SegmentationDataset, list_images, read_id_list


def _stem_key(path: Path, base: Path) -> str:
    return str(path.relative_to(base).with_suffix(""))


def list_samples(images: str | Path, masks: Optional[str | Path] = None) -> list[SampleRef]:
    images = Path(images)
    if images.is_file():
        refs = []
        for line in read_id_list(images):
            parts = line.split()
            img = images.parent / parts[0]
            msk = (images.parent / parts[1]) if len(parts) > 1 else None
            refs.append(SampleRef(str(Path(parts[0]).with_suffix("")), img, msk))
        return refs
    if not images.is_dir():
        raise DataError(f"image folder or list file not found: {images}")
    files = list_images(images)
    if not files:
        raise DataError(f"no images found in {images}")
    if masks is None:
        return [SampleRef(_stem_key(p, images), p, None) for p in files]
    masks = Path(masks)
    if not masks.is_dir():
        raise DataError(f"mask folder not found: {masks}")
    by_key = {_stem_key(p, masks): p for p in list_images(masks)}
    refs = []
    for p in files:
        key = _stem_key(p, images)
        if key not in by_key:
            raise DataError(f"no mask for image {p} in {masks} (expected {key}.png)")
        refs.append(SampleRef(key, p, by_key[key]))
    return refs


def build(cfg, split: str) -> SegmentationDataset:
    if split == cfg.train_split:
        images, masks = cfg.images, cfg.masks
    elif split == cfg.val_split:
        images, masks = cfg.val_images, cfg.val_masks
    elif split == "unlabeled":
        images, masks = cfg.unlabeled_images, None
    else:
        raise DataError(f"folder dataset has no split '{split}' (use train, val or unlabeled)")
    if images is None:
        raise DataError(f"folder dataset: no images configured for split '{split}' "
                        "(set data.images / data.val_images / data.unlabeled_images)")
    names = list(cfg.class_names) if cfg.class_names else [f"class_{i}" for i in range(cfg.num_classes)]
    if len(names) != cfg.num_classes:
        raise DataError(f"data.class_names has {len(names)} names but data.num_classes={cfg.num_classes}")
    return SegmentationDataset(
        list_samples(images, masks), names, cfg.ignore_index, None, cfg.resize_factor,
        name=f"folder {images}",
    )
