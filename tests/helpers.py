"""Helpers shared by several test modules."""

from __future__ import annotations

from u2plus.comm import LOCAL
from u2plus.losses.contrastive import contrastive_loss
from u2plus.losses.contrastive_masks import semi_supervised_masks


def ss_contrastive_loss(z_student, z_teacher, prob, labels, is_labeled, unreliable, prototypes, proto_valid,
                        queues, cfg, seed=0, image_ids=None, comm=LOCAL, ignore_index=255):
    """Algorithm 1 with the semi-supervised masks (Eq. 21-28): what the criterion calls."""
    anchors, negatives = semi_supervised_masks(labels, prob, is_labeled, unreliable, cfg, ignore_index)
    return contrastive_loss(z_student, z_teacher, anchors, negatives, prototypes, proto_valid, queues, cfg,
                            seed=seed, image_ids=image_ids, comm=comm)


def train_step(method, optimizer, labeled, unlabeled, ctx):
    """One step of a method as the trainer takes it (forward, backward, optimiser, EMA):
    (detached loss, logs)."""
    loss, logs = method.training_step(labeled, unlabeled, ctx)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    method.after_optimizer_step(ctx)
    return loss.detach(), logs
