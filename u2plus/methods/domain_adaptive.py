"""Domain-adaptive recipes (paper Sec. 4.2; docs/method.md, "Domain-adaptive setting"): DAFormer
(Hoyer et al., CVPR 2022) on the mean-teacher base, and U2PL+ on top of it. The source domain is
the labeled stream, the target domain the unlabeled one (its labels never reach training).

One step (DAFormer's, with the student's two forwards joined in one):

1. the EMA teacher on the weak target view (and on the source, for the criterion): pseudo-labels
   ``argmax_c p``, weighted by the share ``q`` of target pixels with ``max_c p >= 0.968``;
2. ClassMix (DACS): half of the classes of source image ``i`` pasted onto the strong view of
   target image ``i``; the mixed label is the source label there and the pseudo-label elsewhere,
   the weight 1 there and ``q`` elsewhere;
3. the student on [source, mix]: ``L_s`` on the source, confidence-weighted CE on the mix, and the
   ImageNet feature distance of its deepest source features to those of a frozen copy of the
   initial encoder, on thing classes (``method.fd_lambda``, 0 turns it off);
4. ``daformer_u2pl_plus``: :class:`~u2plus.criterion.U2PLPlusCriterion` on the same mix, source
   pixels as its labeled stream and target pixels as its unlabeled one, the ClassMix mask as its
   mix (``mix_from_labeled``): L_c with the entropy partition, PD, momentum prototypes and
   queues, and the Table XII switches ``negatives_from`` and ``labeled_negatives``. Its L_u is off
   in the preset (eta 0): step 3's weighted CE is the pseudo-label loss.

Rare class sampling of the source images is the data's (``data.source.rcs_temperature``).
"""

from __future__ import annotations

import copy

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from ..losses.daformer import confidence_weight, feature_distance, pseudo_label_weights
from ..losses.supervised import pixel_cross_entropy, upsample_logits, weighted_pixel_count
from ..mixing import class_mix_masks, paste
from ..models.encoders import build_encoder
from .base import StepContext
from .mean_teacher import MeanTeacher
from .semi_supervised import build_criterion
from .suponly import SupOnly


class SourceOnly(SupOnly):
    """The student on the labeled source domain alone (the domain-adaptive baseline)."""

    streams = ("source",)


