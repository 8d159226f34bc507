"""The U2PL+ semi-supervised / domain-adaptive step (docs/method.md steps 1-11), and its ablations.

``selftrain`` (mean teacher + CutMix + entropy-filtered pseudo-labels), ``u2pl`` (conference
version) and ``u2pl_plus`` are this one composition with switches from ``cfg.method``
(see ``METHOD_PRESETS`` in :mod:`u2plus.config`). Each equation lives in :mod:`u2plus.losses`;
this module only wires them together:

1. teacher (EMA, eval mode, no grad) on labeled + weak unlabeled images
2. entropy (Eq. 11), alpha_t (Eq. 13), gamma_t quantile (Eq. 12), reliable mask
3. prototypical denoising (Eq. 19-20) -> pseudo-labels on reliable pixels
4. CutMix of the strong view, pseudo-labels, reliability and teacher outputs
5. student on [labeled, mixed strong unlabeled]
6-7. L_s (Eq. 3) + adaptive SCE L_u (Eq. 4, 14)
8. momentum prototypes (Eq. 15-18)
9. contrastive L_c with per-class queues (Eq. 10, 21-28)
10-11. total loss; EMA update after the optimiser step (Eq. 2)
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F

from ..engine.ema import ema_momentum, ema_update
from ..errors import ConfigError
from ..losses.contrastive import (
    ClassQueues,
    ContrastiveConfig,
    class_rank,
    contrastive_loss,
    unlabeled_negative_mask,
)
from ..losses.denoise import denoise_probabilities, prototype_weights
from ..losses.entropy import pixel_entropy
from ..losses.partition import (
    classwise_entropy_threshold,
    entropy_threshold,
    pseudo_labels,
    reliable_mask,
    unreliable_fraction,
)
from ..losses.prototypes import PrototypeMemory, class_feature_sums, prototype_share_left
from ..losses.sce import adaptive_unsupervised_loss
from ..losses.supervised import upsample_logits
from .base import Method, StepContext
from .cutmix import apply_cutmix, cutmix_masks, cutmix_partners


def resize_nearest(labels: torch.Tensor, size) -> torch.Tensor:
    """Nearest resize of [B, H, W] integer/bool maps (labels, masks) to ``size``."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    dtype = labels.dtype
    out = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
    return out.to(dtype)


