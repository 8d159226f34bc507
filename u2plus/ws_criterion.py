"""The weakly-supervised terms (paper Sec. 3.1 and 3.7, Eq. 5-8 and 29-31) as one module: AFA's
single-stage recipe (Ru et al., CVPR 2022) plus U2PL+'s contrastive loss.

From what one training step has (the images, their image-level tags, the student's class logits,
CAMs, affinity, segmentation logits and representations, the teacher's representations) it gives

1. ``L_s``: multi-label soft margin loss of the classification head (Eq. 6);
2. CAM pseudo-labels: CAMs (Eq. 5) min-max normalised per present class, propagated by a random
   walk over the predicted affinity and refined by PAR (colour and position), then thresholded
   (foreground above ``cam_fg_threshold``, background at or below ``cam_bg_threshold``, ignore
   between; ``single_threshold``: Eq. 8 with one ``cam_beta``) (:func:`cam_pseudo_label_maps`);
3. ``L_u``: cross-entropy of the segmentation head on them (Eq. 7), weight ``seg_weight``;
4. ``L_aff``: AFA's affinity loss against the PAR-refined CAM labels, weight ``affinity_weight``;
5. with ``contrastive``: ``L_c`` (Eq. 10, Algorithm 1) with anchors ``M^c > beta`` (Eq. 29), the
   momentum prototype of those anchors' teacher features as positive (Eq. 30, 18) and as negatives
   of ``c`` the pixels of images without ``c`` and those with ``M^c < beta`` in images with ``c``
   (Eq. 31) (:func:`u2plus.losses.contrastive_masks.weakly_supervised_masks`), on the shared
   :func:`u2plus.losses.contrastive.contrastive_loss` with its class queues. ``beta`` is
   ``cam_beta``. Classes are the C - 1 foreground classes (those with a CAM).

Terms 3 and 5 (and the random walk of 2) start with ``active`` (the recipe's
``method.sup_only_fraction``: AFA trains the seg head from iteration 6,000 of 20,000); the
affinity trains from the first step, on the PAR-refined CAMs alone, so that the walk starts with
a trained affinity rather than a uniform one (AFA switches it on with the seg head). Under
torchrun each term is this process's share of the global mean, as in
:class:`u2plus.criterion.U2PLPlusCriterion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .comm import LOCAL, Comm
from .criterion import resize_nearest
from .losses.affinity import affinity_labels, affinity_loss, radius_mask, random_walk
from .losses.cam import cam_pseudo_labels, multilabel_soft_margin_loss, normalise_cams
from .losses.contrastive import ContrastiveConfig, contrastive_loss
from .losses.contrastive_masks import weakly_supervised_masks
from .losses.par import pixel_adaptive_refinement
from .losses.prototypes import PrototypeMemory, masked_class_feature_sums
from .losses.queues import ClassQueues
from .losses.supervised import pixel_cross_entropy

__all__ = ["WSCriterionConfig", "WeaklySupervisedCriterion", "cam_pseudo_label_maps", "thresholds"]


@dataclass
class WSCriterionConfig(ContrastiveConfig):
    """Knobs of the weakly-supervised terms (AFA's defaults) and the Table XIV switches."""

    cls_pooling: str = "max"  # global pooling of f_cls: max (AFA) | avg
    cam_fg_threshold: float = 0.55  # foreground where the refined CAM is above
    cam_bg_threshold: float = 0.35  # background where it is at or below; ignore between
    # beta of Eq. 8 (single_threshold), Eq. 29 (anchors) and Eq. 31 (negatives), and of the dense
    # CAM-quality labels (AFA's background score)
    cam_beta: float = 0.45
    single_threshold: bool = False  # Eq. 8: foreground > cam_beta, background elsewhere
    par_dilations: list = field(default_factory=lambda: [1, 2, 4, 8, 12, 24])
    par_iterations: int = 10
    par_downscale: int = 2  # PAR runs on the image downsampled by this factor (AFA: 2)
    random_walk_power: int = 2  # the affinity is raised to this power before the walk (AFA: 2)
    affinity_radius: int = 8  # positions farther apart (rows or columns) are not linked
    seg_weight: float = 0.1  # weight of L_u, the seg head's CE on the CAM pseudo-labels (Eq. 7)
    affinity_weight: float = 0.1
    # Table XIV: negatives of c from images without c (1[y^c = 0]) and from pixels with M^c < beta
    negatives_absent_class: bool = True
    negatives_low_cam: bool = True


def thresholds(cfg: WSCriterionConfig) -> tuple[float, float]:
    """(foreground, background) thresholds of the pseudo-labels."""
    return (cfg.cam_beta, cfg.cam_beta) if cfg.single_threshold else (cfg.cam_fg_threshold, cfg.cam_bg_threshold)


def cam_pseudo_label_maps(images: Tensor, cams: Tensor, tags: Tensor, affinity: Tensor,
                          cfg: WSCriterionConfig, propagate: bool = True) -> tuple[Tensor, Tensor | None]:
    """The refined foreground CAMs at the image size, ``[B, C - 1, H, W]`` each:
    ``PAR(M)`` (AFA's affinity targets) and ``PAR(RW(M))`` (the pseudo-labels' maps; None
    without ``propagate``), with ``M`` the CAMs of Eq. 5 min-max normalised per present class.

    Args:
        images: ``[B, 3, H, W]`` (normalised); cams: ``[B, C - 1, h, w]`` (Eq. 5);
        tags: ``[B, C]`` (background first); affinity: ``[B, h * w, h * w]``.
    """
    size = images.shape[-2:]
    maps = normalise_cams(cams.detach().float(), tags[:, 1:])
    if propagate:  # both refined in one PAR call (one kernel)
        h, w = maps.shape[-2:]
        mask = radius_mask(h, w, cfg.affinity_radius, maps.device)
        maps = torch.cat([maps, random_walk(maps, affinity, cfg.random_walk_power, mask)], dim=1)
    small = F.interpolate(images.float(), scale_factor=1.0 / cfg.par_downscale, mode="bilinear",
                          align_corners=False, recompute_scale_factor=False)
    refined = pixel_adaptive_refinement(small, maps, cfg.par_dilations, cfg.par_iterations)
    refined = F.interpolate(refined, size=size, mode="bilinear", align_corners=False)
    return tuple(refined.chunk(2, dim=1)) if propagate else (refined, None)


class WeaklySupervisedCriterion(nn.Module):
    """``L_s + seg_weight * L_u + affinity_weight * L_aff (+ lambda_c * L_c)`` of one step (see the
    module docstring). Owns the momentum prototypes and class queues of the C - 1 foreground
    classes (buffers: in its ``state_dict``)."""

    def __init__(self, cfg: WSCriterionConfig, num_classes: int, rep_dim: int = 256, ignore_index: int = 255,
                 comm: Comm = LOCAL):
        super().__init__()
        self.cfg, self.num_classes, self.ignore_index, self.comm = cfg, num_classes, ignore_index, comm
        foreground = num_classes - 1
        self.prototypes = PrototypeMemory(foreground, rep_dim) if cfg.contrastive else None
        self.queues = ClassQueues(foreground, rep_dim, cfg.queue_size) if cfg.contrastive and cfg.use_queue else None

    def forward(self, *, images: Tensor, tags: Tensor, cls_logits: Tensor, cams: Tensor, affinity: Tensor,
                seg_logits: Tensor, valid: Tensor | None = None, student_rep: Tensor | None = None,
                teacher_rep: Tensor | None = None, active: bool = True, seed: int = 0) -> dict[str, Tensor]:
        """The terms of one step.

        Args:
            images: ``[B, 3, H, W]`` the (normalised) training crops; tags: ``[B, C]`` multi-hot,
                background first; valid: ``[B, H, W]`` bool, False on crop padding.
            cls_logits: ``[B, C - 1]``; cams: ``[B, C - 1, h, w]`` (Eq. 5, with gradient: only
                detached maps are used here); affinity: ``[B, h * w, h * w]``;
            seg_logits: ``[B, C, h', w']``; student_rep, teacher_rep: ``[B, D, h', w']``
                (L2-normalised), with ``contrastive``.
            active: whether the pseudo-label terms are on (after the classifier-only start).
            seed: changes every step: the seed of L_c's draws.

        Returns:
            ``loss``, ``loss_sup``, ``loss_affinity`` and, when active, ``loss_unsup``
            (``loss_contrastive``) and detached diagnostics: ``labelled_fraction`` and
            ``foreground_fraction`` of the pseudo-labels, ``anchors``, ``per_class/anchors`` ... of L_c.
        """
        c, comm, ign = self.cfg, self.comm, self.ignore_index
        world = comm.world_size
        if valid is None:
            valid = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        fg, bg = thresholds(c)
        with torch.no_grad():
            refined, walked = cam_pseudo_label_maps(images, cams, tags, affinity, c, propagate=active)
            grid_labels = resize_nearest(cam_pseudo_labels(refined, fg, bg, ign, valid), cams.shape[-2:])
            aff_targets = affinity_labels(grid_labels, c.affinity_radius, ign)
        loss_sup = multilabel_soft_margin_loss(cls_logits, tags[:, 1:]) / world
        loss_aff = affinity_loss(affinity, aff_targets) / world
        loss = loss_sup + c.affinity_weight * loss_aff
        out = {"loss_sup": loss_sup, "loss_affinity": loss_aff}
        if active:
            with torch.no_grad():
                labels = cam_pseudo_labels(walked, fg, bg, ign, valid)
                count = comm.sum((labels != ign).sum()) if world > 1 else None
                labelled = labels != ign
                diagnostics = {"labelled_fraction": labelled.sum() / valid.sum().clamp_min(1),
                               "foreground_fraction": (labelled & (labels > 0)).sum() / labelled.sum().clamp_min(1)}
            out["loss_unsup"] = pixel_cross_entropy(seg_logits, labels, ign, count_override=count)
            loss = loss + c.seg_weight * out["loss_unsup"]
            if c.contrastive:
                out["loss_contrastive"], stats = self.contrastive(walked, tags, valid, student_rep, teacher_rep, seed)
                loss = loss + c.lambda_c * out["loss_contrastive"]
                diagnostics.update({"anchors": stats["num_anchors"], "anchor_classes": stats["num_anchor_classes"],
                                    "per_class/anchors": stats["anchors_per_class"],
                                    "per_class/negatives": stats["negatives_per_class"],
                                    "per_class/queue_fill": stats["queue_fill"]})
            out.update(diagnostics)
        out["loss"] = loss
        return out

    def contrastive(self, cams: Tensor, tags: Tensor, valid: Tensor, student_rep: Tensor, teacher_rep: Tensor,
                    seed: int) -> tuple[Tensor, dict]:
        """L_c with the masks of Eq. 29 and 31 at the representation's resolution and the
        prototypes of Eq. 30 (updated first, from the teacher's features of this step's anchors)."""
        if student_rep is None or teacher_rep is None:
            raise ValueError("WeaklySupervisedCriterion: student_rep and teacher_rep are needed (contrastive)")
        c, comm = self.cfg, self.comm
        with torch.no_grad():
            size = student_rep.shape[-2:]
            cams_small = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
            anchors, negatives = weakly_supervised_masks(cams_small, tags[:, 1:], c.cam_beta,
                                                         resize_nearest(valid, size), c.negatives_absent_class,
                                                         c.negatives_low_cam)
            z_t = teacher_rep.detach().float()
            sums, counts = masked_class_feature_sums(z_t, anchors)
            self.prototypes.update(comm.sum(sums), comm.sum(counts), c.prototype_momentum)
            b = student_rep.shape[0]
            image_ids = comm.rank * b + torch.arange(b, device=student_rep.device)
        return contrastive_loss(student_rep, z_t, anchors, negatives, self.prototypes.prototypes,
                                self.prototypes.initialized, self.queues, c, seed=seed, image_ids=image_ids, comm=comm)
