"""A weakly-supervised run end to end through the command line: train two steps on tagged synthetic
images, then `u2plus eval` prints the CAM quality (and, with the CRF package, the CRF scores)."""

from __future__ import annotations

import json

from u2plus.cli import main

from ..conftest import REPO
from .test_paper_configs import CRF, synthetic_folder, synthetic_tags


def test_train_then_eval_reports_cam_quality_and_crf(tmp_path, capsys):
    images, masks = synthetic_folder(tmp_path / "train", 7, 4)
    val_images, val_masks = synthetic_folder(tmp_path / "val", 7, 1)
    data = ["data.dataset=folder", "data.train_split=train", "data.val_split=val", f"data.images={images}",
            f"data.masks={masks}", f"data.val_images={val_images}", f"data.val_masks={val_masks}",
            f"data.tags={synthetic_tags(tmp_path / 'tags.json', 7, 4)}", "data.num_workers=0",
            "method.single_threshold=true", "method.cam_beta=0.0", "method.queue_size=64", f"eval.crf={CRF}",
            "eval.scales=[1.0]"]
    config = str(REPO / "configs/ccp/afa_u2pl_plus.yaml")
    run = tmp_path / "run"
    assert main(["train", config, *data, "data.crop_size=[32,32]", "data.batch_size=2", "model.pretrained=none",
                 "train.max_iters=2", "train.num_threads=1", f"out_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["eval", config, *data, "model.pretrained=none", "--checkpoint", str(run / "last.pt")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["cam"]["num_images"] == 4 and set(result["cam"]["per_class"]) == {f"class_{i}" for i in range(7)}
    assert ("crf" in result) == CRF
