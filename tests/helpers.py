"""Helpers shared by several test modules."""

from __future__ import annotations

import re

import pytest
import torch

from u2plus.comm import LOCAL
from u2plus.losses.contrastive import contrastive_loss
from u2plus.losses.contrastive_masks import semi_supervised_masks


def ss_contrastive_loss(z_student, z_teacher, prob, labels, is_labeled, unreliable, prototypes, proto_valid,
                        queues, cfg, seed=0, image_ids=None, comm=LOCAL, ignore_index=255):
    """Algorithm 1 with the semi-supervised masks (Eq. 21-28): what the criterion calls."""
    anchors, negatives = semi_supervised_masks(labels, prob, is_labeled, unreliable, cfg, ignore_index)
    return contrastive_loss(z_student, z_teacher, anchors, negatives, prototypes, proto_valid, queues, cfg,
                            seed=seed, image_ids=image_ids, comm=comm)


def tiny_method(name: str, num_classes: int, *overrides: str):
    """Method ``name`` on a small random-init ResNet-18 network (16 decoder channels, 8-d
    representations, few anchors, negatives and queue keys), seeded; ``overrides`` add or win."""
    from u2plus.config import load_config
    from u2plus.methods import build_method
    from u2plus.models import build_segmentor

    cfg = load_config(None, [f"method.name={name}", "model.encoder=resnet18", "model.pretrained=none",
                             "model.decoder_channels=16", "model.rep_dim=8", f"data.num_classes={num_classes}",
                             "method.num_anchors=16", "method.num_negatives=4", "method.queue_size=64", *overrides])
    torch.manual_seed(0)
    return build_method(cfg, build_segmentor(cfg.model, num_classes))


def train_steps(method, batches_for_step, steps: int = 2, first_step: int = 0, max_iters: int = 10,
                iters_per_epoch: int = 5) -> list:
    """``steps`` SGD steps of a method as the trainer takes them (forward, backward, optimiser,
    EMA) on ``batches_for_step(step) -> (first stream's batch, second stream's batch or None)``;
    returns ``(detached loss, logs)`` of each step."""
    from u2plus.methods import StepContext

    opt = torch.optim.SGD(method.student.parameters(), lr=0.01)
    method.train()
    out = []
    for step in range(first_step, first_step + steps):
        ctx = StepContext(step, max_iters=max_iters, iters_per_epoch=iters_per_epoch)
        loss, logs = method.training_step(*batches_for_step(step), ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_optimizer_step(ctx)
        out.append((loss.detach(), logs))
    return out


def stop_after_first_checkpoint(monkeypatch, train) -> None:
    """Run ``train()`` and interrupt it right after it wrote its first checkpoint."""
    from u2plus.engine import trainer

    real_save = trainer.save_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(state, path):
        real_save(state, path)
        raise Stop()

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "save_checkpoint", save_then_stop)
        with pytest.raises(Stop):
            train()


def one_error_line(capsys) -> str:
    """The single line ``error: ...`` a CLI call printed to stderr (besides progress bars); no
    traceback anywhere."""
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.match(r"\S+:\s+\d+%\|", ln)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out, err
    return lines[0]
