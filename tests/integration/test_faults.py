"""Faults: a training process killed with SIGKILL, or stopped with SIGTERM, at a random step resumes
to the exact weights of an uninterrupted run (memory bank and prototypes included); a kill during
a checkpoint write never replaces the previous good checkpoint; a non-finite loss is skipped or
ends the run with a report, never in a traceback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from u2plus.cli import main
from u2plus.engine import trainer as trainer_module
from u2plus.engine.checkpoint import load_checkpoint

from ..conftest import DEMO_CONFIG, DEMO_OVERRIDES, DEMO_ROOT, REPO, tiny_overrides
from ..helpers import one_error_line

CONFIG = str(REPO / "configs" / "demo" / "u2pl_plus.yaml")
STEPS = 6


def command(out_dir: Path, *extra: str) -> list[str]:
    overrides = tiny_overrides(out_dir, STEPS) + ["train.checkpoint_every=1", "method.queue_size=500"]
    return [sys.executable, "-m", "u2plus", "train", CONFIG, f"data.root={DEMO_ROOT}", *overrides, *extra]


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The final checkpoint of the run that the interrupted ones must reproduce."""
    full = tmp_path_factory.mktemp("full")
    run(command(full))
    return load_checkpoint(full / "last.pt")


def assert_same_weights(a: dict, b: dict, what: str) -> None:
    assert a["step"] == b["step"] == STEPS
    assert int(a["method"]["criterion.queues.count"].sum()) > 0 and bool(a["method"]["criterion.prototypes.initialized"].any())
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), f"{key} differs after {what}"


