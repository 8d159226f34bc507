"""The domain-adaptive data: source and target from their own config sections, prefix filters,
target labels dropped before training, the evaluated sets, rare class sampling with its cached
class statistics, and the one-line errors for bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from u2plus.config import load_config
from u2plus.data import build_eval_sets, build_stream_sets, check_same_classes
from u2plus.data.rare_class import (cache_path, class_statistics, label_list_checksum, rare_class_probabilities,
                                    rare_class_sampling)
from u2plus.data.sampler import RareClassBatchSampler, StepBatchSampler
from u2plus.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
DAY, DUSK = ("0006R0_", "0016E5_"), ("0001TP_",)


def camvid_like(root: Path, names: dict[str, list[str]], size=(6, 8)) -> Path:
    """A CamVid layout: ``{split}/`` images and ``{split}annot/`` masks (mask value = its index % 11)."""
    rng = np.random.default_rng(0)
    for split, stems in names.items():
        for i, stem in enumerate(stems):
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / split / f"{stem}.png")
            Image.fromarray(np.full(size, i % 11, dtype=np.uint8)).save(root / f"{split}annot" / f"{stem}.png")
    return root


def da_config(root: Path, *overrides: str):
    return load_config(REPO / "configs/camvid_dusk/daformer.yaml",
                       [f"data.source.root={root}", f"data.target.root={root}", *overrides])


@pytest.fixture
def tree(tmp_path) -> Path:
    return camvid_like(tmp_path / "camvid", {
        "train": ["0001TP_000010", "0001TP_000020", "0006R0_f00010", "0016E5_00010", "0016E5_00020"],
        "val": ["0016E5_07000", "0016E5_07010"]})


def test_source_and_target_streams_with_prefix_filters(tree):
    cfg = da_config(tree, "data.source.rcs_temperature=null")
    sets = build_stream_sets(cfg.data, ("source", "target"))
    assert list(sets) == ["source", "target"]
    assert sorted(sets["source"].ids()) == ["0006R0_f00010", "0016E5_00010", "0016E5_00020", "0016E5_07000",
                                           "0016E5_07010"]  # day images of train + val
    assert sets["source"].has_masks
    assert sets["target"].ids() == ["0001TP_000010", "0001TP_000020"]
    assert all(it.mask is None for it in sets["target"].items)  # target labels never reach training
    evaluated = build_eval_sets(cfg.data)
    assert list(evaluated) == ["target", "source"]  # the headline first
    assert evaluated["target"].ids() == ["0001TP_000010", "0001TP_000020"] and evaluated["target"].has_masks
    assert evaluated["source"].ids() == ["0016E5_07000", "0016E5_07010"]
    assert list(build_eval_sets(cfg.data, "train")) == ["target"]  # u2plus eval --split: the target's split


def test_domain_resize_is_a_fixed_size(tree):
    cfg = da_config(tree, "data.source.rcs_temperature=null", "data.target.resize=[3,5]")
    target = build_eval_sets(cfg.data)["target"]
    sample = target[0]
    assert tuple(sample["image"].shape[-2:]) == (3, 5) and tuple(sample["mask"].shape) == (3, 5)
    assert tuple(build_stream_sets(cfg.data, ("source",))["source"][0]["image"].shape[-2:]) == (6, 8)


def test_empty_target_split_names_the_key(tree):
    cfg = da_config(tree, "data.source.rcs_temperature=null", "data.target.prefixes=[0099XX_]")
    with pytest.raises(DataError, match=r"data.target: .* no images starting with 0099XX_ \(data.target.prefixes\)"):
        build_stream_sets(cfg.data, ("source", "target"))


def test_source_without_labels_is_an_error(tree):
    for folder in (tree / "valannot",):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    cfg = da_config(tree, "data.source.rcs_temperature=null")
    with pytest.raises(DataError, match="the source domain must be labeled, but 2 of its images have no label"):
        build_stream_sets(cfg.data, ("source", "target"))


def test_target_with_another_class_set_is_an_error(tmp_path):
    def folder(name):
        img, msk = tmp_path / name / "img", tmp_path / name / "msk"
        img.mkdir(parents=True)
        msk.mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(img / "a.png")
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(msk / "a.png")
        return img, msk

    overrides = ["data.num_classes=2", "method.name=daformer"]
    for domain, names in (("source", "[road,car]"), ("target", "[road,bus]")):
        img, msk = folder(domain)
        overrides += [f"data.{domain}.dataset=folder", f"data.{domain}.images={img}", f"data.{domain}.masks={msk}",
                      f"data.{domain}.val_images={img}", f"data.{domain}.val_masks={msk}", f"data.{domain}.val_split=val",
                      f"data.{domain}.class_names={names}"]
    cfg = load_config(None, overrides)
    sets = build_stream_sets(cfg.data, ("source", "target"))
    with pytest.raises(ConfigError, match=r"data.target: .* has the classes \['road', 'bus'\] but data.source: .* has \['road', 'car'\]"):
        check_same_classes({**sets, **build_eval_sets(cfg.data)})
    # a target dataset with another class count: the key of the domain in the message
    camvid = camvid_like(tmp_path / "camvid", {"train": ["0001TP_000010"]})
    cfg = load_config(None, [*overrides[:-1], "data.target.dataset=camvid", f"data.target.root={camvid}",
                             "data.target.class_names=null"])
    with pytest.raises(ConfigError, match=r"data.target: data.num_classes=2 but CamVid train .* has 11 classes"):
        build_stream_sets(cfg.data, ("source", "target"))


def test_missing_domain_section_names_the_key():
    cfg = load_config(None, ["method.name=daformer"])
    with pytest.raises(ConfigError, match="data.source.dataset is not set"):
        build_stream_sets(cfg.data, ("source", "target"))
    with pytest.raises(ConfigError, match=r"data.source.rcs_temperature=0.0 must be a finite number > 0"):
        load_config(None, ["data.source.rcs_temperature=0"])


# ---- rare class sampling ---------------------------------------------------------------------

def test_rare_class_probabilities_follow_the_formula():
    pixels = torch.tensor([700, 200, 90, 10, 0])
    p = rare_class_probabilities(pixels, temperature=0.01)
    f = pixels.double() / 1000
    expected = torch.exp((1 - f[:4]) / 0.01) / torch.exp((1 - f[:4]) / 0.01).sum()
    assert torch.allclose(p[:4], expected) and p[4] == 0  # a class without pixels is never drawn
    assert p.argmax() == 3 and p[3] > p[2] > p[1] > p[0]
    uniform = rare_class_probabilities(pixels, temperature=1e6)
    assert torch.allclose(uniform[:4], torch.full((4,), 0.25, dtype=torch.float64), atol=1e-6)
    # a class without an eligible image is left out of the softmax
    assert rare_class_probabilities(pixels, 0.01, torch.tensor([True, True, True, False, False]))[3] == 0


def test_rare_class_sampler_draws_classes_then_eligible_images():
    # 6 images; class 0 everywhere, class 1 in images 4 and 5 only
    counts = torch.tensor([[100, 0], [100, 0], [100, 0], [100, 0], [60, 40], [90, 10]])
    from u2plus.data.rare_class import ClassSampling

    eligible = counts >= 20
    probs = rare_class_probabilities(counts.sum(0), 0.5, eligible.any(0))
    sampler = RareClassBatchSampler(ClassSampling(probs, eligible), global_batch=4, seed=3)
    drawn = torch.tensor([i for step in range(1000) for i, _ in sampler.batch_for_step(step)])
    # P(class 1) = softmax((1 - f) / T); its only eligible image with >= 20 pixels is image 4
    share = float((drawn == 4).float().mean())
    assert share == pytest.approx(float(probs[1]) + float(probs[0]) / 6, abs=0.03)
    assert not bool((drawn == 5).any()) or float((drawn == 5).float().mean()) < float(probs[0]) / 6 + 0.03
    # deterministic per (seed, step): a resumed sampler and a 2-process split draw the same
    resumed = RareClassBatchSampler(ClassSampling(probs, eligible), 4, seed=3, start_step=7)
    assert next(iter(resumed)) == sampler.batch_for_step(7)
    halves = [RareClassBatchSampler(ClassSampling(probs, eligible), 4, 3, rank=r, world_size=2).batch_for_step(7)
              for r in (0, 1)]
    assert halves[0] + halves[1] == sampler.batch_for_step(7)
    assert isinstance(sampler, StepBatchSampler)


def test_class_statistics_cached_beside_the_labels_recomputed_when_stale(tree, capsys, monkeypatch):
    cfg = da_config(tree, "data.source.rcs_min_pixels=1")
    source = build_stream_sets(cfg.data, ("source",))["source"]  # computes and caches
    path = cache_path(source)
    assert path.parent == tree and path.is_file()
    first = class_statistics(source)
    assert first.tolist() == source.per_image_class_counts().tolist()
    assert source.class_sampling.eligible.tolist() == (first >= 1).tolist()
    monkeypatch.setattr(type(source), "per_image_class_counts", lambda *a: pytest.fail("the cache was not used"))
    assert torch.equal(class_statistics(source), first)
    monkeypatch.undo()
    # a label file changes: the cache is stale and recomputed
    Image.fromarray(np.full((6, 8), 7, dtype=np.uint8)).save(tree / "trainannot/0016E5_00010.png", compress_level=0)
    again = class_statistics(source)
    assert "is stale" in capsys.readouterr().out and not torch.equal(again, first)
    assert json.loads(path.read_text())["counts"] == again.tolist()
    # relabelled at the same byte size: its modification time makes the cache stale
    mask = tree / "trainannot/0016E5_00010.png"
    size, mtime = mask.stat().st_size, mask.stat().st_mtime_ns
    Image.fromarray(np.full((6, 8), 3, dtype=np.uint8)).save(mask, compress_level=0)
    os.utime(mask, ns=(mtime, mtime + 10**9))  # a coarse file-system clock could keep the old time
    assert mask.stat().st_size == size
    third = class_statistics(source)
    assert "is stale" in capsys.readouterr().out and not torch.equal(third, again)
    # a changed label mapping changes the checksum
    before = label_list_checksum(source, path.parent)
    monkeypatch.setattr(source, "ignore_index", 254)
    assert label_list_checksum(source, path.parent) != before


def test_corrupt_class_statistics_cache_names_the_file(tree):
    cfg = da_config(tree, "data.source.rcs_min_pixels=1")
    source = build_stream_sets(cfg.data, ("source",))["source"]
    path = cache_path(source)
    for corrupt in ("{not json", json.dumps({"version": 1, "checksum": "x", "num_images": 2, "num_classes": 11,
                                             "counts": [[1, 2]]})):
        path.write_text(corrupt)
        with pytest.raises(DataError, match=f"class statistics cache {path} is corrupt"):
            rare_class_sampling(source, 0.01, 1)


# ---- the real CamVid ---------------------------------------------------------------------------

def test_day_dusk_split_of_the_real_camvid(camvid_root):
    cfg = load_config(REPO / "configs/camvid_dusk/source_only.yaml")  # no rare class sampling: nothing written
    source = build_stream_sets(cfg.data, ("source",))["source"]
    target = build_stream_sets(cfg.data, ("source", "target"))["target"]
    assert len(source) == 406 and all(i.startswith(DAY) for i in source.ids()) and source.has_masks
    assert len(target) == 62 and all(i.startswith(DUSK) for i in target.ids())
    assert all(it.mask is None for it in target.items)
    evaluated = build_eval_sets(cfg.data)
    assert len(evaluated["target"]) == 62 and evaluated["target"].has_masks
    assert len(evaluated["source"]) == 101 and set(evaluated["source"].ids()) <= set(source.ids())
