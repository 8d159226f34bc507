"""Seeded labeled/unlabeled partitions, their files, and the shipped CamVid partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from u2plus.config import DataConfig
from u2plus.data import SPLITS_DIR, build_train_sets, read_id_list
from u2plus.data.splits import make_partition, parse_labeled, splits_command, write_partition
from u2plus.errors import ConfigError, DataError

CAMVID = Path(__file__).parents[2].parent / "shared/data/camvid"
IDS = [f"img_{i:04d}" for i in range(367)]


def test_counts_disjoint_and_complete():
    for labeled, count in (("1/8", 46), ("1/4", 92), ("1/2", 184), (0.125, 46), ("0.125", 46),
                           (10, 10), ("10", 10), ("1/1", 367), (1e-6, 1)):
        lab, unl = make_partition(IDS, labeled, seed=0)
        assert len(lab) == count, labeled
        assert lab == sorted(lab) and unl == sorted(unl)
        assert not set(lab) & set(unl) and sorted(lab + unl) == IDS


def test_deterministic_and_independent_of_input_order():
    a = make_partition(IDS, "1/8", seed=0)
    assert make_partition(list(reversed(IDS)), "1/8", seed=0) == a
    assert make_partition(IDS, "1/8", seed=1) != a
    assert make_partition(IDS, "1/4", seed=0)[0] != a[0]


@pytest.mark.parametrize("bad", ["0", "3/2", "-1/8", "abc", "1/0", 0, -3, 0.0, 1.5, True])
def test_bad_labeled_values(bad):
    with pytest.raises(ConfigError, match="labeled="):
        make_partition(IDS, bad, seed=0)


def test_count_larger_than_the_id_list_and_empty_list():
    with pytest.raises(ConfigError, match="more than the 367 images"):
        make_partition(IDS, 368, seed=0)
    with pytest.raises(DataError, match="empty id list"):
        make_partition([], "1/8", seed=0)
    with pytest.raises(DataError, match="duplicates"):
        make_partition(["a", "b", "a"], 1, seed=0)
    assert parse_labeled("1/8") == parse_labeled(0.125)


def test_write_partition(tmp_path):
    lab, unl = make_partition(IDS[:5], 2, seed=3)
    paths = write_partition(tmp_path / "out/x", lab, unl)
    assert paths[0].read_text() == "".join(f"{i}\n" for i in lab)
    assert read_id_list(paths[1]) == unl


def test_splits_command_feeds_build_train_sets(tmp_path):
    root = tmp_path / "camvid"
    for d in ("train", "trainannot"):
        (root / d).mkdir(parents=True)
    for i in range(9):
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / f"train/{i}.png")
        Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / f"trainannot/{i}.png")
    c = OmegaConf.structured(DataConfig(dataset="camvid", root=str(root), num_classes=11))
    assert splits_command(c, "1/3", 0, tmp_path / "p") == (3, 6)
    c.labeled, c.unlabeled = str(tmp_path / "p/labeled.txt"), str(tmp_path / "p/unlabeled.txt")
    lab, unl = build_train_sets(c, semi_supervised=True)
    assert (len(lab), len(unl)) == (3, 6)


@pytest.mark.parametrize("frac,count", [("1-8", 46), ("1-4", 92), ("1-2", 184)])
def test_shipped_camvid_partitions(frac, count, tmp_path):
    lab = read_id_list(SPLITS_DIR / f"camvid/{frac}/labeled.txt")
    unl = read_id_list(SPLITS_DIR / f"camvid/{frac}/unlabeled.txt")
    assert len(lab) == count and len(lab) + len(unl) == 367 and not set(lab) & set(unl)
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"real CamVid not at {CAMVID}: cannot regenerate the partition")
    c = OmegaConf.structured(DataConfig(dataset="camvid", root=str(CAMVID), num_classes=11))
    splits_command(c, frac.replace("-", "/"), 0, tmp_path)
    assert read_id_list(tmp_path / "labeled.txt") == lab
    assert read_id_list(tmp_path / "unlabeled.txt") == unl
