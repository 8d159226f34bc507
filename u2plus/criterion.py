"""The U2PL+ loss terms as one drop-in module for any mean-teacher loop.

``U2PLPlusCriterion`` turns what a mean-teacher step already has (teacher logits and
representations of labeled and weakly augmented unlabeled images, the student's outputs on the
labeled and the strongly augmented, optionally CutMixed unlabeled images, the labels) into the
unsupervised terms of the paper:

1. entropy (Eq. 11), dynamic partition alpha_t (Eq. 13), threshold gamma_t (Eq. 12) -> reliable pixels
2. prototypical denoising (Eq. 19-20) -> pseudo-labels on reliable pixels
3. the same CutMix boxes applied to pseudo-labels, masks and teacher outputs
4. adaptive symmetric CE ``L_u`` (Eq. 4, 14)
5. momentum prototypes (Eq. 15-18)
6. contrastive ``L_c`` with per-class queues (Eq. 10, 21-28)

and returns ``L_u + lambda_c * L_c`` with every term and diagnostic in a dict. The prototypes and
the queues are buffers of the module (its ``state_dict``). Under ``torchrun`` give it a
:class:`u2plus.comm.Comm`: the quantile, the prototypes and the keys are then global.

    criterion = U2PLPlusCriterion(CriterionConfig(), num_classes=21, rep_dim=256)
    out = criterion(labels=y_l, teacher_logits_l=t_l, teacher_logits_u=t_u, teacher_rep_l=zt_l,
                    teacher_rep_u=zt_u, student_logits_u=s_u, student_rep_l=zs_l, student_rep_u=zs_u,
                    progress=step / total_steps, cutmix=(box, partner), seed=step)
    loss = supervised_loss + out["loss"]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .comm import LOCAL, Comm
from .losses.contrastive import ContrastiveConfig, contrastive_loss
from .losses.contrastive_masks import class_rank, semi_supervised_masks, unlabeled_negative_mask
from .losses.denoise import denoise_probabilities, prototype_weights
from .losses.entropy import pixel_entropy
from .losses.partition import (
    classwise_entropy_threshold,
    entropy_threshold,
    pseudo_labels,
    reliable_mask,
    unreliable_fraction,
)
from .losses.alignment import align_distribution, class_frequencies, mean_probabilities
from .losses.prototypes import PrototypeMemory, class_feature_sums, prototype_share_left
from .losses.queues import ClassQueues
from .losses.sce import adaptive_unsupervised_loss
from .losses.supervised import upsample_logits
from .mixing import paste

__all__ = ["CriterionConfig", "U2PLPlusCriterion", "resize_nearest"]


@dataclass
class CriterionConfig(ContrastiveConfig):
    """Every knob of the U2PL+ terms (paper defaults), the contrastive ones included
    (:class:`ContrastiveConfig`). The presets ``selftrain`` and ``u2pl`` switch parts off."""

    alpha0: float = 0.2  # initial unreliable share (Eq. 13)
    dynamic_partition: bool = True  # DPA: alpha_t = alpha0 * (1 - t/T); off: alpha0 throughout
    # beyond the paper: gamma_t per class predicted by the teacher (each class keeps 1 - alpha_t
    # of its pixels reliable), so thin and rare classes are not left without pseudo-labels
    classwise_partition: bool = False
    # beyond the paper: distribution alignment (losses/alignment.py): the teacher's probabilities
    # times (labeled class frequency / teacher's mean probability), both running means with this
    # momentum, before the partition and the pseudo-labels, so that under-predicted classes
    # (thin, rare) are raised towards their labeled share
    distribution_alignment: bool = False
    alignment_momentum: float = 0.99
    eta: float = 1.0  # weight of L_u (Eq. 14)
    sce_xi1: float = 1.0
    sce_xi2: float = 0.1  # reverse CE weight of SCE (Eq. 4); 0 = plain CE
    prototype_denoising: bool = True  # PD (Eq. 19-20)


def resize_nearest(labels: Tensor, size) -> Tensor:
    """Nearest resize of ``[B, H, W]`` integer/bool maps (labels, masks) to ``size``."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    dtype = labels.dtype
    out = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0]
    return out.to(dtype)


Mix = tuple  # (box [B_u, H, W] bool, partner [B_u] long, from_labeled: bool)


