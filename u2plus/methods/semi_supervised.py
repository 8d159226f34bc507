"""Semi-supervised recipe (paper Sec. 3, docs/method.md, steps 1-11): a mean teacher, CutMix of the strong
view and the U2PL+ criterion. ``selftrain`` (the paper's CutMix baseline), ``u2pl`` (conference
version) and ``u2pl_plus`` are this recipe with the criterion's switches of their presets
(``METHOD_PRESETS`` in :mod:`u2plus.config`). Beyond the paper, ``method.rare_paste_prob`` pastes
the classes the teacher gets wrong from labeled images onto the strong view (AEL's adaptive
copy-paste)."""

from __future__ import annotations

import dataclasses

import torch

from ..criterion import CriterionConfig, U2PLPlusCriterion
from ..errors import ConfigError
from .base import StepContext
from ..mixing import apply_cutmix, cutmix_masks, cutmix_partners, paste, rare_class_paste_masks, true_class_confidence
from .mean_teacher import MeanTeacher


def criterion_config(method_cfg) -> CriterionConfig:
    """The criterion's knobs, read from the ``method`` section (which holds all of them)."""
    return CriterionConfig(**{f.name: method_cfg[f.name] for f in dataclasses.fields(CriterionConfig)})


def build_criterion(cfg, student, ignore_index: int) -> U2PLPlusCriterion:
    """The U2PL+ criterion of ``cfg.method`` for ``student``, which needs a representation head
    when the criterion uses representations."""
    criterion = U2PLPlusCriterion(criterion_config(cfg.method), student.num_classes, cfg.model.rep_dim, ignore_index)
    if criterion.needs_teacher_rep and not cfg.model.rep_head:
        raise ConfigError(f"method.name={cfg.method.name} needs model.rep_head=true (contrastive/denoising)")
    return criterion


class SemiSupervised(MeanTeacher):
    progress_fields = {"loss_unsup": "Lu", "loss_contrastive": "Lc", "reliable_fraction": "rel",
                       "lambda_u": "lam_u", "gamma": "gamma"}

    def __init__(self, cfg, student):
        super().__init__(cfg, student)
        self.criterion = build_criterion(cfg, student, self.ignore_index)
        if cfg.method.rare_paste_prob > 0:
            # AEL's confidence bank: the teacher's running confidence on labeled pixels of each class
            self.register_buffer("class_confidence", torch.zeros(student.num_classes))
            self.register_buffer("class_confidence_seen", torch.zeros(student.num_classes, dtype=torch.bool))

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return ("loss_sup", "loss_unsup") + (("loss_contrastive",) if self.criterion.cfg.contrastive else ())

    def attach_distributed(self, comm, student_runner) -> None:
        super().attach_distributed(comm, student_runner)
        self.criterion.comm = comm

    def training_step(self, labeled: dict, unlabeled: dict | None, ctx: StepContext):
        m, crit = self.cfg.method, self.criterion
        x_l, y_l = labeled["image"], labeled["mask"]
        if unlabeled is None or self.in_warmup(ctx):
            loss = self.supervised_loss(self.student_forward(x_l)["logits"], y_l)
            return loss, {"loss_sup": loss.detach()}
        x_u, x_strong = unlabeled["image"], unlabeled["image_strong"]
        b_l, b_u = x_l.shape[0], x_u.shape[0]
        gen = self.generator(ctx.step, x_l.device)
        with torch.no_grad():
            teacher = self.teacher(torch.cat([x_l, x_u]), with_rep=crit.needs_teacher_rep)
            box = cutmix_masks(b_u, *y_l.shape[-2:], m.cutmix_prob, tuple(m.cutmix_area), gen, x_u.device)
            partner = cutmix_partners(b_u, gen)
            x_mix = apply_cutmix(box, partner, x_strong)[0]
            mixes = [(box, partner, False)]
            if m.rare_paste_prob > 0:  # then labeled pixels of the classes the teacher gets wrong
                paste_mask, paste_partner = self.rare_class_paste(teacher["logits"][:b_l], y_l, b_u, gen)
                x_mix = paste(paste_mask, paste_partner, x_mix, x_l)
                mixes.append((paste_mask, paste_partner, True))
        detach_rep = ctx.step - self.first_semi_step(ctx) < m.rep_head_detach_steps
        student = self.student_forward(torch.cat([x_l, x_mix]), with_rep=crit.needs_student_rep,
                                       detach_rep=detach_rep)
        loss_sup = self.supervised_loss(student["logits"][:b_l], y_l)
        t_rep, s_rep = teacher.get("rep"), student.get("rep")
        out = crit(
            labels=y_l, teacher_logits_l=teacher["logits"][:b_l], teacher_logits_u=teacher["logits"][b_l:],
            student_logits_u=student["logits"][b_l:],
            teacher_rep_l=None if t_rep is None else t_rep[:b_l], teacher_rep_u=None if t_rep is None else t_rep[b_l:],
            student_rep_l=None if s_rep is None else s_rep[:b_l], student_rep_u=None if s_rep is None else s_rep[b_l:],
            valid_u=unlabeled.get("valid"), progress=ctx.progress, cutmix=mixes,
            seed=self.step_seed(ctx.step), unlabeled_labels=unlabeled.get("mask"))
        logs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items() if k != "loss"}
        ramp = self.unsup_weight(ctx)
        if m.unsup_rampup_steps:
            logs["unsup_weight"] = ramp
        if m.rep_head_detach_steps:
            logs["rep_head_detached"] = float(detach_rep)
        if m.rare_paste_prob > 0:
            logs.update({"paste_fraction": paste_mask.float().mean(), "per_class/confidence": self.class_confidence.clone()})
        return loss_sup + ramp * out["loss"], {"loss_sup": loss_sup.detach(), **logs}

    @torch.no_grad()
    def rare_class_paste(self, teacher_logits_l: torch.Tensor, labels: torch.Tensor, batch_u: int,
                         gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, partner)`` of the rare-class paste (``method.rare_paste_prob``): the confidence
        bank takes this step's teacher confidence on the labeled pixels of each class (summed over
        processes; the first value of a class as it is, then an EMA), and the pasted classes are
        drawn with weight ``1 - confidence``."""
        m = self.cfg.method
        sums, counts = true_class_confidence(teacher_logits_l, labels, self.student.num_classes, self.ignore_index)
        sums, counts = self.comm.sum(torch.stack([sums, counts])).unbind()
        seen = counts > 0
        momentum = torch.where(self.class_confidence_seen, m.rare_paste_momentum, 0.0)
        updated = momentum * self.class_confidence + (1 - momentum) * sums / counts.clamp_min(1)
        self.class_confidence.copy_(torch.where(seen, updated, self.class_confidence))
        self.class_confidence_seen |= seen
        return rare_class_paste_masks(labels, batch_u, 1 - self.class_confidence, m.rare_paste_prob,
                                      m.rare_paste_classes, gen, self.ignore_index)
