"""The first 20 steps of each semi-supervised method, pinned: the same seed and config give the
same loss terms (to float32 rounding) whatever the code's shape. The pinned numbers were written
by ``python -m tests.unit.test_loss_pins`` before the criterion / mean-teacher refactor."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from u2plus.config import load_config
from u2plus.methods import StepContext, build_method
from u2plus.models import build_segmentor

PINS = Path(__file__).resolve().parents[1] / "fixtures" / "loss_pins.json"
METHODS = ("selftrain", "u2pl", "u2pl_plus")
TERMS = ("loss_sup", "loss_unsup", "loss_contrastive")
NUM_CLASSES, STEPS = 4, 20


def losses_of_first_steps(name: str) -> list[dict]:
    torch.manual_seed(0)
    cfg = load_config(None, [
        f"method.name={name}", "model.encoder=resnet18", "model.pretrained=none", "model.decoder_channels=16",
        "model.rep_dim=8", f"data.num_classes={NUM_CLASSES}", "method.num_anchors=16", "method.num_negatives=4",
        "method.queue_size=64", "method.delta_p=0.0", "method.sup_only_epochs=0.4"])
    method = build_method(cfg, build_segmentor(cfg.model, NUM_CLASSES))
    opt = torch.optim.SGD(method.student.parameters(), lr=0.01, momentum=0.9)
    method.train()
    out = []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(100 + step)
        labeled = {"image": torch.randn(2, 3, 32, 32, generator=g),
                   "mask": torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=g)}
        image = torch.randn(4, 3, 32, 32, generator=g)
        unlabeled = {"image": image, "image_strong": image + 0.2 * torch.randn(4, 3, 32, 32, generator=g)}
        ctx = StepContext(step, max_iters=STEPS, iters_per_epoch=5)
        loss, logs = method.training_step(labeled, unlabeled, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_optimizer_step(ctx)
        out.append({k: float(logs[k]) for k in TERMS if k in logs} | {"loss": float(loss.detach())})
    return out


@pytest.mark.parametrize("name", METHODS)
def test_first_20_steps_match_the_pins(name):
    pinned = json.loads(PINS.read_text())[name]
    got = losses_of_first_steps(name)
    assert [set(p) for p in got] == [set(p) for p in pinned]
    for step, (g, p) in enumerate(zip(got, pinned)):
        for term in p:
            assert g[term] == pytest.approx(p[term], rel=1e-4, abs=1e-6), (step, term)
    # the pins exercise every term: warm-up steps (L_s only), then L_u (and L_c) non-zero
    assert set(pinned[0]) == {"loss_sup", "loss"} and pinned[-1]["loss_unsup"] > 0
    if name != "selftrain":
        assert pinned[-1]["loss_contrastive"] > 0


if __name__ == "__main__":  # write the pins (only when the step is meant to change)
    torch.set_num_threads(1)  # as the tests run (conftest): the reduction order changes the last bits
    PINS.write_text(json.dumps({n: losses_of_first_steps(n) for n in METHODS}, indent=1) + "\n")
    print(f"wrote {PINS}", file=sys.stderr)
