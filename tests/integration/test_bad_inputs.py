"""Bad inputs a user can meet, as one table: each ends in one line ``error: ...`` that names what
to fix, with exit status 2 and no traceback, before anything trains (README "Troubleshooting").
A non-finite loss and a stop signal are in test_faults.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from u2plus.cli import main
from u2plus.engine import trainer as trainer_module

from ..conftest import DEMO_CONFIG, DEMO_OVERRIDES, DEMO_ROOT, REPO
from ..helpers import one_error_line

VOC_CONFIG = str(REPO / "configs" / "voc" / "_base.yaml")
CASES = {}


def case(fn):
    """A table row: ``fn(tmp_path, trained_run)`` -> (argv, substrings of the error line)."""
    CASES[fn.__name__] = fn
    return fn


def train(out: Path, *overrides: str) -> list[str]:
    return ["train", DEMO_CONFIG, *DEMO_OVERRIDES, f"out_dir={out}", *overrides]


# -- configs ------------------------------------------------------------------------------------
@case
def config_typo(tmp, run):
    return train(tmp / "o", "train.max_iter=3"), ["'train.max_iter'", "did you mean 'train.max_iters'"]


@case
def wrong_value_type(tmp, run):
    return train(tmp / "o", "train.max_iters=many"), ["train.max_iters", "many"]


@case
def zero_batch(tmp, run):
    return train(tmp / "o", "data.batch_size=0"), ["data.batch_size=0 must be an integer >= 1"]


@case
def learning_rate_nan(tmp, run):
    return train(tmp / "o", "train.lr=nan"), ["train.lr=nan must be a finite number > 0"]


@case
def momentum_out_of_range(tmp, run):
    return train(tmp / "o", "train.momentum=1.5"), ["train.momentum=1.5 must be a finite number in [0, 1)"]


@case
def probability_out_of_range(tmp, run):
    return train(tmp / "o", "method.cutmix_prob=1.2"), ["method.cutmix_prob=1.2", "in [0, 1]"]


@case
def crop_the_scale_range_cannot_fill(tmp, run):  # demo images 180x240, scale_range max 1.5
    return train(tmp / "o", "data.crop_size=[400,500]"), ["data.crop_size=[400, 500] cannot be filled", "[270, 360]"]


@case
def unlabeled_images_for_a_supervised_method(tmp, run):
    return (train(tmp / "o", "data.unlabeled=camvid_demo/unlabeled.txt"),
            ["data.unlabeled is set but method.name=suponly trains on labeled images only"])


@case
def overwrite_and_resume(tmp, run):
    return train(tmp / "o", "overwrite=true", "resume=auto"), ["overwrite=true", "resume=auto"]


# -- data ---------------------------------------------------------------------------------------
@case
def missing_root(tmp, run):
    return train(tmp / "o", f"data.root={tmp / 'nowhere'}"), [str(tmp / "nowhere")]


@case
def unknown_split_id(tmp, run):
    split = tmp / "labeled.txt"
    split.write_text("0016E5_07959\nno_such_image\n")
    return train(tmp / "o", f"data.labeled={split}"), [str(split), "no_such_image"]


def _small_camvid(tmp: Path) -> Path:
    root = tmp / "camvid"
    for sub in ("train", "trainannot", "val", "valannot"):
        (root / sub).mkdir(parents=True)
        for f in sorted((DEMO_ROOT / sub).iterdir())[:3]:
            (root / sub / f.name).write_bytes(f.read_bytes())
    return root


def _on_small_camvid(tmp: Path, named: Path, *extra: str):
    return train(tmp / "o", f"data.root={tmp / 'camvid'}", "data.labeled=null", *extra), [str(named)]


@case
def not_an_image(tmp, run):
    bad = sorted((_small_camvid(tmp) / "train").iterdir())[1]
    bad.write_bytes(b"not an image at all")
    return _on_small_camvid(tmp, bad)


@case
def mask_of_another_size(tmp, run):
    bad = sorted((_small_camvid(tmp) / "trainannot").iterdir())[0]
    Image.open(bad).resize((100, 50)).save(bad)
    return _on_small_camvid(tmp, bad)


@case
def label_outside_the_class_set(tmp, run):
    bad = sorted((_small_camvid(tmp) / "valannot").iterdir())[2]
    arr = np.asarray(Image.open(bad)).copy()
    arr[5, 5] = 42
    Image.fromarray(arr).save(bad)
    return _on_small_camvid(tmp, bad)


@case
def empty_unlabeled_set(tmp, run):
    root = _small_camvid(tmp)
    ids = root / "all.txt"
    ids.write_text("".join(f"{p.stem}\n" for p in sorted((root / "train").iterdir())))
    return _on_small_camvid(tmp, ids, "method.name=u2pl_plus", f"data.labeled={ids}")


# -- checkpoints and run folders ----------------------------------------------------------------
def _checkpoint_copy(tmp: Path, run: Path, **changes) -> Path:
    path = tmp / "ckpt" / "last.pt"
    path.parent.mkdir()
    torch.save({**torch.load(run / "last.pt", weights_only=True), **changes}, path)
    return path


@case
def missing_checkpoint(tmp, run):
    return ["eval", "--checkpoint", str(tmp / "nope.pt")], [str(tmp / "nope.pt")]


@case
def truncated_checkpoint(tmp, run):
    path = tmp / "last.pt"
    data = (run / "last.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return ["eval", "--checkpoint", str(path)], [f"cannot load checkpoint {path}"]


@case
def checkpoint_of_another_model(tmp, run):
    return (["eval", VOC_CONFIG, "--checkpoint", str(run / "last.pt")],
            [f"holds another model than {VOC_CONFIG}", "data.num_classes 11 vs 21",
             "model.encoder tf_efficientnet_lite0 vs resnet101", "leave out the config"])


@case
def checkpoint_of_a_newer_u2plus(tmp, run):
    path = _checkpoint_copy(tmp, run, format=99, u2plus="9.0.0")
    image = DEMO_ROOT / "val" / "0016E5_07959.jpg"
    return (["predict", "--checkpoint", str(path), str(image), "--out", str(tmp / "pred")],
            ["written by u2plus 9.0.0 in checkpoint format 99", "upgrade u2plus"])


@case
def resume_with_another_model(tmp, run):
    path = _checkpoint_copy(tmp, run)
    return (train(path.parent, "resume=auto", "model.encoder=resnet18", "model.pretrained=none", "data.validate=false"),
            ["holds another model than this run's config", "model.encoder tf_efficientnet_lite0 vs resnet18"])


@case
def second_run_into_a_folder_with_a_run(tmp, run):
    path = _checkpoint_copy(tmp, run)
    return train(path.parent), [f"out_dir={path.parent} already holds a run", "resume=auto", "overwrite=true"]


@case
def folder_in_use(tmp, run):
    (tmp / "o").mkdir()
    (tmp / "o" / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    return train(tmp / "o"), [f"out_dir={tmp / 'o'} is in use by process {os.getppid()}"]


BUILDS_A_MODEL = {"resume_with_another_model"}  # the checkpoint is read after the model is built


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line(name, tmp_path, trained_run, capsys, monkeypatch):
    argv, expected = CASES[name](tmp_path, trained_run)
    built = []
    if name not in BUILDS_A_MODEL:
        monkeypatch.setattr(trainer_module, "build_segmentor", lambda *a, **k: built.append(1))
    assert main(argv) == 2
    line = one_error_line(capsys)
    for text in expected:
        assert text in line, line
    assert not built, "a model was built before the input was checked"
    assert not (tmp_path / "o" / "last.pt").exists()


def test_the_real_command_prints_one_line(trained_run):
    """The case of the issue, as a user runs it: a VOC config with a CamVid checkpoint."""
    proc = subprocess.run([sys.executable, "-m", "u2plus", "eval", VOC_CONFIG, "--checkpoint",
                           str(trained_run / "last.pt")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "model.encoder tf_efficientnet_lite0 vs resnet101" in proc.stderr
