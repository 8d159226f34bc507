"""Datasets, augmentation and samplers. ``DATASETS`` maps ``data.dataset`` to its builder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ConfigError, DataError
from . import camvid, ccp, cityscapes, folder, gta5, synthia, voc
from .base import SampleRef, SegmentationDataset, image_size, read_id_list
from .tags import with_tags
from ..paths import data_dir, dataset_root, resolve_root

DATASETS = {
    "camvid": camvid.build,
    "folder": folder.build,
    "voc": voc.build,
    "cityscapes": cityscapes.build,
    "gta5": gta5.build,
    "synthia": synthia.build,
    "ccp": ccp.build,
}

SPLITS_DIR = Path(__file__).resolve().parent.parent / "splits"


def register(name: str, builder) -> None:
    DATASETS[name] = builder


def resolve_split_file(path: str) -> Path:
    """A split file given as a path, or relative to the package's shipped ``splits/`` folder."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_absolute() and (SPLITS_DIR / p).is_file():
        return SPLITS_DIR / p
    raise DataError(f"split file not found: {path} (looked in . and {SPLITS_DIR})")


def build_dataset(data_cfg, split: str) -> SegmentationDataset:
    """One split of ``data.dataset``, with ``data.root`` resolved (:mod:`u2plus.paths`)."""
    try:
        builder = DATASETS[data_cfg.dataset]
    except KeyError:
        raise ConfigError(
            f"data.dataset={data_cfg.dataset!r} is not one of {', '.join(sorted(DATASETS))}"
        ) from None
    if data_cfg.dataset != "folder":  # folder datasets name their own image and mask folders
        data_cfg = data_cfg.copy()
        data_cfg.root = str(dataset_root(data_cfg.dataset, data_cfg.root))
    ds = builder(data_cfg, split)
    ds.resize = tuple(data_cfg.resize) if data_cfg.get("resize") else None
    if ds.num_classes != data_cfg.num_classes:
        raise ConfigError(
            f"data.num_classes={data_cfg.num_classes} but {ds.name} has {ds.num_classes} classes"
        )
    return ds


def _labeled_images(data_cfg, full: SegmentationDataset) -> SegmentationDataset:
    """The training split ``full``, restricted to ``data.labeled`` when set (never empty)."""
    if data_cfg.labeled:
        path = resolve_split_file(data_cfg.labeled)
        labeled = full.subset(read_id_list(path), source=str(path))
    else:
        labeled = full
    if len(labeled) == 0:
        raise DataError(f"the labeled set is empty ({data_cfg.labeled or data_cfg.train_split})")
    return labeled


def tagged_images(data_cfg) -> SegmentationDataset:
    """``data.supervision: tags``: the training images with their image-level tags
    (:mod:`u2plus.data.tags`), masks kept where they exist (for :func:`cam_quality_set`)."""
    full = build_dataset(data_cfg, data_cfg.train_split)
    known = set(full.ids()) | set(build_dataset(data_cfg, data_cfg.val_split).ids())
    return with_tags(_labeled_images(data_cfg, full), data_cfg.tags, known)


def cam_quality_set(data_cfg) -> Optional[SegmentationDataset]:
    """The tagged training images that have a mask: where the CAM pseudo-labels are scored
    (None when there is none)."""
    images = tagged_images(data_cfg)
    scored = images.with_items([it for it in images.items if it.mask is not None])
    return scored if len(scored) else None


def build_train_sets(data_cfg, semi_supervised: bool) -> tuple[SegmentationDataset, Optional[SegmentationDataset]]:
    """The labeled training set and (for semi-supervised methods) the unlabeled one; with
    ``data.supervision: tags`` the tagged training images (masks dropped: never trained on) alone.

    Raises a DataError naming the split file for unknown ids and for an empty set.
    """
    if data_cfg.supervision == "tags":
        return tagged_images(data_cfg).without_masks(), None
    full = build_dataset(data_cfg, data_cfg.train_split)
    labeled = _labeled_images(data_cfg, full)
    if not labeled.has_masks:
        missing = next(it for it in labeled.items if it.mask is None)
        raise DataError(f"labeled image {missing.image} has no mask")
    if not semi_supervised:
        return labeled, None
    if data_cfg.unlabeled:
        path = resolve_split_file(data_cfg.unlabeled)
        unlabeled = full.subset(read_id_list(path), source=str(path))
    elif data_cfg.dataset == "folder" and data_cfg.unlabeled_images:
        unlabeled = build_dataset(data_cfg, "unlabeled")
    else:
        taken = set(labeled.ids())
        unlabeled = full.with_items([it for it in full.items if it.id not in taken])
    if len(unlabeled) == 0:
        source = (f"split file {resolve_split_file(data_cfg.unlabeled)}" if data_cfg.unlabeled else
                  f"every image of {full.name} is in the labeled list {data_cfg.labeled or '(all)'}")
        raise DataError(f"the unlabeled set is empty: {source}")
    # Masks of unlabeled images are never trained on; where every unlabeled image has one
    # (e.g. CamVid partitions) they are kept for diagnostics (pseudo-label precision).
    return labeled, unlabeled if unlabeled.has_masks else unlabeled.without_masks()


def check_crop_fits(data_cfg, dataset: SegmentationDataset, samples: int = 8) -> None:
    """ConfigError unless some of the first ``samples`` images, after the dataset's fixed
    pre-resize (``resize_factor``, or the fixed ``resize`` of ``data.resize`` or a domain's) and
    the largest ``data.scale_range`` factor, can fill ``data.crop_size`` (else every crop would
    be mostly padding)."""
    crop_h, crop_w = data_cfg.crop_size
    scale = data_cfg.scale_range[1]
    reach = []
    for ref in dataset.items[:samples]:
        w, h = image_size(ref.image)
        h, w = dataset.resize if dataset.resize else (h * dataset.resize_factor, w * dataset.resize_factor)
        reach.append((round(h * scale), round(w * scale), ref.image))
        if reach[-1][0] >= crop_h and reach[-1][1] >= crop_w:
            return
    h, w, image = max(reach, key=lambda r: r[0] * r[1])
    resized = (f"resized to {list(dataset.resize)}" if dataset.resize
               else f"x data.resize_factor={dataset.resize_factor:g}")
    raise ConfigError(f"data.crop_size={[crop_h, crop_w]} cannot be filled: images such as {image} reach at most "
                      f"[{h}, {w}] ({resized} x data.scale_range max {scale:g}); use a crop of at most "
                      f"[{h}, {w}] or raise data.scale_range")


# the streams and evaluation sets build on the functions above
from .domains import STREAMS, build_eval_sets, build_stream_sets, check_same_classes, eval_data_cfg  # noqa: E402

__all__ = [
    "DATASETS", "STREAMS", "SampleRef", "SegmentationDataset", "build_dataset", "build_eval_sets",
    "build_stream_sets", "build_train_sets", "cam_quality_set", "check_crop_fits", "check_same_classes", "data_dir",
    "eval_data_cfg", "read_id_list", "register", "resolve_root", "resolve_split_file", "tagged_images",
]
