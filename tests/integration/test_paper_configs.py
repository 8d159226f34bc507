"""Every shipped config builds and trains two steps on tiny synthetic data (CPU), keeping its own
method, model, optimiser, loss and evaluation settings; only the data (with image-level tags for
tag-supervised configs), the pretrained weights and the sizes are replaced. The paper's split
files referenced by the configs exist with the paper's counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from u2plus.config import load_config
from u2plus.data import read_id_list, resolve_split_file
from u2plus.engine.trainer import train
from u2plus.methods import method_class

try:
    import pydensecrf.densecrf  # noqa: F401
    CRF = True
except ImportError:  # configs with eval.crf=true then train without it (tests/unit/test_crf.py skips)
    CRF = False

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if not p.name.startswith("_"))


def synthetic_folder(root: Path, num_classes: int, n: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
        Image.fromarray(rng.integers(0, num_classes, (40, 48), dtype=np.uint8)).save(masks / f"{i}.png")
    return images, masks


def synthetic_tags(path: Path, num_classes: int, n: int) -> Path:
    """Image-level labels of the synthetic images: image i has foreground classes i % (C-1) + 1 and
    the next one, so every class is absent from some image (negatives of Eq. 31)."""
    tags = {str(i): sorted({i % (num_classes - 1) + 1, (i + 1) % (num_classes - 1) + 1}) for i in range(n)}
    path.write_text(json.dumps(tags))
    return path


def synthetic_data(base, root: Path) -> list[str]:
    """Overrides that replace a config's data with synthetic folders: ``data.*`` for the
    semi-supervised and weakly-supervised configs, ``data.source`` / ``data.target`` (each with its own train and val
    folders; the target's train masks are never read) for the domain-adaptive ones."""
    c = base.data.num_classes
    if base.data.target.dataset is None:
        images, masks = synthetic_folder(root / "train", c, 4)
        val_images, val_masks = synthetic_folder(root / "val", c, 1)
        unl_images, _ = synthetic_folder(root / "unl", c, 4)
        semi = "unlabeled" in method_class(base).streams  # unlabeled images only for methods that train on them
        return ["data.train_split=train", "data.val_split=val", "data.dataset=folder", f"data.images={images}",
                f"data.masks={masks}", f"data.val_images={val_images}", f"data.val_masks={val_masks}",
                f"data.unlabeled_images={unl_images if semi else 'null'}", "data.labeled=null", "data.unlabeled=null"]
    out = []
    for domain in ("source", "target"):
        images, masks = synthetic_folder(root / domain / "train", c, 4)
        val_images, val_masks = synthetic_folder(root / domain / "val", c, 1)
        out += [f"data.{domain}.dataset=folder", f"data.{domain}.root=null", f"data.{domain}.images={images}",
                f"data.{domain}.masks={masks}", f"data.{domain}.val_images={val_images}",
                f"data.{domain}.val_masks={val_masks}", f"data.{domain}.splits=[train]", f"data.{domain}.val_split=val",
                f"data.{domain}.prefixes=null", f"data.{domain}.resize=null", f"data.{domain}.rcs_min_pixels=1"]
    # a random network's deepest features hardly ever have a 75% majority class under random labels
    return out + ["method.fd_min_ratio=0.0"]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_config_trains_two_steps(config, tmp_path):
    base = load_config(config)
    c = base.data.num_classes
    tag_supervised = base.data.supervision == "tags"
    # a random network's CAMs, blurred by a random walk over a 2x2 grid, lie between the two thresholds:
    # one threshold at 0 gives pseudo-labels and anchors wherever a CAM is positive
    tags = [f"data.tags={synthetic_tags(tmp_path / 'tags.json', c, 4)}", "method.single_threshold=true",
            "method.cam_beta=0.0"] if tag_supervised else []
    cfg = load_config(config, [
        *synthetic_data(base, tmp_path), *tags, "data.crop_size=[32,32]", "data.batch_size=2",
        "data.unlabeled_batch_size=2",
        "data.num_workers=0", "data.resize_factor=1.0", "model.pretrained=none", "train.epochs=null",
        "train.max_iters=2", "train.ohem_min_kept=100", "train.num_threads=1", "eval.crop_size=[32,32]",
        "eval.scales=[1.0]", "method.queue_size=256", "method.sup_only_epochs=0", "train.log_every=1",
        "method.delta_p=0.0",  # a random network is nowhere sure enough for an anchor at the default 0.3
        f"eval.crf={base.eval.crf and CRF}",  # the dense CRF where its package is installed
        f"out_dir={tmp_path / 'run'}",
    ])
    metrics = train(cfg)
    assert np.isfinite(metrics["mIoU"]) and metrics["steps"] == 2
    assert ("cam" in metrics) == tag_supervised and ("crf" in metrics) == (cfg.eval.crf and CRF)
    if tag_supervised:  # CAM quality on the training images with masks, with and without the ignore band
        assert metrics["cam"]["num_images"] == 4 and 0 <= metrics["cam"]["labelled_fraction"] <= 1
        assert np.isfinite(metrics["cam"]["mIoU_dense"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == base.method.name
    # every loss term the method claims was logged at the last step, finite and non-zero
    from u2plus.methods import build_method
    from u2plus.models import build_segmentor

    terms = build_method(cfg, build_segmentor(cfg.model, c)).loss_terms
    logged = metrics["last_train_logs"]
    assert logged["step"] == 2 and "loss_sup" in terms
    for term in terms:
        assert np.isfinite(logged[term]) and logged[term] > 0, term
    if base.data.target.dataset is not None:  # evaluated on the target (and the source's val split)
        assert metrics["split"] == "target" and set(metrics["eval"]) == {"target", "source"}
        for subset in base.eval.class_subsets:
            assert f"mIoU{len(subset)}" in metrics


PAPER_SPLITS = {**{f"pascal/{n}": n for n in (92, 183, 366, 732, 1464, 662, 1323, 2646, 5291)},
                **{f"cityscapes/{n}": n for n in (186, 372, 744, 1488)}}


@pytest.mark.parametrize("split,count", PAPER_SPLITS.items())
def test_shipped_paper_splits(split, count):
    labeled = read_id_list(resolve_split_file(f"{split}/labeled.txt"))
    unlabeled = read_id_list(resolve_split_file(f"{split}/unlabeled.txt"))
    assert len(labeled) == count
    assert not set(labeled) & set(unlabeled)
    total = 2975 if split.startswith("cityscapes") else (10582 if count in (662, 1323, 2646, 5291) else None)
    if total is not None:
        assert len(labeled) + len(unlabeled) == total
