"""Image-level labels (data.supervision: tags): where they come from, what a sample carries, the
CAM-quality set, and every bad input as one line naming the file, image or key before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from u2plus.cli import main
from u2plus.config import load_config
from u2plus.data import build_train_sets, cam_quality_set, tagged_images
from u2plus.data import ccp
from u2plus.engine import trainer as trainer_module
from u2plus.errors import DataError
from u2plus.methods import method_class

from ..helpers import one_error_line
from .test_datasets import CCP_CLASSES, ccp_tree, cfg, label, rgb

SHARED = Path(__file__).parents[2].parent / "shared/data"
REPO = Path(__file__).parents[2]


def folder(tmp_path: Path, tags: dict | None = None) -> dict:
    """A 3-class folder dataset: images a, b with masks, val image v; optionally a tags file."""
    for i in ("a", "b", "v"):
        rgb(tmp_path / f"{'val' if i == 'v' else 'img'}/{i}.png")
    label(tmp_path / "msk/a.png", [0, 2])
    label(tmp_path / "msk/b.png", [1])
    label(tmp_path / "vmsk/v.png", [1])
    kw = dict(dataset="folder", num_classes=3, supervision="tags", images=str(tmp_path / "img"),
              masks=str(tmp_path / "msk"), val_images=str(tmp_path / "val"), val_masks=str(tmp_path / "vmsk"))
    if tags is not None:
        (tmp_path / "tags.json").write_text(json.dumps(tags))
        kw["tags"] = str(tmp_path / "tags.json")
    return kw


def test_tags_from_a_file_carry_background_and_drop_the_training_masks(tmp_path):
    c = cfg(**folder(tmp_path, {"a": [2], "b": [], "v": [1]}))
    train, unlabeled = build_train_sets(c, semi_supervised=False)
    assert unlabeled is None and not any(it.mask for it in train.items)  # masks never train
    sample = train[0]
    assert "mask" not in sample and sample["tags"].tolist() == [1.0, 0.0, 1.0]  # background always 1
    assert train[1]["tags"].tolist() == [1.0, 0.0, 0.0]  # an image tagged with nothing: background only
    scored = cam_quality_set(c)  # the CAM pseudo-labels are scored on the images with masks
    assert scored.ids() == ["a", "b"] and "mask" in scored[0] and "tags" in scored[0]


def test_tags_derived_from_masks_without_a_tags_file(tmp_path):
    train, _ = build_train_sets(cfg(**folder(tmp_path)), semi_supervised=False)
    assert train.tags == {"a": [0, 2], "b": [0, 1]}
    assert train[0]["tags"].tolist() == [1.0, 0.0, 1.0]


def test_ccp_weakly_supervised_splits_and_tags(tmp_path):
    root = ccp_tree(tmp_path)
    c = cfg(dataset="ccp", root=str(root), num_classes=7, supervision="tags", train_split="ws_train",
            val_split="ws_val")
    train, _ = build_train_sets(c, semi_supervised=False)
    assert train.ids() == ["0001", "1005"]  # ws_train: 0001-0600 and the images without masks
    assert train[1]["tags"].tolist() == [1, 0, 0, 1, 0, 0, 1]  # 1005: jeans (lower), wallet and bag (bag)
    assert cam_quality_set(c).ids() == ["0001"]
    assert tagged_images(c).items[0].mask is not None


@pytest.mark.parametrize("case", ["outside", "missing", "unknown"])
def test_bad_tags_file_is_one_data_error_naming_file_and_image(tmp_path, case):
    tags = {"outside": {"a": [7], "b": [1]}, "missing": {"a": [1]}, "unknown": {"a": [1], "b": [2], "zz": [1]}}[case]
    c = cfg(**folder(tmp_path, tags))
    with pytest.raises(DataError) as e:
        build_train_sets(c, semi_supervised=False)
    msg = str(e.value)
    assert str(tmp_path / "tags.json") in msg and "\n" not in msg
    assert {"outside": "image a has tag 7 outside the classes 0..2", "missing": "no entry for image b",
            "unknown": "names 1 image(s) that do not exist: zz"}[case] in msg


def test_bad_ccp_tags_name_the_file_and_image(tmp_path):
    root = ccp_tree(tmp_path)
    tags = json.loads((root / "tags.json").read_text())
    c = cfg(dataset="ccp", root=str(root), num_classes=7, supervision="tags", train_split="ws_train",
            val_split="ws_val")
    (root / "tags.json").write_text(json.dumps({**tags, "0001": [99]}))
    with pytest.raises(DataError, match=rf"{root / 'tags.json'}: image 0001 has tag 99 outside the classes 0..58"):
        build_train_sets(c, semi_supervised=False)
    (root / "tags.json").write_text(json.dumps({"0001": tags["0001"]}))
    with pytest.raises(DataError, match=r"tags.json: no entry for image 1005 \(.*1005.jpg\)"):
        build_train_sets(c, semi_supervised=False)
    (root / "tags.json").write_text(json.dumps({**tags, "1500": [2]}))
    with pytest.raises(DataError, match=r"tags.json names 1 image\(s\) that do not exist: 1500"):
        build_train_sets(c, semi_supervised=False)


def test_supervision_and_method_must_agree():
    with pytest.raises(Exception, match=r"data.supervision=tags but method.name=u2pl_plus trains on pixels; "
                                        r"with tags use afa, afa_u2pl_plus"):
        method_class(load_config(None, ["data.supervision=tags", "method.name=u2pl_plus"]))
    with pytest.raises(Exception, match=r"data.supervision=pixels but method.name=afa trains on tags"):
        method_class(load_config(None, ["method.name=afa"]))


@pytest.mark.parametrize("breaker", ["tag_outside", "no_entry", "orphan_tags", "pixel_method"])
def test_bad_tag_input_is_one_cli_line_before_training(breaker, tmp_path, capsys, monkeypatch):
    root = ccp_tree(tmp_path / "ccp")
    tags = json.loads((root / "tags.json").read_text())
    extra, named = [], str(root / "tags.json")
    if breaker == "tag_outside":
        (root / "tags.json").write_text(json.dumps({**tags, "1005": [1, len(CCP_CLASSES)]}))
    elif breaker == "no_entry":
        (root / "tags.json").write_text(json.dumps({"0001": tags["0001"]}))
        named = "1005"
    elif breaker == "orphan_tags":
        (root / "tags.json").write_text(json.dumps({**tags, "2500": [1]}))
        named = "2500"
    else:
        extra, named = ["method.name=u2pl_plus"], "data.supervision=tags"
    started = []
    monkeypatch.setattr(trainer_module, "build_segmentor", lambda *a, **k: started.append(1))
    code = main(["train", str(REPO / "configs/ccp/afa.yaml"), f"data.root={root}", *extra,
                 f"out_dir={tmp_path / 'run'}"])
    assert code == 2
    assert named in one_error_line(capsys)
    assert not started, "the model was built before the tags were checked"


@pytest.mark.skipif(not (SHARED / "ccp/tags.json").is_file(), reason=f"real CCP data not at {SHARED / 'ccp'}")
def test_real_ccp_tags_protocol():
    root = SHARED / "ccp"
    c = cfg(dataset="ccp", root=str(root), num_classes=7, supervision="tags", train_split="ws_train",
            val_split="ws_val")
    train, _ = build_train_sets(c, semi_supervised=False)
    ids = train.ids()
    assert len(ids) == 1694 and ids[0] == "0001" and "0600" in ids and "0601" not in ids and "1005" in ids
    scored = cam_quality_set(c)
    assert len(scored) == 600 and scored.ids()[-1] == "0600"
    for ref in scored.items[::150]:  # the tags of 0001-0600 are their masks' coarse classes
        assert [int(v) for v in np.unique(scored.load_mask(ref.mask)) if v] == train.tags[ref.id], ref.id
    sample = train[ids.index("1500")]
    assert sample["tags"][0] == 1 and sample["tags"].sum() >= 2 and "mask" not in sample
    assert len(ccp.list_split(root, "ws_val")) == 200
