"""Rare class sampling (RCS; DAFormer, Hoyer et al. 2022, Sec. 3.3) from source class
statistics cached beside the data.

A source image is drawn by first drawing a class ``c`` with probability
``P(c) = softmax_c((1 - f_c) / T)``, ``f_c`` the share of class ``c`` among the labelled source
pixels and ``T`` the temperature (0.01), then an image uniformly among those with at least
``min_pixels`` pixels of ``c``. Classes without such an image are left out of the softmax (as in
DAFormer, which samples only classes that occur). Per-image class pixel counts are computed once
and cached as a small JSON file beside the labels, holding a checksum of the label list (relative
paths and byte sizes): a cache whose checksum no longer matches is recomputed, a corrupt one is
an error naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import SegmentationDataset

CACHE_VERSION = 1


@dataclass
class ClassSampling:
    """What :class:`~u2plus.data.sampler.RareClassBatchSampler` draws from."""

    class_probs: torch.Tensor  # [C] float64, 0 for classes that cannot be drawn
    eligible: torch.Tensor  # [N, C] bool: image n has at least min_pixels of class c


def rare_class_probabilities(class_pixels: torch.Tensor, temperature: float,
                             drawable: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax_c((1 - f_c) / T)`` over the ``drawable`` classes (default: those with pixels),
    ``f_c = class_pixels[c] / sum(class_pixels)``; 0 elsewhere. float64 ``[C]``."""
    pixels = class_pixels.double()
    drawable = pixels > 0 if drawable is None else drawable & (pixels > 0)
    if not bool(drawable.any()):
        raise DataError("rare class sampling: no class has any labelled source pixel")
    freq = pixels / pixels.sum()
    logits = torch.where(drawable, (1.0 - freq) / temperature, torch.full_like(freq, -torch.inf))
    return logits.softmax(0)


def label_list_checksum(dataset: SegmentationDataset, base: Path) -> str:
    """SHA-1 of the label mapping (ignore index, lookup table) and of the masks' paths (relative to
    ``base``), byte sizes and modification times, in the dataset's order: a relabelled mask or a
    changed mapping makes the cached counts stale."""
    h = hashlib.sha1(f"ignore {dataset.ignore_index}\n".encode())
    if dataset.label_map is not None:
        h.update(np.ascontiguousarray(dataset.label_map).tobytes())
    for ref in dataset.items:
        st = Path(ref.mask).stat()
        h.update(f"{os.path.relpath(ref.mask, base)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_path(dataset: SegmentationDataset) -> Path:
    """Beside the labels (their common folder), named after the list of label files."""
    masks = [os.path.abspath(ref.mask) for ref in dataset.items]
    folder = Path(os.path.commonpath([os.path.dirname(m) for m in masks]))
    selection = hashlib.sha1("\n".join(os.path.relpath(m, folder) for m in masks).encode()).hexdigest()[:12]
    return folder / f"u2plus_class_stats_{selection}.json"


def _read_cache(path: Path, checksum: str, num_images: int, num_classes: int) -> torch.Tensor | None:
    """The cached ``[N, C]`` counts; None when absent or stale; DataError when corrupt."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        stale = data["checksum"] != checksum
        counts = torch.tensor(data["counts"], dtype=torch.long)
        if data["version"] != CACHE_VERSION or tuple(counts.shape) != (data["num_images"], data["num_classes"]):
            raise ValueError("counts do not match num_images x num_classes")
        if bool((counts < 0).any()):
            raise ValueError("negative pixel counts")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise DataError(f"class statistics cache {path} is corrupt ({e}); delete it to recompute") from None
    if stale or tuple(counts.shape) != (num_images, num_classes):
        print(f"class statistics cache {path} is stale (the label files changed): recomputing")
        return None
    return counts


def class_statistics(dataset: SegmentationDataset) -> torch.Tensor:
    """``[N, C]`` pixels of each class per image of a labeled dataset, read from the cache beside
    the labels or computed (every mask read once) and cached there. An unwritable folder only
    costs the cache."""
    if not dataset.has_masks:
        missing = next(ref for ref in dataset.items if ref.mask is None)
        raise DataError(f"rare class sampling needs source labels: {missing.image} has none")
    path = cache_path(dataset)
    checksum = label_list_checksum(dataset, path.parent)
    counts = _read_cache(path, checksum, len(dataset), dataset.num_classes)
    if counts is None:
        counts = dataset.per_image_class_counts("rare class sampling")
        data = {"version": CACHE_VERSION, "checksum": checksum, "num_images": len(dataset),
                "num_classes": dataset.num_classes, "counts": counts.tolist()}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as e:
            print(f"class statistics not cached ({path}: {e.strerror or e})")
    return counts


def rare_class_sampling(dataset: SegmentationDataset, temperature: float, min_pixels: int) -> ClassSampling:
    """The RCS distribution of a labeled dataset (module docstring)."""
    counts = class_statistics(dataset)
    eligible = counts >= max(min_pixels, 1)
    return ClassSampling(rare_class_probabilities(counts.sum(0), temperature, eligible.any(0)), eligible)
