"""The domain-adaptive setting end to end on a copy of the embedded CamVid subset (day sequences
as the source, the dusk sequence as the target): training with rare class sampling, both
evaluated sets, ``u2plus eval`` on the target, and an exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from u2plus.cli import main

from ..conftest import DEMO_ROOT, REPO, tiny_overrides
from ..helpers import stop_after_first_checkpoint

CONFIG = str(REPO / "configs" / "camvid_dusk" / "daformer_u2pl_plus.yaml")


@pytest.fixture
def camvid(tmp_path) -> Path:
    """A copy (the class statistics cache is written beside the labels)."""
    return Path(shutil.copytree(DEMO_ROOT, tmp_path / "camvid"))


def overrides(root: Path, out: Path) -> list[str]:
    return [f"data.source.root={root}", f"data.target.root={root}", "method.queue_size=500",
            "method.delta_p=0.0", "train.eval_every=2", *tiny_overrides(out)]


def test_daformer_u2pl_plus_trains_evaluates_and_resumes_exactly(camvid, tmp_path, monkeypatch, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["train", CONFIG, *overrides(camvid, full)]) == 0
    metrics = json.loads((full / "metrics.json").read_text())
    dusk = sum(p.name.startswith("0001TP_") for p in (camvid / "train").iterdir())
    assert metrics["split"] == "target" and metrics["eval"]["target"]["num_images"] == dusk
    assert metrics["eval"]["source"]["num_images"] == len(list((camvid / "val").iterdir()))
    assert metrics["labeled_images"] + dusk == len(list((camvid / "train").iterdir())) + len(list((camvid / "val").iterdir()))
    assert [p["step"] for p in metrics["curve"]] == [2, 4] and "source" in metrics["curve"][0]["sets"]
    assert list(camvid.glob("u2plus_class_stats_*.json"))  # rare class sampling cached its statistics

    capsys.readouterr()
    assert main(["eval", CONFIG, f"data.source.root={camvid}", f"data.target.root={camvid}", "method.queue_size=500",
                 "--checkpoint", str(full / "last.pt")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["split"] == "train" and line["num_images"] == dusk
    assert line["mIoU"] == pytest.approx(metrics["mIoU"])

    stop_after_first_checkpoint(monkeypatch, lambda: main(["train", CONFIG, *overrides(camvid, cut)]))
    assert main(["train", CONFIG, *overrides(camvid, cut), "resume=auto"]) == 0
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert any(k.startswith("imagenet_encoder.") for k in a["method"])
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    assert json.loads((cut / "metrics.json").read_text())["curve"] == metrics["curve"]
