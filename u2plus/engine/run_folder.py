"""One run per folder: ``out_dir/.lock`` names the process that trains into it.

A ``train`` into a folder in use by a live process is refused, whatever its options. A folder
that holds a run (``last.pt``) takes only that run's continuation (``resume=auto``, or
``resume=`` its ``last.pt``) unless ``overwrite=true``, which first deletes the old run's files.

The lock holds the PID and host of rank 0; a thread refreshes its time every minute. It is stale,
and taken over, when its process is gone (same host) or it has not been refreshed for
``STALE_AFTER`` seconds (a run requeued onto another host, after a kill that left the lock).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError

LOCK_NAME = ".lock"
HEARTBEAT_SECONDS = 60.0
STALE_AFTER = 300.0
RUN_FILES = ("last.pt", "metrics.json", "nonfinite_report.json", "tb")  # what overwrite=true deletes

__all__ = ["claimed_run_folder", "holder_alive", "read_holder"]


def read_holder(lock: Path) -> dict | None:
    """``{"pid", "host", "age"}`` of the lock (age in seconds since its last refresh), or None."""
    try:
        age = time.time() - lock.stat().st_mtime
        info = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        info = {}
    try:
        return {"pid": int(info["pid"]), "host": str(info["host"]), "age": age}
    except (KeyError, TypeError, ValueError):
        return {"pid": -1, "host": "?", "age": age}  # unreadable: judged by its age alone


def holder_alive(holder: dict) -> bool:
    if holder["age"] > STALE_AFTER:
        return False
    if holder["host"] != socket.gethostname() or holder["pid"] < 0:
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextmanager
def claimed_run_folder(cfg, active: bool = True):
    """Hold ``cfg.out_dir`` for this run (``active``: rank 0; other ranks hold nothing)."""
    if not active:
        yield
        return
    lock = _claim(cfg)
    done = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lock, done), daemon=True)
    beat.start()
    try:
        yield
    finally:
        done.set()
        holder = read_holder(lock)
        if holder and (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)


def _claim(cfg) -> Path:
    out = Path(cfg.out_dir)
    lock = out / LOCK_NAME
    holder = read_holder(lock)
    if holder is not None:
        if holder_alive(holder):
            raise _in_use(out, holder)
        lock.unlink(missing_ok=True)  # left behind by a killed run
    if (out / "last.pt").is_file() and not _continues(cfg, out):
        if not cfg.overwrite:
            raise ConfigError(f"out_dir={out} already holds a run ({out / 'last.pt'}): add resume=auto to "
                              "continue it, choose another out_dir, or set overwrite=true to replace it")
        for name in RUN_FILES:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=out)
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
    try:
        os.link(tmp, lock)  # atomic: fails when another run created the lock meanwhile
    except FileExistsError:
        raise _in_use(out, read_holder(lock) or {"pid": -1, "host": "?"}) from None
    finally:
        os.unlink(tmp)
    return lock


def _continues(cfg, out: Path) -> bool:
    """Whether ``cfg`` continues the run in ``out`` rather than starting another one."""
    if cfg.resume == "auto":
        return True
    return bool(cfg.resume) and Path(cfg.resume).resolve() == (out / "last.pt").resolve()


def _in_use(out: Path, holder: dict) -> ConfigError:
    return ConfigError(f"out_dir={out} is in use by process {holder['pid']} on {holder['host']}: wait for it "
                       f"or choose another out_dir (if that process is gone, delete {out / LOCK_NAME})")


def _heartbeat(lock: Path, done: threading.Event) -> None:
    while not done.wait(HEARTBEAT_SECONDS):
        try:
            os.utime(lock)
        except OSError:
            pass
