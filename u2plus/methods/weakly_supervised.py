"""Weakly-supervised recipe (paper Sec. 3.7 and 4.3, docs/method.md "Weakly-supervised setting"):
images with image-level tags only (``data.supervision: tags``). ``afa`` is AFA's single-stage
recipe; ``afa_u2pl_plus`` adds U2PL+'s contrastive loss (Eq. 29-31) on the same parts as the
semi-supervised recipe: the mean-teacher base (the teacher's representations feed the prototypes
and the negative keys) and the shared contrastive loss, prototypes and queues, composed by
:class:`u2plus.ws_criterion.WeaklySupervisedCriterion`.

The student gets the classification and affinity heads (u2plus.models.image_level). The first
``method.sup_only_fraction`` of the steps train the classifier alone (L_s, Eq. 6); through them
the teacher copies the student, as in the semi-supervised warm-up.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from ..models.image_level import attach_image_level_heads
from ..ws_criterion import WeaklySupervisedCriterion, WSCriterionConfig
from .base import StepContext
from .mean_teacher import MeanTeacher


def ws_criterion_config(method_cfg) -> WSCriterionConfig:
    """The weakly-supervised criterion's knobs, read from the ``method`` section."""
    return WSCriterionConfig(**{f.name: method_cfg[f.name] for f in dataclasses.fields(WSCriterionConfig)})


class WeaklySupervised(MeanTeacher):
    streams = ("labeled",)  # the tagged training images
    supervision = "tags"
    progress_fields = {"loss_unsup": "Lu", "loss_affinity": "Laff", "loss_contrastive": "Lc",
                       "labelled_fraction": "lab"}

    @classmethod
    def prepare_student(cls, student, cfg):
        return attach_image_level_heads(student, cfg.method.cls_pooling)

    def __init__(self, cfg, student):
        super().__init__(cfg, student)
        self.criterion = WeaklySupervisedCriterion(ws_criterion_config(cfg.method), student.num_classes,
                                                   cfg.model.rep_dim, self.ignore_index)
        if cfg.method.contrastive and not cfg.model.rep_head:
            raise ConfigError(f"method.name={cfg.method.name} needs model.rep_head=true (contrastive)")

    @property
    def loss_terms(self) -> tuple[str, ...]:
        contrastive = ("loss_contrastive",) if self.cfg.method.contrastive else ()
        return ("loss_sup", "loss_unsup", "loss_affinity") + contrastive

    def attach_distributed(self, comm, student_runner) -> None:
        super().attach_distributed(comm, student_runner)
        self.criterion.comm = comm

    def training_step(self, labeled: dict, unlabeled: dict | None, ctx: StepContext):
        x, tags = labeled["image"], labeled["tags"]
        active = not self.in_warmup(ctx)
        contrast = active and self.cfg.method.contrastive
        student = self.student_forward(x, with_rep=contrast, with_cam=True)
        teacher_rep = None
        if contrast:
            with torch.no_grad():
                teacher_rep = self.teacher(x, with_rep=True)["rep"]
        out = self.criterion(images=x, tags=tags, valid=labeled.get("valid"), cls_logits=student["cls_logits"],
                             cams=student["cams"], affinity=student["affinity"], seg_logits=student["logits"],
                             student_rep=student.get("rep"), teacher_rep=teacher_rep, active=active,
                             seed=self.step_seed(ctx.step))
        logs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items() if k != "loss"}
        return out["loss"], logs
