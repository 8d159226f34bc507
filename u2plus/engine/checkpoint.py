"""Checkpoints: written atomically (temp file in the same folder, fsync, rename), loaded with
``weights_only=True``. A kill during a write never replaces the previous good checkpoint."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError


def save_checkpoint(state: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {path}: {e}") from None


def evaluated_model_weights(path: str | Path) -> dict:
    """State dict of the network a training run evaluated (its EMA teacher where the method
    evaluates the teacher, else its student), from the run's ``last.pt`` or its folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    state = load_checkpoint(path)
    weights = state.get("method")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} holds no trained model (was it written by u2plus train?)")
    method = (state.get("config") or {}).get("method") or {}
    prefix = "teacher." if method.get("eval_teacher", True) and any(k.startswith("teacher.") for k in weights) \
        else "student."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(s):
    return tuple(_as_python_state(x) for x in s) if isinstance(s, (list, tuple)) else s
