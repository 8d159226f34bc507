"""Image-level labels (``data.supervision: tags``, the weakly-supervised setting, paper Sec. 3.7).

A tag-supervised training sample carries ``tags``: a float multi-hot vector ``[C]`` over the
dataset's train ids. **Background (train id 0) is always 1**: every image is taken to contain
background (VOC and CCP both have it at 0), so the vector is indexed by class id like a mask,
and the classification head covers the ``C - 1`` foreground classes, ``tags[1:]``.

Where the tags come from, first match wins:

1. ``data.tags``: a JSON file ``{"image id": [train ids, ...]}`` (background may be listed or not);
2. the dataset's own tag file (CCP: ``tags.json``, mapped to the chosen label mode);
3. the image's mask (VOC 2012 + SBD: the classes present in ``SegmentationClassAug``), read once
   before training.

Bad input is one :class:`DataError` line naming the file and the image: a tag outside
``0..C-1``, a training image without an entry, a tag file naming images that do not exist.
The training set then drops its masks (they are never trained on); the training images that have
one are the CAM-quality set (:func:`cam_quality_set`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from ..errors import DataError
from .base import BACKGROUND, SegmentationDataset, tag_vector

__all__ = ["BACKGROUND", "check_tags", "read_tags_file", "tag_vector", "tags_from_masks", "with_tags"]


def read_tags_file(path: str | Path, what: str = "tags file (data.tags)") -> dict[str, list[int]]:
    """``{"id": [class ids]}`` from a JSON file; a DataError names the file when it is not one."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"cannot parse tags file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise DataError(f"tags file {path} must map image ids to lists of class ids")
    out = {}
    for image_id, tags in raw.items():
        if not isinstance(tags, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tags):
            raise DataError(f"{path}: image {image_id} has tags {tags!r}, expected a list of class ids")
        out[str(image_id)] = tags
    return out


def check_tags(tags: Mapping[str, list[int]], num_classes: int, source: str,
               known_ids: Optional[Iterable[str]] = None) -> None:
    """Every tag in ``0..C-1``; with ``known_ids``, every tagged image among them."""
    for image_id, classes in tags.items():
        bad = [c for c in classes if not 0 <= int(c) < num_classes]
        if bad:
            raise DataError(f"{source}: image {image_id} has tag {bad[0]} outside the classes 0..{num_classes - 1}")
    if known_ids is not None:
        unknown = sorted(set(tags) - set(known_ids))
        if unknown:
            more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
            raise DataError(f"{source} names {len(unknown)} image(s) that do not exist: "
                            f"{', '.join(unknown[:3])}{more}")


def tags_from_masks(dataset: SegmentationDataset, workers: int = 4) -> dict[str, list[int]]:
    """The classes present in each image's mask (every image must have one)."""
    missing = next((it for it in dataset.items if it.mask is None), None)
    if missing is not None:
        raise DataError(f"image {missing.image} ({dataset.name}) has no tag entry: no data.tags file, no tag file "
                        "of the dataset and no mask to derive its tags from")

    def present(ref) -> list[int]:
        values = np.unique(dataset.load_mask(ref.mask))
        return [int(v) for v in values if 0 <= v < dataset.num_classes]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(dataset.ids(), pool.map(present, dataset.items)))


def with_tags(dataset: SegmentationDataset, tags_file: Optional[str], known_ids: Iterable[str]) -> SegmentationDataset:
    """``dataset`` whose samples carry ``tags`` (see the module docstring for the sources);
    every image must have an entry. ``known_ids``: the ids of every image of the dataset, which a
    ``data.tags`` file may name."""
    if tags_file:
        tags, source = read_tags_file(tags_file), f"tags file {tags_file}"
        check_tags(tags, dataset.num_classes, source, known_ids)
    elif dataset.available_tags is not None:
        tags, source = dataset.available_tags, dataset.available_tags_source
    else:
        tags, source = tags_from_masks(dataset), f"the masks of {dataset.name}"
    missing = next((it for it in dataset.items if it.id not in tags), None)
    if missing is not None:
        raise DataError(f"{source}: no entry for image {missing.id} ({missing.image})")
    out = dataset.with_items(dataset.items)
    out.tags = {it.id: list(tags[it.id]) for it in dataset.items}
    return out
