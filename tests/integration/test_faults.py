"""Faults: a training process killed with SIGKILL at a random step resumes to the exact weights of
an uninterrupted run (memory bank and prototypes included), and a kill during a checkpoint write
never replaces the previous good checkpoint."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from u2plus.engine.checkpoint import load_checkpoint

from ..conftest import DEMO_ROOT, REPO, tiny_overrides

CONFIG = str(REPO / "configs" / "demo" / "u2pl_plus.yaml")
STEPS = 6


def command(out_dir: Path, *extra: str) -> list[str]:
    overrides = tiny_overrides(out_dir, STEPS) + ["train.checkpoint_every=1", "method.queue_size=500"]
    return [sys.executable, "-m", "u2plus", "train", CONFIG, f"data.root={DEMO_ROOT}", *overrides, *extra]


def run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sigkill_at_random_step_then_resume_is_bit_exact(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(command(full))

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
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["step"] == b["step"] == STEPS
    assert int(a["method"]["criterion.queues.count"].sum()) > 0 and bool(a["method"]["criterion.prototypes.initialized"].any())
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), f"{key} differs after kill at step >= {kill_after}"
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
