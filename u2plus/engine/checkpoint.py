"""Checkpoints: written atomically (temp file in the same folder, fsync, rename), loaded with
``weights_only=True``. A kill during a write never replaces the previous good checkpoint.

A training checkpoint records its layout version (``format``) and the u2plus version that wrote
it; :func:`load_run_checkpoint` refuses a layout it cannot read with one line naming both."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import torch

from .. import __version__
from ..config import MODEL_KEYS, config_differences, config_from_checkpoint
from ..errors import CheckpointError

FORMAT = 1  # layout of a training checkpoint; bump when it changes incompatibly
READABLE_FORMATS = (0, 1)  # 0: written before the layout carried a version (same layout as 1)
VERSION_FIELDS = {"format": FORMAT, "u2plus": __version__}  # what a training checkpoint records


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


def load_run_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by ``u2plus train``, whose layout this version reads."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("method"), dict):
        raise CheckpointError(f"{path} holds no trained model (was it written by u2plus train?)")
    fmt = state.get("format", 0)
    if fmt not in READABLE_FORMATS:
        writer = f"u2plus {state.get('u2plus', '(unknown version)')}"
        newer = isinstance(fmt, int) and fmt > FORMAT
        advice = "upgrade u2plus to read it" if newer else f"read it with {writer}"
        raise CheckpointError(f"{path} was written by {writer} in checkpoint format {fmt}; this u2plus "
                              f"{__version__} reads formats {READABLE_FORMATS[0]}-{READABLE_FORMATS[-1]}: {advice}")
    return state


def check_model(state: dict, path, cfg, against: str, keys=MODEL_KEYS, hint: str = "") -> None:
    """One line naming the differing ``keys`` when the checkpoint's model is not the one ``cfg``
    (named ``against``) describes."""
    differences = config_differences(config_from_checkpoint(state), cfg, keys)
    if differences:
        raise CheckpointError(f"{path} holds another model than {against} (checkpoint vs config: {differences}){hint}")


def network_weights(state: dict, network: str) -> dict:
    """State dict of one network (``"student"`` or ``"teacher"``) of a run checkpoint; empty when
    the run's method has no such network."""
    prefix = network + "."
    return {k[len(prefix):]: v for k, v in state["method"].items() if k.startswith(prefix)}


def evaluated_weights(state: dict) -> dict:
    """State dict of the network a training run evaluated (its EMA teacher where the method
    evaluates the teacher, else its student)."""
    method = (state.get("config") or {}).get("method") or {}
    teacher = network_weights(state, "teacher") if method.get("eval_teacher", True) else {}
    return teacher or network_weights(state, "student")


def evaluated_model_weights(path: str | Path) -> dict:
    """:func:`evaluated_weights` of a run's ``last.pt`` or its folder."""
    path = Path(path)
    return evaluated_weights(load_run_checkpoint(path / "last.pt" if path.is_dir() else path))


def load_weights(module: torch.nn.Module, weights: dict, source: str) -> None:
    """``module.load_state_dict(weights)``; a mismatch is one line naming ``source`` and the
    first differing weights."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:3]
        raise CheckpointError(f"{source} does not fit this model: "
                              + " ".join(line.strip() for line in first)) from None


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
