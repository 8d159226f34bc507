"""Seeded labeled / unlabeled partitions of a training set, and the ``u2plus splits`` command.

``make_partition(ids, "1/8", seed=0)`` shuffles the sorted ids with ``random.Random(seed)`` and
labels the first ``round(len(ids) * 1/8)`` (at least one; Python's round, halves to even), so a
partition depends only on the id set, the fraction and the seed. Both lists come back sorted.
"""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, DataError


def parse_labeled(labeled: str | int | float) -> Fraction | int:
    """``"1/8"`` / ``0.125`` / ``"0.125"`` -> a Fraction in (0, 1]; ``46`` / ``"46"`` -> a count."""
    if isinstance(labeled, bool):
        raise ConfigError(f"labeled={labeled!r} must be a fraction like 1/8 or an image count")
    if isinstance(labeled, int):
        value: Fraction | int = labeled
    elif isinstance(labeled, float):
        value = Fraction(labeled)
    else:
        text = str(labeled).strip()
        try:
            value = int(text) if text.lstrip("+-").isdigit() else Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"labeled={labeled!r} is neither a fraction (1/8, 0.125) nor an image count"
            ) from None
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"labeled={labeled!r}: the labeled count must be at least 1")
    elif not 0 < value <= 1:
        raise ConfigError(f"labeled={labeled!r}: the labeled fraction must be in (0, 1]")
    return value


def make_partition(ids: Sequence[str], labeled: str | int | float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``ids`` into (labeled, unlabeled), both sorted; see the module docstring."""
    ids = list(ids)
    if not ids:
        raise DataError("cannot partition an empty id list")
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise DataError(f"the id list holds duplicates (e.g. {dup})")
    value = parse_labeled(labeled)
    if isinstance(value, int):
        if value > len(ids):
            raise ConfigError(f"labeled={labeled!r}: more than the {len(ids)} images available")
        count = value
    else:
        count = max(1, round(len(ids) * value))
    pool = sorted(ids)
    random.Random(seed).shuffle(pool)
    return sorted(pool[:count]), sorted(pool[count:])


def _write_ids(path: Path, ids: Sequence[str]) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def write_partition(out_dir: str | Path, labeled_ids: Sequence[str], unlabeled_ids: Sequence[str]) -> tuple[Path, Path]:
    """Write ``labeled.txt`` and ``unlabeled.txt`` (one id a line) into ``out_dir``; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "labeled.txt", out / "unlabeled.txt"
    _write_ids(paths[0], labeled_ids)
    _write_ids(paths[1], unlabeled_ids)
    return paths


def splits_command(dataset_cfg, labeled: str | int | float, seed: int, out_dir: str | Path) -> tuple[int, int]:
    """``u2plus splits``: partition the training split of ``dataset_cfg`` (the ``data`` config
    section) and write the two files; returns (labeled count, unlabeled count).

    Labeled ids are drawn from the training images that have a mask; images without one (VOC
    classic's SBD extras) always go to the unlabeled list.
    """
    from . import build_dataset  # late import: the package's __init__ imports the datasets

    ds = build_dataset(dataset_cfg, dataset_cfg.train_split)
    with_mask = [it.id for it in ds.items if it.mask is not None]
    if not with_mask:
        raise DataError(f"{ds.name} has no image with a mask to label")
    lab, unl = make_partition(with_mask, labeled, seed)
    unl = sorted(unl + [it.id for it in ds.items if it.mask is None])
    write_partition(out_dir, lab, unl)
    return len(lab), len(unl)
