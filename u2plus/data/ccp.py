"""Clothing Co-Parsing: ``images/NNNN.jpg``, ``masks/NNNN.png`` (0001-0800, values indexing
``classes.txt``, 0 = ``null``) and ``tags.json`` (image-level labels, background excluded).

The label mode follows ``data.num_classes`` (:data:`LABEL_MODES`):
  * 7, the coarse protocol: 0 background (null, skin, hair and every unlisted class), 1 upper,
    2 outer, 3 lower, 4 dress, 5 footwear, 6 bag (:data:`COARSE_GROUPS`);
  * 59, the raw classes of ``classes.txt``.
The table is built from the class names in ``classes.txt`` at build time.

Splits: ``train`` = images with masks except ``val`` = the held-out ids 0701-0800 and ``test`` =
0801-1004 (kept for final reports; ``u2plus data prepare ccp`` writes them, a benchmark's data
folder may leave them out); ``unlabeled`` (alias ``tags``) = the images without masks (1005-2098,
image-level tags only).
The weakly-supervised protocol (``data.supervision: tags``, configs/ccp/): ``ws_train`` = 0001-0600
(their masks only score the CAMs, never train) and every image without a mask; ``ws_val`` =
0601-0800 (neither holds a test image). With ``data.supervision: tags`` the samples carry the ``tags.json`` labels
(:mod:`u2plus.data.tags`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .base import SampleRef, SegmentationDataset, require_dir
from .tags import check_tags, read_tags_file

COARSE_CLASSES = ("background", "upper", "outer", "lower", "dress", "footwear", "bag")
COARSE_GROUPS = {
    "upper": ("blouse", "shirt", "t-shirt", "top", "sweater", "sweatshirt", "cardigan", "jumper",
              "hoodie", "vest", "bra", "intimate"),
    "outer": ("coat", "jacket", "blazer", "cape", "suit"),
    "lower": ("pants", "jeans", "skirt", "shorts", "leggings"),
    "dress": ("dress", "romper", "bodysuit", "swimwear"),
    "footwear": ("shoes", "boots", "heels", "sandals", "sneakers", "loafers", "pumps", "flats",
                 "clogs", "wedges"),
    "bag": ("bag", "purse", "wallet"),
}
LABEL_MODES = {7: "coarse", 59: "raw"}
VAL_IDS = frozenset(f"{i:04d}" for i in range(701, 801))
WS_VAL_IDS = frozenset(f"{i:04d}" for i in range(601, 801))
TEST_IDS = frozenset(f"{i:04d}" for i in range(801, 1005))


def read_classes(root: str | Path) -> list[str]:
    path = Path(root) / "classes.txt"
    try:
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise DataError(f"CCP class list not found: {path}") from None
    if not names or names[0] != "null":
        raise DataError(f"{path}: the first class must be 'null' (background)")
    return names


def label_mode(num_classes: int) -> str:
    try:
        return LABEL_MODES[num_classes]
    except KeyError:
        raise ConfigError(
            f"data.num_classes={num_classes} is not a CCP label mode: 7 (coarse) or 59 (raw)"
        ) from None


def label_table(root: str | Path, num_classes: int) -> tuple[np.ndarray, list[str]]:
    """(raw class index -> label of the chosen mode, class names of that mode).

    The table has one entry per line of ``classes.txt``, so mask values beyond it are reported.
    """
    names = read_classes(root)
    if label_mode(num_classes) == "raw":
        if len(names) != 59:
            raise DataError(f"{Path(root) / 'classes.txt'} lists {len(names)} classes, expected 59")
        return np.arange(len(names), dtype=np.int64), names
    index = {n: i for i, n in enumerate(names)}
    lut = np.zeros(len(names), dtype=np.int64)
    for label, group in enumerate(COARSE_CLASSES[1:], start=1):
        for name in COARSE_GROUPS[group]:
            if name not in index:
                raise DataError(f"{Path(root) / 'classes.txt'} has no class '{name}' ({group})")
            lut[index[name]] = label
    return lut, list(COARSE_CLASSES)


def image_tags(root: str | Path, num_classes: int) -> dict[str, list[int]]:
    """Image-level labels from ``tags.json`` in the chosen label mode (background dropped,
    unique, sorted). Every tag must index ``classes.txt`` and every id have an image."""
    path = Path(root) / "tags.json"
    raw = read_tags_file(path, "CCP tags")
    lut, _ = label_table(root, num_classes)
    check_tags(raw, len(lut), str(path), known_ids=[p.stem for p in (Path(root) / "images").glob("*.jpg")])
    return {image_id: [int(t) for t in np.unique(lut[np.asarray(tags, dtype=np.int64)]) if t != 0]
            for image_id, tags in raw.items()}


def list_split(root: str | Path, split: str) -> list[SampleRef]:
    root = Path(root)
    images = sorted(require_dir(root / "images", "CCP image folder").glob("*.jpg"))
    masks = root / "masks"
    with_mask = {p.stem for p in masks.glob("*.png")} if masks.is_dir() else set()
    if split != "test":  # the test images belong to no other split
        images = [p for p in images if p.stem not in TEST_IDS]
    if split == "test":
        keep = [p for p in images if p.stem in with_mask and p.stem in TEST_IDS]
    elif split == "train":
        keep = [p for p in images if p.stem in with_mask and p.stem not in VAL_IDS]
    elif split == "val":
        keep = [p for p in images if p.stem in with_mask and p.stem in VAL_IDS]
    elif split in ("unlabeled", "tags"):
        return [SampleRef(p.stem, p, None) for p in images if p.stem not in with_mask]
    elif split == "ws_val":
        keep = [p for p in images if p.stem in with_mask and p.stem in WS_VAL_IDS]
    elif split == "ws_train":
        return [SampleRef(p.stem, p, masks / f"{p.stem}.png" if p.stem in with_mask else None)
                for p in images if p.stem not in WS_VAL_IDS]
    else:
        raise DataError(f"CCP has no split '{split}' (train, val, test, unlabeled, tags, ws_train or ws_val)")
    if not keep:
        raise DataError(f"CCP split '{split}': no images with a mask in {root / 'images'}")
    return [SampleRef(p.stem, p, masks / f"{p.stem}.png") for p in keep]


def build(cfg, split: str) -> SegmentationDataset:
    lut, names = label_table(cfg.root, cfg.num_classes)
    ds = SegmentationDataset(
        list_split(cfg.root, split), names, cfg.ignore_index, lut, cfg.resize_factor,
        name=f"CCP {label_mode(cfg.num_classes)} {split} ({cfg.root})",
    )
    if cfg.supervision == "tags":
        ds.available_tags = image_tags(cfg.root, cfg.num_classes)
        ds.available_tags_source = f"CCP tags {Path(cfg.root) / 'tags.json'}"
    return ds