def test_sigkill_at_random_step_then_resume_is_bit_exact(uninterrupted, tmp_path):
    cut = tmp_path / "cut"

    kill_after = random.Random(os.getpid()).randint(1, STEPS - 2)  # a random step, logged on failure
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(cut), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            ckpt = cut / "last.pt"
            if ckpt.is_file():
                try:
                    if load_checkpoint(ckpt)["step"] >= kill_after:
                        break
                except Exception:  # being replaced right now: try again
                    pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = load_checkpoint(cut / "last.pt")  # whatever the kill interrupted, the file is whole
    assert kill_after <= state["step"] <= STEPS, (kill_after, state["step"])

    run(command(cut, "resume=auto"))
    assert_same_weights(uninterrupted, load_checkpoint(cut / "last.pt"), f"kill at step >= {kill_after}")
    leftovers = [p.name for p in cut.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"stale partial checkpoints left behind: {leftovers}"


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    """A child process killed in the middle of torch.save (after some bytes are written) leaves
    the previous checkpoint intact and loadable."""
    path = tmp_path / "last.pt"
    from u2plus.engine.checkpoint import save_checkpoint

    save_checkpoint({"step": 1, "w": torch.arange(10)}, path)
    child = f"""
import os, signal, torch
from u2plus.engine import checkpoint
real_save = torch.save
def dying_save(obj, f):
    f.write(b"partial bytes of a checkpoint")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint.torch.save = dying_save
checkpoint.save_checkpoint({{"step": 2, "w": torch.zeros(10)}}, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.arange(10))


def test_sigterm_at_random_step_then_resume_is_bit_exact(uninterrupted, tmp_path, monkeypatch, capsys):
    """A real SIGTERM in the middle of a random step (between loading its labeled and its
    unlabeled batch), no periodic checkpoints: the step finishes, the checkpoint is written, the
    run exits with 143 and one line; resume=auto ends with the uninterrupted run's weights."""
    cut = tmp_path / "cut"
    signal_step = random.Random(os.getpid()).randint(1, STEPS - 1)  # logged on failure
    real_step = trainer_module._train_step

    def step_with_signal(run, ctx, batch_l, batch_u):
        if ctx.step + 1 == signal_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(run, ctx, batch_l, batch_u)

    argv = command(cut, "train.checkpoint_every=0")[3:]  # the same run, in this process
    monkeypatch.setattr(trainer_module, "_train_step", step_with_signal)
    assert main(argv) == 143, signal_step
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"stopped by SIGTERM after step {signal_step} of {STEPS}; checkpoint {cut / 'last.pt'}" in err, err
    assert err.rstrip().endswith("resume=auto")
    assert load_checkpoint(cut / "last.pt")["step"] == signal_step
    assert not (cut / ".lock").exists()

    monkeypatch.setattr(trainer_module, "_train_step", real_step)
    assert main([*argv, "resume=auto"]) == 0
    assert_same_weights(uninterrupted, load_checkpoint(cut / "last.pt"), f"SIGTERM in step {signal_step}")


def plant_nan(monkeypatch, steps: set[int], states: dict | None = None) -> None:
    """Fill the first labeled image of these (1-based) steps with NaN; ``states[step]``: the
    method's state after each step."""
    real_step = trainer_module._train_step

    def planted(run, ctx, batch_l, batch_u):
        if ctx.step + 1 in steps:
            batch_l["image"][0] = float("nan")
        out = real_step(run, ctx, batch_l, batch_u)
        if states is not None:
            states[ctx.step + 1] = {k: v.clone() for k, v in run.method.state_dict().items()}
        return out

    monkeypatch.setattr(trainer_module, "_train_step", planted)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss_ends_the_run_with_a_report(mode, tmp_path, monkeypatch, capsys):
    """U2PL+ with a NaN image at step 2: stop ends there; skip cannot undo the BatchNorm
    statistics and prototypes the NaN reached, so it ends there too. One line names the report,
    which holds every loss term, gamma, the pseudo-label diagnostics, the lr and the image ids."""
    out = tmp_path / "run"
    plant_nan(monkeypatch, {2})
    argv = command(out, "data.validate=false", f"train.nonfinite={mode}")[3:]
    assert main(argv) == 3
    line = one_error_line(capsys)
    report_path = out / "nonfinite_report.json"
    assert f"non-finite loss at step 2 (loss=nan" in line and f"report: {report_path}" in line
    report = json.loads(report_path.read_text())
    assert report["step"] == 2
    assert report["logs"]["loss"] == "nan" and isinstance(report["logs"]["gamma"], (float, str))
    assert {"loss_sup", "loss_unsup", "loss_contrastive", "gamma", "reliable_fraction",
            "diag/pseudo_label_precision"} <= report["logs"].keys()
    assert set(report["lr"]) == {"encoder", "decoder_heads"}
    ids = report["image_ids"]
    assert len(ids["labeled"]) == len(ids["unlabeled"]) == 2
    assert set(ids["labeled"] + ids["unlabeled"]) <= {p.stem for p in (DEMO_ROOT / "train").iterdir()}
    if mode == "skip":
        assert "which skipping cannot undo" in line and report["first_nonfinite_buffers"]
    assert report["nonfinite_buffers"] > 0  # BatchNorm statistics, prototypes


def test_skip_drops_the_update_counts_it_and_stops_after_k_in_a_row(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    states: dict = {}
    plant_nan(monkeypatch, {2, 4, 5}, states)
    assert main(["train", DEMO_CONFIG, *DEMO_OVERRIDES, *tiny_overrides(out, 6), "data.validate=false",
                 "model.freeze_bn=true", "train.nonfinite=skip", "train.nonfinite_skip_limit=2"]) == 3
    line = one_error_line(capsys)
    assert "non-finite loss at step 5 (loss=nan, loss_sup=nan); 2 steps in a row" in line
    for key, value in states[1].items():  # step 2 changed nothing, step 3 trained
        assert torch.equal(value, states[2][key]), key
    assert any(not torch.equal(v, states[3][k]) for k, v in states[2].items())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/skipped_steps")] == [(1, 0), (2, 1), (3, 1), (4, 2)]