class U2PLPlus(Method):
    semi_supervised = True

    def __init__(self, cfg, student):
        super().__init__(cfg, student)
        m = cfg.method
        self.m = m
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        num_classes, dim = student.num_classes, cfg.model.rep_dim
        self.needs_rep = m.contrastive or m.prototype_denoising
        if self.needs_rep and not cfg.model.rep_head:
            raise ConfigError(f"method.name={m.name} needs model.rep_head=true (contrastive/denoising)")
        self.prototypes = PrototypeMemory(num_classes, dim) if self.needs_rep else None
        self.queues = ClassQueues(num_classes, dim, m.queue_size) if (m.contrastive and m.use_queue) else None
        # the contrastive switches are method.* keys of the same names
        names = [f.name for f in dataclasses.fields(ContrastiveConfig) if f.name != "ignore_index"]
        self.contrastive_cfg = ContrastiveConfig(**{n: m[n] for n in names}, ignore_index=self.ignore_index)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher always runs in eval mode (BN running stats)
        return self

    def eval_model(self):
        return self.teacher if self.m.eval_teacher else self.student

    def _step_seed(self, step: int) -> int:
        """Seed of a step's draws (CutMix boxes, anchors, negatives): deterministic given
        (seed, step), so resume replays the same draws, and the global RNG is untouched."""
        return self.cfg.seed * 1_000_003 + step

    def _generator(self, step: int, device) -> torch.Generator:
        """CutMix generator of this process (each process mixes its own images)."""
        g = torch.Generator(device=device)
        g.manual_seed(self._step_seed(step) * 131 + self.comm.rank)
        return g

    def first_semi_step(self, ctx: StepContext) -> int:
        """First step with the unlabeled losses (after ``sup_only_epochs`` of L_s alone)."""
        return math.ceil(self.m.sup_only_epochs * max(ctx.iters_per_epoch, 1) - 1e-9)

    def training_step(self, labeled: dict, unlabeled: dict | None, ctx: StepContext):
        m = self.m
        x_l, y_l = labeled["image"], labeled["mask"]
        if unlabeled is None or ctx.step < self.first_semi_step(ctx):
            loss = self.supervised_loss(self.student_forward(x_l)["logits"], y_l)
            return loss, {"loss_sup": loss.detach()}
        x_u, x_u_strong = unlabeled["image"], unlabeled["image_strong"]
        b_l, b_u = x_l.shape[0], x_u.shape[0]
        size = y_l.shape[-2:]
        gen = self._generator(ctx.step, x_l.device)
        comm = self.comm

        # 1. teacher on labeled + weak unlabeled
        with torch.no_grad():
            t_out = self.teacher(torch.cat([x_l, x_u]), with_rep=self.needs_rep)
            t_logits = t_out["logits"].float()  # stride 4
            prob_u = upsample_logits(t_logits[b_l:], size).softmax(1)  # label resolution
            # 2. entropy, dynamic partition, threshold (Eq. 11-13); gamma_t is the quantile
            #    over the global unlabeled batch
            entropy = pixel_entropy(prob_u)
            # crop padding of the unlabeled images is neither reliable nor unreliable
            valid_u = unlabeled.get("valid")
            valid_u = (torch.ones_like(entropy, dtype=torch.bool) if valid_u is None
                       else valid_u.to(device=entropy.device, dtype=torch.bool))
            alpha_t = unreliable_fraction(m.alpha0, ctx.progress, m.dynamic_partition)
            all_valid = comm.cat(valid_u.reshape(-1).to(torch.uint8)).bool()
            if m.classwise_partition:  # one gamma_t per predicted class (beyond the paper)
                predicted = prob_u.max(dim=1).indices
                gamma_c = classwise_entropy_threshold(comm.cat(entropy.reshape(-1)), comm.cat(predicted.reshape(-1)),
                                                      alpha_t, prob_u.shape[1], valid=all_valid)
                gamma, threshold = gamma_c[gamma_c > 0].mean(), gamma_c[predicted]
            else:
                gamma = threshold = entropy_threshold(comm.cat(entropy.reshape(-1)), alpha_t, valid=all_valid)
            reliable = reliable_mask(entropy, threshold) & valid_u
            # 3. prototypical denoising (Eq. 19-20): the partition stays the one from H(p)
            label_prob = prob_u
            if m.prototype_denoising and bool(self.prototypes.initialized.any()):
                w = prototype_weights(t_out["rep"][b_l:].float(), self.prototypes.prototypes,
                                      self.prototypes.initialized)
                label_prob = denoise_probabilities(prob_u, upsample_logits(w, size))
            y_hat = pseudo_labels(label_prob, reliable, self.ignore_index)
            # 4. CutMix of the strong view and of everything derived from the teacher
            box = cutmix_masks(b_u, size[0], size[1], m.cutmix_prob, tuple(m.cutmix_area), gen, x_u.device)
            partner = cutmix_partners(b_u, gen)
            x_mix, y_mix, rel_mix, valid_mix = apply_cutmix(box, partner, x_u_strong, y_hat, reliable, valid_u)
            feat_size = t_logits.shape[-2:]
            box_small = resize_nearest(box, feat_size)
            t_logits_u_mix = apply_cutmix(box_small, partner, t_logits[b_l:])[0]
            t_rep_mix = apply_cutmix(box_small, partner, t_out["rep"][b_l:])[0] if self.needs_rep else None

        # 5. student on [labeled, mixed strong unlabeled]
        s_out = self.student_forward(torch.cat([x_l, x_mix]), with_rep=m.contrastive)
        s_logits = s_out["logits"]
        # 6-7. supervised and unsupervised losses (means over the global batch)
        loss_sup = self.supervised_loss(s_logits[:b_l], y_l)
        # global counts of reliable and of valid (non-padding) mixed unlabeled pixels, one collective
        n_reliable, n_valid = comm.sum(torch.stack([(rel_mix & (y_mix != self.ignore_index)).sum(),
                                                    valid_mix.sum()])).unbind()
        loss_unsup = adaptive_unsupervised_loss(upsample_logits(s_logits[b_l:], size).float(), y_mix, rel_mix,
                                                m.eta, m.sce_xi1, m.sce_xi2, self.ignore_index,
                                                count_override=n_reliable)
        loss = loss_sup + loss_unsup
        logs = {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(), "gamma": gamma,
                "alpha_t": alpha_t, "reliable_fraction": reliable.sum() / valid_u.sum().clamp_min(1),
                "lambda_u": m.eta * n_valid.float() / n_reliable.clamp_min(1).float()}

        if self.needs_rep:
            # 8. momentum prototypes from teacher features of labeled pixels and reliable
            #    unlabeled pixels (Eq. 15-18), at stride 4
            with torch.no_grad():
                t_rep = t_out["rep"].float()
                labels_small = torch.cat([resize_nearest(y_l, feat_size), resize_nearest(y_hat, feat_size)])
                feats = t_rep.permute(0, 2, 3, 1).reshape(-1, t_rep.shape[1])
                sums, counts = class_feature_sums(feats, labels_small.reshape(-1), self.student.num_classes,
                                                  self.ignore_index)
                self.prototypes.update(comm.sum(sums), comm.sum(counts), m.prototype_momentum)
            logs["first_prototype_share"] = prototype_share_left(m.prototype_momentum,
                                                                 ctx.step - self.first_semi_step(ctx))

        if m.contrastive:
            # 9. contrastive loss at stride 4 (labels nearest, probabilities from stride-4 logits)
            with torch.no_grad():
                prob_small = torch.cat([t_logits[:b_l], t_logits_u_mix]).softmax(1)
                labels_small = torch.cat([resize_nearest(y_l, feat_size), resize_nearest(y_mix, feat_size)])
                rel_small = resize_nearest(rel_mix, feat_size)
                unrel_small = ~rel_small & resize_nearest(valid_mix, feat_size)
                unrel_small = torch.cat([unrel_small.new_zeros((b_l, *unrel_small.shape[1:])), unrel_small])
                is_labeled = torch.arange(b_l + b_u, device=x_l.device) < b_l
                z_t = torch.cat([t_out["rep"][:b_l], t_rep_mix])
                image_ids = torch.cat([self.global_image_ids(b_l),
                                       self.global_image_ids(b_u, offset=b_l * comm.world_size)])
            loss_c, stats = contrastive_loss(
                s_out["rep"], z_t, prob_small, labels_small, is_labeled, unrel_small,
                self.prototypes.prototypes, self.prototypes.initialized, self.queues, self.contrastive_cfg,
                seed=self._step_seed(ctx.step), image_ids=image_ids, comm=comm)
            loss = loss + m.lambda_c * loss_c
            logs.update({"loss_contrastive": loss_c.detach(), "anchor_classes": stats["num_anchor_classes"],
                         "anchors": stats["num_anchors"]})
            logs["per_class/anchors"] = stats["anchors_per_class"]
            logs["per_class/negatives"] = stats["negatives_per_class"]
            logs["per_class/queue_fill"] = stats["queue_fill"]
        if "mask" in unlabeled:  # diagnostics only: the unlabeled masks are never trained on
            with torch.no_grad():
                gt = apply_cutmix(box, partner, unlabeled["mask"])[0]
                logs["diag/pseudo_label_precision"] = self._pseudo_label_precision(gt, y_mix, rel_mix)
                if m.contrastive:
                    logs.update(self._premise_diagnostics(gt, prob_small[b_l:], unrel_small[b_l:]))
        return loss, logs

    def _pseudo_label_precision(self, gt, y_hat, reliable) -> torch.Tensor:
        """Share of reliable pixels whose pseudo-label is the true class (NaN when none)."""
        valid = reliable & (gt != self.ignore_index)
        return (y_hat[valid] == gt[valid]).float().mean() if bool(valid.any()) else torch.tensor(float("nan"))

    def _premise_diagnostics(self, gt, prob_small_u, unrel_small_u) -> dict:
        """Where unlabeled images do have masks (never used for training): how often an
        unreliable pixel's true class is among the classes it was made a negative for (the
        paper's premise says: rarely), per (pixel, class) pair (``false_negative_rate``) and per
        pixel (``unreliable_pixels_true_class_negative``)."""
        gt_small = resize_nearest(gt, prob_small_u.shape[-2:])
        neg = unlabeled_negative_mask(unrel_small_u, class_rank(prob_small_u), self.m.r_l,
                                      min(self.m.r_h, prob_small_u.shape[1]))
        known = gt_small != self.ignore_index
        neg = neg & known.unsqueeze(1)
        hits = neg.gather(1, gt_small.clamp_max(prob_small_u.shape[1] - 1).unsqueeze(1))[:, 0] & known
        pairs = neg.sum()
        false_negative_rate = hits.sum().float() / pairs.clamp_min(1).float()
        # per pixel: of the unreliable pixels used as negatives, how many had their true class pushed away
        used = neg.any(1) & known
        pixels_hit = hits.sum().float() / used.sum().clamp_min(1).float()
        return {"diag/false_negative_rate": false_negative_rate,
                "diag/unreliable_pixels_true_class_negative": pixels_hit, "diag/negative_pairs": pairs.float()}

    def after_optimizer_step(self, ctx: StepContext) -> None:
        start = self.first_semi_step(ctx) if self.m.ema_from_semi_start else 0
        ema_update(self.teacher, self.student, ema_momentum(ctx.step, self.m.ema_momentum, start, self.m.ema_ramp))
