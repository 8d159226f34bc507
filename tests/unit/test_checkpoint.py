"""u2plus.engine.checkpoint: atomic save, weights_only load, RNG state round trip."""

from __future__ import annotations

import random

import pytest
import torch

from u2plus.engine import checkpoint as ckpt
from u2plus.engine.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def make_state(value: float = 1.0) -> dict:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.copy_(torch.tensor([value, -value]))
    return {"model": model.state_dict(), "step": 7, "config": {"seed": 3, "train": {"lr": 0.01}},
            "best_miou": 0.5, "names": ["a", "b"]}


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "dir" / "last.pt"  # parent folders are created
    state = make_state(2.5)
    save_checkpoint(state, path)
    back = load_checkpoint(path)
    assert back["step"] == 7
    assert back["config"] == {"seed": 3, "train": {"lr": 0.01}}
    assert back["best_miou"] == 0.5 and back["names"] == ["a", "b"]
    assert torch.equal(back["model"]["weight"], torch.full((2, 3), 2.5))
    assert torch.equal(back["model"]["bias"], torch.tensor([2.5, -2.5]))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(make_state(1.0), path)
    save_checkpoint(make_state(4.0), path)
    assert torch.equal(load_checkpoint(path)["model"]["weight"], torch.full((2, 3), 4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class NotAllowedInWeightsOnly:
    payload = 42


def test_load_uses_weights_only(tmp_path):
    # an arbitrary pickled object is refused by weights_only loading
    path = tmp_path / "evil.pt"
    torch.save({"obj": NotAllowedInWeightsOnly()}, path)
    assert torch.load(path, weights_only=False)["obj"].payload == 42  # a valid pickle file
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def _crashing_save(obj, f, *args, **kwargs):
    f.write(b"PARTIAL-GARBAGE")
    f.flush()
    raise RuntimeError("simulated crash mid-write")


def test_crash_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(make_state(1.0), path)
    good_bytes = path.read_bytes()
    monkeypatch.setattr(ckpt.torch, "save", _crashing_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(make_state(9.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == good_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
    assert torch.equal(load_checkpoint(path)["model"]["weight"], torch.full((2, 3), 1.0))


def test_crash_on_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt.torch, "save", _crashing_save)
    with pytest.raises(RuntimeError):
        save_checkpoint(make_state(), tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_mid_write_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(make_state(1.0), path)
    good = path.read_bytes()

    def interrupted(obj, f, *a, **k):
        f.write(b"xx")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(make_state(2.0), path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_missing_names_path(tmp_path):
    path = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)
    assert "not found" in str(e.value)


def test_load_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path)


def test_load_corrupt_names_path(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"\x00\x01 this is not a torch file")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)
    assert "cannot load" in str(e.value)


def test_load_truncated_names_path(tmp_path):
    path = tmp_path / "trunc.pt"
    save_checkpoint(make_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(path)


def test_rng_state_round_trip_restores_sequences():
    torch.manual_seed(123)
    random.seed(456)
    torch.rand(5)
    random.random()
    state = rng_state()
    t1, p1 = torch.rand(6), [random.random() for _ in range(4)]
    # disturb both generators
    torch.manual_seed(0)
    random.seed(0)
    torch.rand(100)
    set_rng_state(state)
    t2, p2 = torch.rand(6), [random.random() for _ in range(4)]
    assert torch.equal(t1, t2)
    assert p1 == p2


def test_rng_state_survives_checkpoint_file(tmp_path):
    """The python state comes back from weights_only loading as lists; set_rng_state accepts it."""
    torch.manual_seed(1)
    random.seed(2)
    path = tmp_path / "rng.pt"
    save_checkpoint({"rng": rng_state()}, path)
    t1, p1 = torch.randint(0, 1000, (8,)), [random.randint(0, 10**9) for _ in range(5)]
    torch.manual_seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.randint(0, 1000, (8,)), t1)
    assert [random.randint(0, 10**9) for _ in range(5)] == p1


def test_run_checkpoint_format_is_checked(tmp_path):
    from u2plus import __version__
    from u2plus.engine.checkpoint import VERSION_FIELDS, load_run_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint({**VERSION_FIELDS, "method": {}, "step": 1}, path)
    assert load_run_checkpoint(path)["u2plus"] == __version__
    save_checkpoint({"method": {}, "step": 1}, path)  # written before checkpoints had a format
    assert load_run_checkpoint(path)["step"] == 1
    save_checkpoint({"format": 7, "u2plus": "2.0.0", "method": {}}, path)
    with pytest.raises(CheckpointError) as e:
        load_run_checkpoint(path)
    assert str(e.value) == (f"{path} was written by u2plus 2.0.0 in checkpoint format 7; this u2plus {__version__} "
                            "reads formats 0-1: upgrade u2plus to read it")
    save_checkpoint({"w": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="holds no trained model"):
        load_run_checkpoint(path)


def test_load_weights_names_source_and_first_mismatch():
    from u2plus.engine.checkpoint import load_weights

    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError) as e:
        load_weights(model, torch.nn.Linear(4, 2).state_dict(), "resume=x.pt")
    msg = str(e.value)
    assert msg.startswith("resume=x.pt does not fit this model: size mismatch for weight") and "\n" not in msg


def test_network_weights_and_the_evaluated_network():
    w = torch.zeros(1)
    state = {"method": {"student.a": w + 1, "teacher.a": w + 2, "queue.x": w}, "config": {"method": {}}}
    assert ckpt.network_weights(state, "student") == {"a": state["method"]["student.a"]}
    assert ckpt.network_weights(state, "teacher") == {"a": state["method"]["teacher.a"]}
    assert ckpt.network_weights(state, "other") == {}
    assert ckpt.evaluated_weights(state)["a"].item() == 2.0  # the teacher by default
    state["config"]["method"]["eval_teacher"] = False
    assert ckpt.evaluated_weights(state)["a"].item() == 1.0
    no_teacher = {"method": {"student.a": w + 1}, "config": {"method": {}}}
    assert ckpt.evaluated_weights(no_teacher)["a"].item() == 1.0  # SupOnly: the student
