"""The CLI contract on the embedded demo data: train, eval, predict, splits, errors, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from u2plus.cli import main
from u2plus.engine import trainer as trainer_module

from ..conftest import DEMO_CONFIG, DEMO_OVERRIDES, DEMO_ROOT, REPO, tiny_overrides
from ..helpers import one_error_line, stop_after_first_checkpoint


def test_train_writes_run_folder(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 100.0
    assert set(metrics["per_class"]) == {"sky", "building", "pole", "road", "pavement", "tree",
                                         "sign_symbol", "fence", "car", "pedestrian", "bicyclist"}
    assert metrics["steps"] == 4 and metrics["labeled_images"] == 31
    assert (trained_run / "last.pt").is_file() and (trained_run / "config.yaml").is_file()
    assert any((trained_run / "tb").iterdir()), "no TensorBoard event file"
    state = torch.load(trained_run / "last.pt", weights_only=True)
    assert state["step"] == 4 and "optimizer" in state and "rng" in state and "scheduler" in state


def test_eval_prints_one_json_line(trained_run, capsys, tmp_path):
    out_file = tmp_path / "val.json"
    # no CONFIG: the checkpoint's own config (an override alone is no config file)
    code = main(["eval", "--checkpoint", str(trained_run / "last.pt"), "data.num_workers=0", "--out", str(out_file)])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["split"] == "val" and result["num_images"] == 34
    assert json.loads(out_file.read_text()) == result
    # the same checkpoint evaluated by the trainer at the end of training gives the same number
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert result["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-9)
    assert result["mAcc"] == pytest.approx(metrics["mAcc"], abs=1e-9)
    assert result["per_class_acc"].keys() == result["per_class"].keys()
    # recall bounds IoU from above, class by class and in the mean
    accs = result["per_class_acc"]
    assert all(accs[c] >= iou - 1e-9 for c, iou in result["per_class"].items() if accs[c] is not None)
    assert result["mAcc"] >= result["mIoU"] and 0.0 <= result["aAcc"] <= 100.0


def test_eval_other_split(trained_run, capsys):
    # the contract's order: options first, key=value overrides after them
    assert main(["eval", DEMO_CONFIG, "--checkpoint", str(trained_run / "last.pt"), "--split", "train",
                 *DEMO_OVERRIDES, "data.num_workers=0"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["split"] == "train" and result["num_images"] == 123


def test_predict_files_and_folders(trained_run, tmp_path):
    image = DEMO_ROOT / "val" / "0016E5_07959.jpg"
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "b.jpg").write_bytes((DEMO_ROOT / "val" / "0016E5_08055.jpg").read_bytes())
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(trained_run / "last.pt"), str(image), str(folder),
                 "--out", str(out)]) == 0
    from PIL import Image

    for stem in ("0016E5_07959", "b"):
        for kind in ("mask", "overlay", "labels"):
            assert (out / f"{stem}_{kind}.png").is_file()
        with Image.open(out / f"{stem}_labels.png") as im:
            assert im.size == (240, 180)  # the input image's own resolution
            assert int(np.asarray(im).max()) < 11


def test_visualize_writes_fig2_panels(trained_run, tmp_path):

    image = DEMO_ROOT / "val" / "0016E5_07959.jpg"
    assert main(["visualize", "--checkpoint", str(trained_run / "last.pt"), str(image), "--out",
                 str(tmp_path)]) == 0
    with Image.open(tmp_path / "0016E5_07959_fig2.png") as im:
        assert im.size[0] > 1000 and im.size[1] > 200


def test_fig2_picks_a_reliable_and_an_unreliable_pixel(tmp_path):
    from u2plus.engine.visualize import fig2_panels
    from u2plus.viz import palette_for

    prob = np.full((3, 4, 5), 1 / 3, dtype=np.float32)  # uniform: maximal entropy everywhere ...
    prob[:, :2] = np.array([0.9, 0.05, 0.05], dtype=np.float32)[:, None, None]  # ... but the top rows
    shown = fig2_panels(np.zeros((4, 5, 3), np.uint8), prob, 0.2, ["a", "b", "c"], palette_for(3), tmp_path / "f.png")
    assert (tmp_path / "f.png").is_file()
    assert shown["reliable"]["pixel"][0] < 2 <= shown["unreliable"]["pixel"][0]
    assert shown["unreliable"]["entropy"] == pytest.approx(np.log(3), abs=1e-5)
    assert shown["reliable"]["probabilities"][0] == pytest.approx(0.9)


def test_splits_command(tmp_path, capsys):
    assert main(["splits", "--dataset", "camvid", "--root", str(DEMO_ROOT), "--labeled", "1/4",
                 "--seed", "0", "--out", str(tmp_path)]) == 0
    shipped = REPO / "u2plus" / "splits" / "camvid_demo"
    assert (tmp_path / "labeled.txt").read_text() == (shipped / "labeled.txt").read_text()
    assert (tmp_path / "unlabeled.txt").read_text() == (shipped / "unlabeled.txt").read_text()



def test_a_run_killed_in_its_final_evaluation_resumes_at_the_evaluation(tmp_path, monkeypatch):
    """The trained weights are on disk before the final evaluation: a run that dies in it
    continues with resume=auto at that evaluation (no step trained twice) and ends as it would."""
    import u2plus.engine.trainer as trainer

    class Killed(BaseException):  # as SIGKILL: nothing of the run's own runs after it
        pass

    real_evaluate = trainer._evaluate

    def dies_in_final(run, step, final=False):
        if final:
            raise Killed
        return real_evaluate(run, step, final)

    monkeypatch.setattr(trainer, "_evaluate", dies_in_final)
    with pytest.raises(Killed):
        main(["train", DEMO_CONFIG, *DEMO_OVERRIDES, *tiny_overrides(tmp_path)])
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 4
    assert not (tmp_path / "metrics.json").exists()
    monkeypatch.setattr(trainer, "_evaluate", real_evaluate)
    assert main(["train", DEMO_CONFIG, *DEMO_OVERRIDES, *tiny_overrides(tmp_path), "resume=auto"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["start_step"] == 4 and metrics["steps"] == 4 and [p["step"] for p in metrics["curve"]] == [4]

@pytest.mark.parametrize("method", ["suponly", "u2pl_plus"])
def test_resume_is_exact(method, tmp_path, monkeypatch):
    """Stop a run right after its step-2 checkpoint, resume it: the final weights (student,
    teacher, prototypes, memory bank) equal an uninterrupted run's bit for bit (same data order,
    same learning rates, same RNG)."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    extra = [f"method.name={method}", "data.unlabeled=camvid_demo/unlabeled.txt", "method.queue_size=500"] \
        if method != "suponly" else []
    args = [*DEMO_OVERRIDES, *extra, "train.eval_every=2"]
    assert main(["train", DEMO_CONFIG, *args, *tiny_overrides(full)]) == 0

    stop_after_first_checkpoint(monkeypatch, lambda: main(["train", DEMO_CONFIG, *args, *tiny_overrides(cut)]))
    at_step_2 = torch.load(cut / "last.pt", weights_only=True)
    assert at_step_2["step"] == 2 and at_step_2["train_seconds"] > 0
    assert main(["train", DEMO_CONFIG, *args, *tiny_overrides(cut), "resume=auto"]) == 0

    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    if method == "u2pl_plus":
        assert any(k.startswith("criterion.queues.") for k in a["method"]) and any(k.startswith("teacher.") for k in a["method"])
        assert int(a["method"]["criterion.queues.count"].sum()) > 0
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    # the val curve (every 2 steps) survives the interruption: same points, same numbers
    curve_a = json.loads((full / "metrics.json").read_text())["curve"]
    curve_b = json.loads((cut / "metrics.json").read_text())["curve"]
    assert [p["step"] for p in curve_a] == [2, 4] and curve_a == curve_b
    # its training seconds count the first process's too; seconds per step only the resumed process's
    metrics_b = json.loads((cut / "metrics.json").read_text())
    assert metrics_b["start_step"] == 2 and json.loads((full / "metrics.json").read_text())["start_step"] == 0
    resumed_seconds = metrics_b["seconds_per_step"] * 2
    assert metrics_b["train_seconds"] == pytest.approx(at_step_2["train_seconds"] + resumed_seconds, abs=0.2)


