"""Every shipped config builds and trains two steps on tiny synthetic data (CPU), keeping its own
method, model, optimiser, loss and evaluation settings; only the data, the pretrained weights and
the sizes are replaced. The paper's split files referenced by the configs exist with the paper's
counts."""

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


@pytest.mark.parametrize("config", CONFIGS, ids=[str(p.relative_to(REPO / "configs")) for p in CONFIGS])
def test_config_trains_two_steps(config, tmp_path):
    base = load_config(config)
    c = base.data.num_classes
    images, masks = synthetic_folder(tmp_path / "train", c, 4)
    val_images, val_masks = synthetic_folder(tmp_path / "val", c, 1)
    unl_images, _ = synthetic_folder(tmp_path / "unl", c, 4)
    semi = "unlabeled" in method_class(base).streams
    cfg = load_config(config, [
        "data.dataset=folder", f"data.images={images}", f"data.masks={masks}", f"data.val_images={val_images}",
        f"data.val_masks={val_masks}", f"data.unlabeled_images={unl_images if semi else 'null'}", "data.labeled=null",
        "data.unlabeled=null", "data.crop_size=[32,32]", "data.batch_size=2", "data.unlabeled_batch_size=2",
        "data.num_workers=0", "data.resize_factor=1.0", "model.pretrained=none", "train.epochs=null",
        "train.max_iters=2", "train.ohem_min_kept=100", "train.num_threads=1", "eval.crop_size=[32,32]",
        "eval.scales=[1.0]", "method.queue_size=256", "method.sup_only_epochs=0", "train.log_every=1",
        "method.delta_p=0.0",  # a random network is nowhere sure enough for an anchor at the default 0.3
        f"out_dir={tmp_path / 'run'}",
    ])
    metrics = train(cfg)
    assert np.isfinite(metrics["mIoU"]) and metrics["steps"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"] == base.method.name
    # every loss term the method claims was logged at the last step, finite and non-zero
    from u2plus.methods import build_method
    from u2plus.models import build_segmentor

    terms = build_method(cfg, build_segmentor(cfg.model, c)).loss_terms
    logged = metrics["last_train_logs"]
    assert logged["step"] == 2 and "loss_sup" in terms
    for term in terms:
        assert np.isfinite(logged[term]) and logged[term] > 0, term


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
