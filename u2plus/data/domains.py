"""The training sets a method's streams name, and the evaluated sets.

Streams: ``labeled`` and ``unlabeled`` (semi-supervised: one dataset, ``data.*``, split by the
labeled/unlabeled id lists), ``source`` and ``target`` (domain-adaptive: ``data.source`` and
``data.target``, each ``data`` with its own keys replaced, see
:class:`u2plus.config.DomainConfig`). A labeled stream (``labeled``, ``source``) needs masks; the
target's masks are dropped before training: they only evaluate. Evaluation runs on the target's
val split when there is a target (and on the source's val split as a second set when it has
one), else on ``data.val_split``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, DataError
from . import build_dataset, build_train_sets, read_id_list, resolve_split_file
from .base import SegmentationDataset
from .rare_class import rare_class_sampling

# keys of data.source / data.target that replace data's keys of the same name
DOMAIN_DATA_KEYS = ("dataset", "root", "val_split", "resize_factor", "resize", "class_names", "images", "masks",
                    "val_images", "val_masks")


@dataclass(frozen=True)
class Stream:
    labeled: bool  # trained on its masks (else: the strong view, and masks never trained on)
    batch_key: str  # data.<batch_key>: its global batch


STREAMS = {"labeled": Stream(True, "batch_size"), "unlabeled": Stream(False, "unlabeled_batch_size"),
           "source": Stream(True, "batch_size"), "target": Stream(False, "unlabeled_batch_size")}


def is_domain_adaptive(data_cfg) -> bool:
    return data_cfg.target.dataset is not None


def domain_data_cfg(data_cfg, domain: str):
    """``data`` with the keys set in ``data.<domain>`` replaced (a domain's root defaults to its
    dataset's name, the folder ``u2plus data prepare`` fills)."""
    dom = data_cfg[domain]
    if dom.dataset is None:
        raise ConfigError(f"data.{domain}.dataset is not set: the domain-adaptive methods and evaluation "
                          f"need data.source and data.target (dataset, root, splits, ...)")
    out = data_cfg.copy()
    for key in DOMAIN_DATA_KEYS:
        if dom[key] is not None:
            out[key] = dom[key]
    out.root = dom.root or dom.dataset
    return out


def domain_split(data_cfg, domain: str, split: str) -> SegmentationDataset:
    """One split of a domain, keeping the ids that start with one of ``data.<domain>.prefixes``."""
    try:
        ds = build_dataset(domain_data_cfg(data_cfg, domain), split)
    except ConfigError as e:
        raise ConfigError(f"data.{domain}: {e}") from None
    prefixes = data_cfg[domain].prefixes
    if prefixes:
        ds = ds.with_items([it for it in ds.items if it.id.startswith(tuple(prefixes))])
    if len(ds) == 0:
        raise DataError(f"data.{domain}: {ds.name} has no images"
                        + (f" starting with {', '.join(prefixes)} (data.{domain}.prefixes)" if prefixes else ""))
    return ds


def domain_train_set(data_cfg, domain: str) -> SegmentationDataset:
    """The domain's training splits joined, restricted to ``data.<domain>.ids`` when given."""
    dom = data_cfg[domain]
    parts = [domain_split(data_cfg, domain, split) for split in dom.splits]
    ds = parts[0].with_items([it for part in parts for it in part.items])
    if dom.ids:
        path = resolve_split_file(dom.ids)
        ds = ds.subset(read_id_list(path), source=f"data.{domain}.ids={path}")
        if len(ds) == 0:
            raise DataError(f"data.{domain}.ids={path} lists no image")
    ds.name = f"data.{domain} ({' + '.join(part.name for part in parts)})"
    return ds


def source_set(data_cfg) -> SegmentationDataset:
    ds = domain_train_set(data_cfg, "source")
    unlabeled = [it for it in ds.items if it.mask is None]
    if unlabeled:
        raise DataError(f"{ds.name}: the source domain must be labeled, but {len(unlabeled)} of its images have "
                        f"no label (first: {unlabeled[0].image})")
    dom = data_cfg.source
    if dom.rcs_temperature is not None:
        ds.class_sampling = rare_class_sampling(ds, dom.rcs_temperature, dom.rcs_min_pixels)
    return ds


def build_stream_sets(data_cfg, streams) -> dict[str, SegmentationDataset]:
    """The training set of each stream, in the order given."""
    unknown = [s for s in streams if s not in STREAMS]
    if unknown:
        raise ConfigError(f"unknown data stream(s) {unknown}: not one of {', '.join(STREAMS)}")
    sets = {}
    if "labeled" in streams:
        sets["labeled"], sets["unlabeled"] = build_train_sets(data_cfg, "unlabeled" in streams)
    if "source" in streams:
        sets["source"] = source_set(data_cfg)
    if "target" in streams:  # labels dropped here: the target trains unlabeled
        sets["target"] = domain_train_set(data_cfg, "target").without_masks()
    return {s: sets[s] for s in streams}


def build_eval_sets(data_cfg, split: str | None = None) -> dict[str, SegmentationDataset]:
    """The evaluated sets, the headline first: ``{"target": ..., "source": ...}`` (the source
    only with a ``val_split``) in the domain-adaptive setting, else ``{data.val_split: ...}``.
    ``split`` evaluates that split (of the target) alone."""
    if not is_domain_adaptive(data_cfg):
        split = split or data_cfg.val_split
        return {split: build_dataset(data_cfg, split)}
    sets = {"target": domain_split(data_cfg, "target", split or data_cfg.target.val_split or data_cfg.val_split)}
    if split is None and data_cfg.source.dataset is not None and data_cfg.source.val_split:
        sets["source"] = domain_split(data_cfg, "source", data_cfg.source.val_split)
    for name, ds in sets.items():
        unlabeled = [it for it in ds.items if it.mask is None]
        if unlabeled:
            raise DataError(f"data.{name}: {ds.name} is evaluated but {len(unlabeled)} of its images have no label "
                            f"(first: {unlabeled[0].image})")
    return sets


def eval_data_cfg(data_cfg):
    """The data settings of the evaluated domain (the target's, or ``data``'s), e.g. for prediction."""
    return domain_data_cfg(data_cfg, "target") if is_domain_adaptive(data_cfg) else data_cfg


def check_same_classes(datasets: dict[str, SegmentationDataset]) -> None:
    """Every set (named by its stream or evaluated set) must have the class set of the first:
    source and target alike."""
    def key(name: str) -> str:
        return f"data.{name.split()[-1]}" if name.split()[-1] in ("source", "target") else "data"

    (first_name, first), *others = datasets.items()
    for name, ds in others:
        if list(ds.class_names) != list(first.class_names):
            raise ConfigError(f"{key(name)}: {ds.name} has the classes {ds.class_names} but {key(first_name)}: "
                              f"{first.name} has {first.class_names}; source and target need the same class set")