def _mixes(cutmix, mix_from_labeled: bool) -> list[Mix]:
    """The ``cutmix`` argument as a list of ``(box, partner, from_labeled)``, applied in order."""
    if cutmix is None:
        return []
    if isinstance(cutmix, tuple) and len(cutmix) == 2 and isinstance(cutmix[0], Tensor):
        cutmix = [cutmix]
    return [(m[0], m[1], m[2] if len(m) > 2 else mix_from_labeled) for m in cutmix]


def _mix(mixes: list[Mix], tensors: tuple[Tensor, ...], labeled: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Each mix in turn: ``where(box, s[partner], t)`` for each ``[B, ..., H, W]`` tensor ``t``,
    whose source ``s`` is ``t`` itself (CutMix within the unlabeled batch) or, for a mix from the
    labeled stream, the labeled images' tensor in ``labeled`` (DACS's ClassMix, rare-class
    paste); the box resized (nearest) to ``t``'s size. No mixes: ``tensors`` unchanged."""
    for box, partner, from_labeled in mixes:
        tensors = tuple(paste(resize_nearest(box, t.shape[-2:]), partner, t, s)
                        for t, s in zip(tensors, labeled if from_labeled else tensors))
    return tensors


class U2PLPlusCriterion(nn.Module):
    """``L_u + lambda_c * L_c`` of U2PL+ for one mean-teacher step (see the module docstring).

    Args:
        cfg: the knobs; num_classes, rep_dim: of the network; ignore_index: of the labels;
        comm: collectives for multi-process training (``LOCAL`` at one process).
    """

    def __init__(self, cfg: CriterionConfig, num_classes: int, rep_dim: int = 256, ignore_index: int = 255,
                 comm: Comm = LOCAL):
        super().__init__()
        self.cfg, self.num_classes, self.ignore_index, self.comm = cfg, num_classes, ignore_index, comm
        self.prototypes = PrototypeMemory(num_classes, rep_dim) if self.needs_teacher_rep else None
        self.queues = ClassQueues(num_classes, rep_dim, cfg.queue_size) if cfg.contrastive and cfg.use_queue else None
        # steps taken, for the share of the first prototypes still left (a buffer: resumes with the run)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        if cfg.distribution_alignment:
            if not 0.0 <= cfg.alignment_momentum < 1.0:
                raise ValueError(f"alignment_momentum={cfg.alignment_momentum} must be in [0, 1)")
            # running class priors (sum 1): of labeled pixels, and of the teacher on unlabeled ones
            self.register_buffer("label_prior", torch.zeros(num_classes))
            self.register_buffer("teacher_prior", torch.zeros(num_classes))

    @property
    def needs_teacher_rep(self) -> bool:
        """Whether ``teacher_rep_l/u`` must be given (L_c or prototypical denoising)."""
        return self.cfg.contrastive or self.cfg.prototype_denoising

    @property
    def needs_student_rep(self) -> bool:
        """Whether ``student_rep_l/u`` must be given (L_c)."""
        return self.cfg.contrastive

    def _aligned(self, prob_u: Tensor, labels: Tensor, valid_u: Tensor) -> Tensor:
        """``prob_u`` aligned to the labeled class distribution after updating both running
        priors with this step's global batch (the first step sets them)."""
        m, comm = self.cfg.alignment_momentum, self.comm
        counts = comm.sum(class_frequencies(labels, self.num_classes, self.ignore_index).to(prob_u))
        prob_sum, n = mean_probabilities(prob_u, valid_u)
        prob_sum, n = comm.sum(prob_sum), comm.sum(n)
        first = not bool(self.teacher_prior.sum() > 0)
        for prior, value, known in ((self.label_prior, counts / counts.sum().clamp_min(1), counts.sum() > 0),
                                    (self.teacher_prior, prob_sum / n.clamp_min(1), n > 0)):
            if bool(known):
                prior.copy_(value if first or not bool(prior.sum() > 0) else m * prior + (1 - m) * value)
        if not bool(self.label_prior.sum() > 0):
            return prob_u
        return align_distribution(prob_u, self.label_prior, self.teacher_prior)

    def forward(
        self,
        *,
        labels: Tensor,
        teacher_logits_l: Tensor,
        teacher_logits_u: Tensor,
        student_logits_u: Tensor,
        teacher_rep_l: Tensor | None = None,
        teacher_rep_u: Tensor | None = None,
        student_rep_l: Tensor | None = None,
        student_rep_u: Tensor | None = None,
        valid_u: Tensor | None = None,
        progress: float = 0.0,
        cutmix: tuple[Tensor, Tensor] | list[tuple] | None = None,
        mix_from_labeled: bool = False,
        seed: int = 0,
        unlabeled_labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The U2PL+ terms of one step.

        Args:
            labels: ``[B_l, H, W]`` labels of the labeled images (``ignore_index`` where void);
                ``H, W`` is the label resolution, where pseudo-labels and ``L_u`` live.
            teacher_logits_l, teacher_logits_u: ``[B, C, h, w]`` teacher logits (any stride) on
                the labeled and the weakly augmented unlabeled images (before CutMix).
            student_logits_u: ``[B_u, C, h', w']`` student logits on the strong (mixed) view.
            teacher_rep_l, teacher_rep_u: ``[B, D, h, w]`` teacher representations (L2-normalised
                per pixel), when :attr:`needs_teacher_rep`.
            student_rep_l, student_rep_u: the student's, on the labeled and the strong (mixed)
                images, when :attr:`needs_student_rep`; they carry the gradient of ``L_c``.
            valid_u: ``[B_u, H, W]`` bool, False on crop padding (never pseudo-labelled).
            progress: training progress ``t / T`` in ``[0, 1]`` (Eq. 13).
            cutmix: ``(box [B_u, H, W] bool, partner [B_u] long)`` used to mix the strong
                images (``where(box, x[partner], x)``); pseudo-labels and teacher outputs are
                mixed alike. None: no CutMix. A list of such mixes, each ``(box, partner)`` or
                ``(box, partner, from_labeled)``, is applied in its order (CutMix, then a
                rare-class paste from the labeled batch: ``method.rare_paste_prob``).
            mix_from_labeled: (each mix's default) the boxes hold pixels of the *labeled* image
                ``partner[i]`` (``partner`` indexes the labeled batch): DACS's ClassMix of source pixels onto
                target images in the domain-adaptive setting. There the mixed pseudo-labels are
                the labels, reliable and valid where not ignored, and the mixed teacher outputs
                the labeled images'.
            seed: a number that changes every step (e.g. the step): the seed of the sampling.
            unlabeled_labels: ``[B_u, H, W]`` true labels of the unlabeled images, if known; used
                only for the ``diag/*`` entries, never for a loss.

        Returns:
            ``loss`` (``L_u + lambda_c * L_c``; each process's share of the global mean under
            torchrun), ``loss_unsup``, ``loss_contrastive`` (with L_c), and detached
            diagnostics: ``gamma``, ``alpha_t``, ``reliable_fraction``, ``lambda_u``,
            ``first_prototype_share``, ``anchors``, ``anchor_classes``, ``per_class/*``
            (``[C]`` vectors), ``diag/*`` (with ``unlabeled_labels``).
        """
        c, comm, ign = self.cfg, self.comm, self.ignore_index
        size = labels.shape[-2:]
        b_l, b_u = teacher_logits_l.shape[0], teacher_logits_u.shape[0]
        if self.needs_teacher_rep and (teacher_rep_l is None or teacher_rep_u is None):
            raise ValueError("U2PLPlusCriterion: teacher_rep_l/u are needed (contrastive or prototype_denoising)")
        if self.needs_student_rep and (student_rep_l is None or student_rep_u is None):
            raise ValueError("U2PLPlusCriterion: student_rep_l/u are needed (contrastive)")
        with torch.no_grad():
            t_logits_l, t_logits_u = teacher_logits_l.detach().float(), teacher_logits_u.detach().float()
            prob_u = upsample_logits(t_logits_u, size).softmax(1)
            valid_u = (torch.ones_like(prob_u[:, 0], dtype=torch.bool) if valid_u is None
                       else valid_u.to(device=prob_u.device, dtype=torch.bool))
            if c.distribution_alignment:  # beyond the paper: raise under-predicted classes
                prob_u = self._aligned(prob_u, labels, valid_u)
            # 1. entropy, dynamic partition, threshold (Eq. 11-13) over the global unlabeled batch
            entropy = pixel_entropy(prob_u)
            alpha_t = unreliable_fraction(c.alpha0, progress, c.dynamic_partition)
            all_valid = comm.cat(valid_u.reshape(-1).to(torch.uint8)).bool()
            if c.classwise_partition:  # one gamma_t per predicted class (beyond the paper)
                predicted = prob_u.max(dim=1).indices
                gamma_c = classwise_entropy_threshold(comm.cat(entropy.reshape(-1)), comm.cat(predicted.reshape(-1)),
                                                      alpha_t, prob_u.shape[1], valid=all_valid)
                present = gamma_c > 0
                gamma = gamma_c[present].mean() if bool(present.any()) else gamma_c.sum()
                threshold = gamma_c[predicted]
            else:
                gamma = threshold = entropy_threshold(comm.cat(entropy.reshape(-1)), alpha_t, valid=all_valid)
            reliable = reliable_mask(entropy, threshold) & valid_u
            # 2. prototypical denoising (Eq. 19-20): the partition stays the one from H(p)
            label_prob = prob_u
            if c.prototype_denoising and bool(self.prototypes.initialized.any()):
                w = prototype_weights(teacher_rep_u.detach().float(), self.prototypes.prototypes,
                                      self.prototypes.initialized)
                label_prob = denoise_probabilities(prob_u, upsample_logits(w, size))
            y_hat = pseudo_labels(label_prob, reliable, ign)
            # 3. the strong view's CutMix applied to everything derived from the teacher
            unlabeled_side = (y_hat, reliable, valid_u, t_logits_u)
            labeled_known = labels != ign
            mixes = _mixes(cutmix, mix_from_labeled)
            y_mix, rel_mix, valid_mix, t_logits_u_mix = _mix(
                mixes, unlabeled_side, (labels, labeled_known, labeled_known, t_logits_l))

        # 4. adaptive SCE (Eq. 4, 14): global counts of reliable and of valid mixed pixels, one collective
        n_reliable, n_valid = comm.sum(torch.stack([(rel_mix & (y_mix != ign)).sum(), valid_mix.sum()])).unbind()
        loss_unsup = adaptive_unsupervised_loss(upsample_logits(student_logits_u, size).float(), y_mix, rel_mix,
                                                c.eta, c.sce_xi1, c.sce_xi2, ign, count_override=n_reliable)
        loss = loss_unsup
        out = {"loss_unsup": loss_unsup, "gamma": gamma, "alpha_t": alpha_t,
               "reliable_fraction": reliable.sum() / valid_u.sum().clamp_min(1),
               "lambda_u": c.eta * n_valid.float() / n_reliable.clamp_min(1).float()}

        feat_size = t_logits_l.shape[-2:]
        if self.needs_teacher_rep:
            # 5. momentum prototypes (Eq. 15-18) from teacher features of labeled pixels and
            #    reliable unlabeled pixels, at the representation's resolution
            with torch.no_grad():
                t_rep = torch.cat([teacher_rep_l, teacher_rep_u]).detach().float()
                labels_small = torch.cat([resize_nearest(labels, t_rep.shape[-2:]),
                                          resize_nearest(y_hat, t_rep.shape[-2:])])
                feats = t_rep.permute(0, 2, 3, 1).reshape(-1, t_rep.shape[1])
                sums, counts = class_feature_sums(feats, labels_small.reshape(-1), self.num_classes, ign)
                self.prototypes.update(comm.sum(sums), comm.sum(counts), c.prototype_momentum)
            out["first_prototype_share"] = prototype_share_left(c.prototype_momentum, int(self.steps))

        if c.contrastive:
            # 6. contrastive loss at the representation's resolution (labels nearest,
            #    probabilities from the teacher's logits there)
            with torch.no_grad():
                feat_size = teacher_rep_l.shape[-2:]
                prob_small = torch.cat([upsample_logits(t_logits_l, feat_size),
                                        upsample_logits(t_logits_u_mix, feat_size)]).softmax(1)
                labels_small = torch.cat([resize_nearest(labels, feat_size), resize_nearest(y_mix, feat_size)])
                rel_small = resize_nearest(rel_mix, feat_size)
                unrel_small = ~rel_small & resize_nearest(valid_mix, feat_size)
                unrel_small = torch.cat([unrel_small.new_zeros((b_l, *unrel_small.shape[1:])), unrel_small])
                is_labeled = torch.arange(b_l + b_u, device=labels.device) < b_l
                z_t_u = _mix(mixes, (teacher_rep_u.detach(),), (teacher_rep_l.detach(),))[0]
                z_t = torch.cat([teacher_rep_l, z_t_u])
                rank, world = comm.rank, comm.world_size
                image_ids = torch.cat([rank * b_l + torch.arange(b_l), b_l * world + rank * b_u + torch.arange(b_u)])
                anchors, negatives = semi_supervised_masks(labels_small, prob_small, is_labeled, unrel_small, c, ign)
            loss_c, stats = contrastive_loss(
                torch.cat([student_rep_l, student_rep_u]), z_t, anchors, negatives, self.prototypes.prototypes,
                self.prototypes.initialized, self.queues, c, seed=seed, image_ids=image_ids, comm=comm)
            loss = loss + c.lambda_c * loss_c
            out.update({"loss_contrastive": loss_c, "anchor_classes": stats["num_anchor_classes"],
                        "anchors": stats["num_anchors"], "per_class/anchors": stats["anchors_per_class"],
                        "per_class/negatives": stats["negatives_per_class"],
                        "per_class/queue_fill": stats["queue_fill"]})
        if unlabeled_labels is not None:  # diagnostics only: never trained on
            with torch.no_grad():
                gt = _mix(mixes, (unlabeled_labels.to(y_mix.device),), (labels,))[0]
                out["diag/pseudo_label_precision"] = self._pseudo_label_precision(gt, y_mix, rel_mix)
                out.update(self._pseudo_label_recall(gt, y_mix, rel_mix))
                if c.contrastive:
                    out.update(self._premise_diagnostics(gt, prob_small[b_l:], unrel_small[b_l:]))
        self.steps += 1
        out = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in out.items()}
        out["loss"] = loss
        out["loss_unsup"] = loss_unsup
        if c.contrastive:
            out["loss_contrastive"] = loss_c
        return out

    def _pseudo_label_precision(self, gt: Tensor, y_hat: Tensor, reliable: Tensor) -> Tensor:
        """Share of reliable pixels whose pseudo-label is the true class (NaN when none)."""
        valid = reliable & (gt != self.ignore_index)
        return (y_hat[valid] == gt[valid]).float().mean() if bool(valid.any()) else torch.tensor(float("nan"))

    def _pseudo_label_recall(self, gt: Tensor, y_hat: Tensor, reliable: Tensor) -> dict:
        """Per class over the global batch: ``per_class/pseudo_label_recall``, the share of its
        true pixels that got it as a reliable pseudo-label, and ``per_class/pseudo_label_share``,
        its share of all reliable pseudo-labels (NaN / 0 where a class is absent). A class whose
        recall falls to 0 gets no unlabeled supervision: self-training's small-class collapse."""
        known = gt != self.ignore_index
        hit = reliable & known & (y_hat == gt)
        n = self.num_classes
        counts = torch.stack([torch.bincount(gt[m].long(), minlength=n)[:n]
                              for m in (hit, known)] + [torch.bincount(y_hat[reliable & known].long(), minlength=n)[:n]])
        tp, true, given = self.comm.sum(counts.float()).unbind()
        recall = torch.where(true > 0, tp / true.clamp_min(1), torch.full_like(tp, float("nan")))
        return {"per_class/pseudo_label_recall": recall, "per_class/pseudo_label_share": given / given.sum().clamp_min(1)}

    def _premise_diagnostics(self, gt: Tensor, prob_small_u: Tensor, unrel_small_u: Tensor) -> dict:
        """How often an unreliable pixel's true class is among the classes it was made a
        negative for (the paper's premise says: rarely), per (pixel, class) pair
        (``false_negative_rate``) and per pixel (``unreliable_pixels_true_class_negative``)."""
        gt_small = resize_nearest(gt, prob_small_u.shape[-2:])
        neg = unlabeled_negative_mask(unrel_small_u, class_rank(prob_small_u), self.cfg.r_l,
                                      min(self.cfg.r_h, prob_small_u.shape[1]))
        known = gt_small != self.ignore_index
        neg = neg & known.unsqueeze(1)
        hits = neg.gather(1, gt_small.clamp_max(prob_small_u.shape[1] - 1).unsqueeze(1))[:, 0] & known
        pairs = neg.sum()
        used = neg.any(1) & known
        return {"diag/false_negative_rate": hits.sum().float() / pairs.clamp_min(1).float(),
                "diag/unreliable_pixels_true_class_negative": hits.sum().float() / used.sum().clamp_min(1).float(),
                "diag/negative_pairs": pairs.float()}
