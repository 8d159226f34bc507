"""The pieces that make every way a run ends safe: the stop signal handler, the agreement of the
processes on it, the skip counter of non-finite steps, the run folder's lock, the crop check."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from u2plus.comm import Comm
from u2plus.config import load_config
from u2plus.data import build_train_sets, check_crop_fits
from u2plus.engine import run_folder
from u2plus.engine.nonfinite import SkipCounter, nonfinite_buffers
from u2plus.engine.run_folder import claimed_run_folder, holder_alive, read_holder
from u2plus.engine.stopping import StopRequest
from u2plus.engine.trainer import _agree
from u2plus.errors import ConfigError

from ..conftest import DEMO_ROOT


def test_stop_request_records_the_first_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler may send it twice: no harm
        assert stop.requested and stop.name == "SIGTERM" and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C once more: stop at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT" and stop.exit_code == 130


class OtherRank(Comm):
    """A second process whose flags are ``flags``."""

    world_size = 2

    def __init__(self, flags):
        self.flags = torch.tensor(flags, dtype=torch.float32)

    def sum(self, t):
        return t + self.flags


def test_processes_agree_when_any_of_them_got_a_flag():
    run = SimpleNamespace(comm=OtherRank([0.0, 1.0]), device=torch.device("cpu"))
    assert _agree(run, False, False) == [False, True]  # the signal reached only the other process
    assert _agree(run, True, False) == [True, True]
    assert _agree(SimpleNamespace(comm=Comm(), device=None), True, False) == [True, False]


def test_skip_counter_allows_k_minus_one_in_a_row():
    c = SkipCounter()
    assert c.skip_allowed("skip", 3, True) and c.skip_allowed("skip", 3, True)
    assert not c.skip_allowed("skip", 3, True)  # the third in a row stops
    c = SkipCounter()
    for _ in range(5):
        assert c.skip_allowed("skip", 3, True)
        c.finite_step()
    assert (c.total, c.in_a_row) == (5, 0)
    assert not SkipCounter().skip_allowed("stop", 3, True)
    assert not SkipCounter().skip_allowed("skip", 3, buffers_finite=False)


def test_nonfinite_buffers_names_them():
    bn = torch.nn.BatchNorm1d(2)
    assert nonfinite_buffers(bn) == []
    bn.running_var[0] = float("inf")
    assert nonfinite_buffers(bn) == ["running_var"]


def folder_cfg(out, **kw):
    return OmegaConf.create({"out_dir": str(out), "resume": kw.get("resume"), "overwrite": kw.get("overwrite", False)})


def write_lock(out, pid, host=None, age=0.0):
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))
    os.utime(lock, (time.time() - age, time.time() - age))
    return lock


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_run_folder_lock_is_held_while_training_and_released_after(tmp_path):
    with claimed_run_folder(folder_cfg(tmp_path / "run")):
        holder = read_holder(tmp_path / "run" / ".lock")
        assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname()) and holder_alive(holder)
        with pytest.raises(ConfigError, match=f"is in use by process {os.getpid()}"):
            with claimed_run_folder(folder_cfg(tmp_path / "run", resume="auto", overwrite=True)):
                pass
    assert not (tmp_path / "run" / ".lock").exists()
    with claimed_run_folder(folder_cfg(tmp_path / "run"), active=False):  # ranks > 0 hold nothing
        assert not (tmp_path / "run" / ".lock").exists()


@pytest.mark.parametrize("host, age, alive", [
    (None, 0.0, False),  # this host, process gone: a crashed run
    ("elsewhere", 0.0, True),  # another host, refreshed lately: cannot tell, so it is in use
    ("elsewhere", run_folder.STALE_AFTER + 60, False),  # another host, not refreshed: stale
])
def test_a_stale_lock_does_not_block_a_resume(tmp_path, host, age, alive):
    out = tmp_path / "run"
    write_lock(out, dead_pid(), host, age)
    (out / "last.pt").write_bytes(b"a run")
    if alive:
        with pytest.raises(ConfigError, match="is in use by process"):
            with claimed_run_folder(folder_cfg(out, resume="auto")):
                pass
    else:
        with claimed_run_folder(folder_cfg(out, resume="auto")):
            assert read_holder(out / ".lock")["pid"] == os.getpid()


def test_a_live_process_on_this_host_holds_its_folder(tmp_path):
    write_lock(tmp_path / "run", os.getppid())
    with pytest.raises(ConfigError, match=f"out_dir={tmp_path / 'run'} is in use by process {os.getppid()}"):
        with claimed_run_folder(folder_cfg(tmp_path / "run", resume="auto")):
            pass


def test_a_folder_with_a_run_takes_its_continuation_or_overwrite(tmp_path):
    out = tmp_path / "run"
    (out / "tb").mkdir(parents=True)
    for name in ("last.pt", "metrics.json", "notes.txt"):
        (out / name).write_text(name)
    with pytest.raises(ConfigError, match="already holds a run"):
        with claimed_run_folder(folder_cfg(out)):
            pass
    with pytest.raises(ConfigError, match="already holds a run"):  # another checkpoint into this folder
        with claimed_run_folder(folder_cfg(out, resume=str(tmp_path / "other.pt"))):
            pass
    for resume in ("auto", str(out / "last.pt")):
        with claimed_run_folder(folder_cfg(out, resume=resume)):
            assert (out / "last.pt").exists()
    with claimed_run_folder(folder_cfg(out, overwrite=True)):
        assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]


def test_crop_the_scale_range_cannot_fill_is_a_config_error():
    cfg = load_config(None, [f"data.root={DEMO_ROOT}", "data.crop_size=[270,360]", "data.scale_range=[0.5,1.5]"])
    labeled, _ = build_train_sets(cfg.data, False)
    check_crop_fits(cfg.data, labeled)  # 180x240 images x 1.5 reach 270x360 exactly
    cfg.data.crop_size = [271, 360]
    with pytest.raises(ConfigError, match=r"data.crop_size=\[271, 360\] cannot be filled: .* reach at most \[270, 360\]"):
        check_crop_fits(cfg.data, labeled)
    cfg.data.resize_factor = 2.0
    check_crop_fits(cfg.data, build_train_sets(cfg.data, False)[0])
    labeled.resize = (180, 360)  # a fixed size (data.resize, a DA domain's resize) replaces the factor
    with pytest.raises(ConfigError, match=r"reach at most \[270, 540\] \(resized to \[180, 360\]"):
        check_crop_fits(cfg.data, labeled)


class Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.tensor(float(i))}


def test_loader_workers_leave_sigterm_to_the_main_process():
    """A scheduler's SIGTERM to the whole process group must not kill the data workers (the main
    process would fail in the middle of a step instead of stopping after it)."""
    from u2plus.data.sampler import make_train_loader

    it = iter(make_train_loader(Numbers(), 2, seed=0, start_step=0, num_workers=1))
    next(it)
    worker = it._workers[0]
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # sent by another process
    subprocess.run(["kill", "-INT", str(worker.pid)], check=True)
    time.sleep(0.5)
    assert worker.is_alive()
    assert next(it)["x"].shape == (2,)
    it._shutdown_workers()
