"""torchrun / DDP on CPU (gloo): 2 processes with batch B each train exactly like 1 process with
batch 2B: same losses, same parameter update, same memory bank and prototypes.

BatchNorm is frozen (``model.freeze_bn``: running statistics, as SyncBN-free CPU training must),
dropout and CutMix are off (CutMix mixes images within a process), so that the comparison is fair.
Everything else of U2PL+ is on: global gamma_t, prototypes from all-reduced sums, memory-bank keys
gathered once per step, globally sampled anchors and negatives, global loss normalisation.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from u2plus.engine.checkpoint import load_checkpoint

from ..conftest import DEMO_ROOT, REPO

CONFIG = str(REPO / "configs" / "demo" / "u2pl_plus.yaml")
STEPS = 2


def overrides(out_dir: Path) -> list[str]:
    return [
        f"data.root={DEMO_ROOT}", f"out_dir={out_dir}", f"train.max_iters={STEPS}", "train.log_every=1",
        "train.checkpoint_every=0", "data.batch_size=4", "data.unlabeled_batch_size=4", "data.crop_size=[64,96]",
        "data.num_workers=0", "data.validate=false", "train.deterministic=true", "train.num_threads=1",
        "model.freeze_bn=true", "model.aspp_dropout=0", "method.cutmix_prob=0", "method.sup_only_epochs=0",
        "method.queue_size=300", "method.num_anchors=16", "method.num_negatives=8",
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def losses(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    names = ("train/loss", "train/loss_sup", "train/loss_unsup", "train/loss_contrastive", "train/gamma")
    return {n: [e.value for e in acc.Scalars(n)] for n in names}


@pytest.fixture(scope="module")
def one_and_two_processes(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    one, two = base / "one", base / "two"
    run([sys.executable, "-m", "u2plus", "train", CONFIG, *overrides(one)])
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "u2plus", "train", CONFIG, *overrides(two)])
    return one, two, proc


def test_two_gloo_processes_equal_one_process_with_double_batch(one_and_two_processes):
    one, two, _ = one_and_two_processes
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert a["step"] == b["step"] == STEPS and b["world_size"] == 2 and len(b["rng_per_rank"]) == 2

    la, lb = losses(one), losses(two)
    for name in la:
        assert len(la[name]) == STEPS, name
        assert lb[name] == pytest.approx(la[name], rel=1e-4, abs=1e-5), name
    assert la["train/loss_contrastive"][-1] > 0  # L_c really took part

    state_a, state_b = a["method"], b["method"]
    assert state_a.keys() == state_b.keys()
    assert int(state_a["criterion.queues.count"].sum()) > 0 and bool(state_a["criterion.prototypes.initialized"].any())
    assert torch.equal(state_a["criterion.queues.count"], state_b["criterion.queues.count"])
    assert torch.equal(state_a["criterion.queues.ptr"], state_b["criterion.queues.ptr"])
    for key, va in state_a.items():
        vb = state_b[key]
        if va.is_floating_point():
            assert torch.allclose(va, vb, rtol=1e-4, atol=1e-5), f"{key}: max diff {(va - vb).abs().max()}"
        else:
            assert torch.equal(va, vb), key


def test_only_rank_zero_writes_and_reports(one_and_two_processes):
    _, two, proc = one_and_two_processes
    assert proc.stdout.count('"mIoU"') == 1  # one JSON line, from rank 0
    metrics = (two / "metrics.json").read_text()
    assert '"processes": 2' in metrics
    assert len(list((two / "tb").iterdir())) == 1  # one event file


def test_global_batch_must_divide_by_process_count(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "u2plus",
           "train", CONFIG, *overrides(tmp_path / "odd"), "data.batch_size=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "data.batch_size=3 is the global batch; it must be divisible by the 2 processes" in proc.stderr


def test_two_process_checkpoint_resumes_in_one_process(one_and_two_processes, tmp_path):
    """A checkpoint written by 2 processes continues in 1 (same global batch, same data stream)."""
    _, two, _ = one_and_two_processes
    out = tmp_path / "resumed"
    proc = run([sys.executable, "-m", "u2plus", "train", CONFIG, *overrides(out), f"resume={two / 'last.pt'}",
                f"train.max_iters={STEPS + 1}"])
    assert f"resumed from {two / 'last.pt'} at step {STEPS}" in proc.stdout
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == STEPS + 1 and state["world_size"] == 1
    before = load_checkpoint(two / "last.pt")["method"]
    assert not torch.equal(state["method"]["criterion.queues.keys"], before["criterion.queues.keys"])  # it trained on


def _child_with_rank(parent: int, rank: int) -> int | None:
    """The pid of ``parent``'s child process that torchrun started as ``rank`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's worker processes in /proc (Linux)")
def test_sigterm_to_one_process_stops_every_process_after_the_same_step(tmp_path):
    """A SIGTERM that reaches rank 1 only (a scheduler that signals one node) stops both processes
    after the same step: rank 0 writes that step's checkpoint and names it, and resume=auto under
    torchrun continues to the weights of an uninterrupted 2-process run."""
    steps = 12

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "u2plus",
                "train", CONFIG, *overrides(out), f"train.max_iters={steps}", "train.checkpoint_every=1", *extra]

    cut, full = tmp_path / "cut", tmp_path / "full"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(cut), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while not (cut / "last.pt").exists():  # step 1 done: both processes are in the loop
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.02)
        rank_1 = _child_with_rank(proc.pid, 1)
        assert rank_1 is not None, "torchrun's rank-1 worker not found"
        os.kill(rank_1, signal.SIGTERM)
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode != 0, "the run finished before the signal took effect"
    match = re.search(rf"stopped by SIGTERM after step (\d+) of {steps}; checkpoint (\S+); continue with resume=auto",
                      out + err)
    assert match, (out + err)[-3000:]
    stopped_at = int(match.group(1))
    state = load_checkpoint(cut / "last.pt")
    assert match.group(2) == str(cut / "last.pt") and state["step"] == stopped_at < steps and state["world_size"] == 2
    # torchrun itself ends with its ChildFailedError report (the workers' exit code 143 in it);
    # no u2plus process prints a traceback
    assert "exitcode  : 143" in err and not re.search(r'File "[^"]*/u2plus/', err), err[-6000:]

    run(command(cut, "resume=auto"))
    run(command(full))
    resumed, uninterrupted = load_checkpoint(cut / "last.pt"), load_checkpoint(full / "last.pt")
    assert resumed["step"] == uninterrupted["step"] == steps
    for key, value in uninterrupted["method"].items():
        assert torch.equal(value, resumed["method"][key]), f"{key} differs after a stop at step {stopped_at}"