class DomainAdaptive(MeanTeacher):
    streams = ("source", "target")
    progress_fields = {"loss_mix": "Lmix", "loss_fd": "Lfd", "loss_contrastive": "Lc", "pseudo_weight": "q"}

    def __init__(self, cfg, student):
        super().__init__(cfg, student)
        m = cfg.method
        self.criterion = build_criterion(cfg, student, self.ignore_index) if m.contrastive else None
        # the ImageNet features of DAFormer's feature distance: the pretrained encoder, frozen (its
        # BatchNorm layers with momentum 0: batch statistics never change its running ones). The
        # student's encoder holds them unless train.init_from loaded other weights into it
        self.imagenet_encoder = None
        if m.fd_lambda > 0:
            self.imagenet_encoder = copy.deepcopy(student.encoder).requires_grad_(False)
            if cfg.train.init_from and cfg.model.pretrained not in ("none", "", None):
                pretrained = build_encoder(cfg.model.encoder, cfg.model.pretrained, cfg.model.output_stride)
                self.imagenet_encoder.load_state_dict(pretrained.state_dict())
            for bn in self.imagenet_encoder.modules():
                if isinstance(bn, _BatchNorm):
                    bn.momentum = 0.0

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return (("loss_sup", "loss_mix") + (("loss_fd",) if self.imagenet_encoder is not None else ())
                + (("loss_contrastive",) if self.criterion is not None else ()))

    def attach_distributed(self, comm, student_runner) -> None:
        super().attach_distributed(comm, student_runner)
        if self.criterion is not None:
            self.criterion.comm = comm

    def train(self, mode: bool = True):
        """The frozen ImageNet encoder runs without dropout and drop-path, its BatchNorm layers in
        the mode of the student encoder's (batch statistics while those use them): the distance
        is 0 before the first update and measures what training changed, as with DAFormer's MiT
        (no BatchNorm), not the difference between batch and running statistics."""
        super().train(mode)
        if self.imagenet_encoder is not None:
            self.imagenet_encoder.eval()
            for frozen, live in zip(self.imagenet_encoder.modules(), self.student.encoder.modules()):
                if isinstance(frozen, _BatchNorm):
                    frozen.train(live.training)
        return self

    def feature_distance_loss(self, student_features: list, x: torch.Tensor, y_s: torch.Tensor) -> torch.Tensor:
        """``fd_lambda`` x the ImageNet feature distance of the deepest features of the source
        images, the first ``len(y_s)`` of the student's input ``x`` (the frozen encoder sees all
        of ``x``, so that batch statistics are the same)."""
        m, b_s = self.cfg.method, y_s.shape[0]
        with torch.no_grad():
            frozen = self.imagenet_encoder(x)[-1][:b_s]
        return m.fd_lambda * feature_distance(student_features[-1][:b_s], frozen, y_s, m.fd_classes, m.fd_min_ratio,
                                              self.student.num_classes, self.ignore_index)

    @torch.no_grad()
    def teacher_class_mix(self, source: dict, target: dict, ctx: StepContext) -> dict:
        """Steps 1-2 of the module docstring: the teacher's outputs, the pseudo-labels and their
        weight ``q``, and the ClassMix of the source onto the target (mask, partner, image,
        label, pixel weights)."""
        m, crit, ign = self.cfg.method, self.criterion, self.ignore_index
        x_s, y_s, x_t = source["image"], source["mask"], target["image"]
        b_t = x_t.shape[0]
        valid = target.get("valid")
        if valid is None:
            valid = torch.ones(b_t, *y_s.shape[-2:], dtype=torch.bool, device=y_s.device)
        teacher = self.teacher(torch.cat([x_s, x_t]) if crit is not None else x_t,
                               with_rep=crit is not None and crit.needs_teacher_rep)
        confidence, pseudo = upsample_logits(teacher["logits"][-b_t:].float(), y_s.shape[-2:]).softmax(1).max(1)
        q = confidence_weight(confidence, m.pseudo_threshold, valid, self.comm)
        pseudo = torch.where(valid, pseudo, ign)
        partner = torch.arange(b_t, device=x_s.device) % x_s.shape[0]  # source image i onto target image i
        mask = class_mix_masks(y_s[partner], self.generator(ctx.step, x_s.device), ign, self.student.num_classes)
        return {"teacher": teacher, "valid": valid, "q": q, "mask": mask, "partner": partner,
                "image": paste(mask, partner, target["image_strong"], x_s),
                "label": paste(mask, partner, pseudo, y_s),
                "weight": paste(mask, partner, pseudo_label_weights(q, pseudo.shape, m.pseudo_weight_ignore_rows),
                                torch.ones_like(y_s, dtype=torch.float32))}

    def training_step(self, source: dict, target: dict | None, ctx: StepContext):
        crit, ign = self.criterion, self.ignore_index
        x_s, y_s = source["image"], source["mask"]
        b_s = x_s.shape[0]
        mix = None if target is None or self.in_warmup(ctx) else self.teacher_class_mix(source, target, ctx)
        x = x_s if mix is None else torch.cat([x_s, mix["image"]])
        student = self.student_forward(x, with_rep=mix is not None and crit is not None and crit.needs_student_rep,
                                       with_features=self.imagenet_encoder is not None)
        loss = self.supervised_loss(student["logits"][:b_s], y_s)
        logs = {"loss_sup": loss.detach()}
        if self.imagenet_encoder is not None:
            loss_fd = self.feature_distance_loss(student["features"], x, y_s)
            loss, logs["loss_fd"] = loss + loss_fd, loss_fd.detach()
        if mix is None:
            return loss, logs
        logits_mix, y_mix = student["logits"][b_s:], mix["label"]
        count = self.comm.sum(weighted_pixel_count(y_mix, ign)) if self.comm.world_size > 1 else None
        loss_mix = pixel_cross_entropy(logits_mix, y_mix, ign, count_override=count, pixel_weights=mix["weight"])
        loss = loss + loss_mix
        logs.update({"loss_mix": loss_mix.detach(), "pseudo_weight": mix["q"], "mixed_share": mix["mask"].float().mean()})
        if crit is not None:
            t_logits, t_rep, s_rep = mix["teacher"]["logits"], mix["teacher"].get("rep"), student.get("rep")
            out = crit(
                labels=y_s, teacher_logits_l=t_logits[:b_s], teacher_logits_u=t_logits[b_s:], student_logits_u=logits_mix,
                teacher_rep_l=None if t_rep is None else t_rep[:b_s], teacher_rep_u=None if t_rep is None else t_rep[b_s:],
                student_rep_l=None if s_rep is None else s_rep[:b_s], student_rep_u=None if s_rep is None else s_rep[b_s:],
                valid_u=mix["valid"], progress=ctx.progress, cutmix=(mix["mask"], mix["partner"]),
                mix_from_labeled=True, seed=self.step_seed(ctx.step))
            loss = loss + out["loss"]
            logs.update({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items() if k != "loss"})
        return loss, logs
