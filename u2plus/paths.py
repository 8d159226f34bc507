"""Where datasets live: one data directory and the rule that turns ``data.root`` into a folder.

The data directory is ``$U2PLUS_DATA``, default ``./data``; ``u2plus data prepare NAME`` fills
``<data directory>/NAME``. ``data.root`` resolves, first match wins:

1. an absolute path, or a relative one that exists from the current directory: as given;
2. ``u2plus/...`` (the demo data embedded in the package): inside the installed package, from
   any current directory;
3. anything else: relative to the data directory (``camvid`` -> ``$U2PLUS_DATA/camvid``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError

ENV = "U2PLUS_DATA"
PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # the folder that holds the u2plus package

# datasets with `u2plus data prepare|check` (the keys of u2plus.data.prepare.SOURCES; kept here so
# that the command line need not import the dataset modules)
PREPARABLE = ("camvid", "voc", "cityscapes", "gta5", "synthia", "ccp")
# data.dataset -> the name a user reads
DISPLAY_NAMES = {"camvid": "CamVid", "voc": "PASCAL VOC 2012", "cityscapes": "Cityscapes", "gta5": "GTA5",
                 "synthia": "SYNTHIA", "ccp": "Clothing Co-Parsing"}


def data_dir() -> Path:
    """The data directory: ``$U2PLUS_DATA``, or ``./data`` when unset."""
    return Path(os.environ.get(ENV) or "data")


def use_data_dir_if_unset(path: str | Path) -> None:
    """Point ``U2PLUS_DATA`` at ``path`` when it is unset and ``path`` exists (tests, benchmarks)."""
    if not os.environ.get(ENV) and Path(path).is_dir():
        os.environ[ENV] = str(path)


def resolve_root(root: str | Path, cwd: str | Path = ".") -> Path:
    """The folder ``data.root`` names (rule in the module docstring) for a process started in
    ``cwd``; it need not exist."""
    path = Path(root).expanduser()
    if path.is_absolute() or (Path(cwd) / path).exists():
        return Path(cwd) / path
    if path.parts[:1] == ("u2plus",) and (PACKAGE_PARENT / path).exists():
        return PACKAGE_PARENT / path
    return data_dir() / path


def missing_dataset(dataset: str, path: Path) -> DataError:
    """The one-line error for a dataset folder that does not exist."""
    name = DISPLAY_NAMES.get(dataset, dataset)
    how = (f"prepare it with `u2plus data prepare {dataset}`" if dataset in PREPARABLE
           else "see docs/datasets.md for where to get it")
    return DataError(f"{name} not found at {path}: {how} (datasets live in ${ENV}, default ./data; "
                     "data.root=PATH points elsewhere)")


def dataset_root(dataset: str, root: str | Path) -> Path:
    """``resolve_root(root)``, or the missing-dataset error when that folder does not exist."""
    path = resolve_root(root)
    if not path.is_dir():
        raise missing_dataset(dataset, path)
    return path