def test_init_from_loads_the_evaluated_network_and_rejects_another_model(trained_run, capsys, tmp_path):
    from u2plus.config import load_config
    from u2plus.models import build_segmentor

    cfg = load_config(DEMO_CONFIG, [*DEMO_OVERRIDES, "model.pretrained=none"])
    model = build_segmentor(cfg.model, 11)
    trainer_module._init_weights(model, str(trained_run))  # a run folder (SupOnly: its student)
    saved = torch.load(trained_run / "last.pt", weights_only=True)["method"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved["student." + key]), key
    # another encoder: one line naming the option and the weights, no traceback
    code = main(["train", DEMO_CONFIG, *DEMO_OVERRIDES, *tiny_overrides(tmp_path / "x", steps=1),
                 "model.encoder=resnet18", "model.pretrained=none", f"train.init_from={trained_run}/last.pt",
                 "data.validate=false"])
    assert code == 2
    line = one_error_line(capsys)
    assert "train.init_from" in line and "does not fit" in line and "encoder." in line


def test_warmup_from_a_suponly_run_is_the_runs_own_warmup(tmp_path, capsys):
    """A u2pl_plus run whose first 2 steps are L_s only, and the same run taking those 2 steps
    from a SupOnly run's step_2.pt (train.save_at): the same final weights bit for bit."""
    semi = [*DEMO_OVERRIDES, "method.name=u2pl_plus", "data.unlabeled=camvid_demo/unlabeled.txt",
            "method.queue_size=500", "method.sup_only_fraction=0"]  # the warm-up in epochs alone
    own, sup, forked = tmp_path / "own", tmp_path / "sup", tmp_path / "forked"
    warmup = ["method.sup_only_epochs=0.05"]  # 92 unlabeled / 2 per step = 46 steps an epoch: steps 0-2
    assert main(["train", DEMO_CONFIG, *semi, *tiny_overrides(own), *warmup]) == 0
    assert main(["train", DEMO_CONFIG, *DEMO_OVERRIDES, *tiny_overrides(sup), "train.save_at=[2]"]) == 0
    assert (sup / "step_2.pt").is_file() and torch.load(sup / "step_2.pt", weights_only=True)["step"] == 2
    assert main(["train", DEMO_CONFIG, *semi, *tiny_overrides(forked), *warmup,
                 f"train.warmup_from={sup / 'step_2.pt'}"]) == 0
    a = torch.load(own / "last.pt", weights_only=True)["method"]
    b = torch.load(forked / "last.pt", weights_only=True)["method"]
    assert int(a["criterion.queues.count"].sum()) > 0
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    capsys.readouterr()
    # a checkpoint after the warm-up, or from a run with other batches, is refused in one line
    assert main(["train", DEMO_CONFIG, *semi, *tiny_overrides(tmp_path / "late"), "method.sup_only_epochs=0.02",
                 f"train.warmup_from={sup / 'step_2.pt'}"]) == 2
    assert "after this run's supervised warm-up" in one_error_line(capsys)
    assert main(["train", DEMO_CONFIG, *semi, *tiny_overrides(tmp_path / "other"), *warmup, "data.batch_size=4",
                 f"train.warmup_from={sup / 'step_2.pt'}"]) == 2
    assert "differs in data.batch_size" in one_error_line(capsys)
    # a checkpoint written before a model key existed compares that key as today's default
    old = torch.load(sup / "step_2.pt", weights_only=True)
    del old["config"]["model"]["fusion_rates"]
    torch.save(old, tmp_path / "old_step_2.pt")
    assert main(["train", DEMO_CONFIG, *semi, *tiny_overrides(tmp_path / "from_old"), *warmup,
                 f"train.warmup_from={tmp_path / 'old_step_2.pt'}"]) == 0
