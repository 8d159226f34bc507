"""Pixel-level contrastive loss with per-class memory banks (paper Eq. 10, Algorithm 1).

:func:`contrastive_loss` takes anchor and negative masks (the semi-supervised rules of Eq. 21-28
are :func:`u2plus.losses.contrastive_masks.semi_supervised_masks`), samples anchors, pushes the
negative keys into the class queues (:mod:`u2plus.losses.queues`) and evaluates the InfoNCE of
Eq. 10 against the class prototypes. Its draws are reproducible at any process count
(:mod:`u2plus.losses.sampling`).

Fault 2 of the conference reference code is not reproduced: the anchors of class ``c`` are
only contrasted with the keys of class ``c``'s own queue ``Q_c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..comm import LOCAL, Comm
from .queues import ClassQueues
from .sampling import (
    SALT_ANCHORS,
    SALT_DRAWS,
    SALT_NEGATIVES,
    arrival_order,
    class_counts,
    gather_pixels,
    merge_keys,
    pixel_keys,
    positions_by_class,
    select_lowest_per_class,
    uniform_draws,
)

__all__ = ["ContrastiveConfig", "contrastive_loss", "pixel_info_nce"]


@dataclass
class ContrastiveConfig:
    """Hyper-parameters and ablation switches of ``L_c`` (paper defaults), shared by the
    semi-supervised and the weakly-supervised criterion: the sampling of Algorithm 1
    (``temperature``, ``num_anchors``, ``num_negatives``, ``use_queue``), the memory (queues,
    momentum prototypes) and the semi-supervised mask rules of
    :mod:`u2plus.losses.contrastive_masks`.

    Attributes:
        temperature: ``tau`` of Eq. 10.
        num_anchors: ``M``, anchors sampled per class (all when fewer).
        num_negatives: ``N``, negative keys per anchor.
        delta_p: anchor probability threshold (Eq. 21-22).
        r_l, r_h: probability rank thresholds (Eq. 26-27).
        use_queue: per-class memory bank ``Q_c``; False = negatives drawn from this step's
            candidates of the anchor's class only.
        rank_threshold: PRT; False = every class ``!= c`` is a negative for labeled pixels and
            every (source) unlabeled pixel with pseudo-label ``!= c`` for unlabeled ones.
        negatives_from: which unlabeled pixels feed the negatives (Table III): "unreliable",
            "reliable" or "both".
        labeled_negatives: whether labeled pixels contribute negatives.
        contrastive, lambda_c: whether the recipe adds ``L_c``, and its weight.
        queue_size: keys per class queue ``Q_c``.
        prototype_momentum: ``m`` of the momentum prototypes (Eq. 18); 0 = in-batch centroids.
            The first prototypes come from a representation head that has not trained yet;
            after N steps about ``m**N`` of them is left (0.999: half after 693 steps, so lower
            it on short schedules; see :func:`u2plus.losses.prototypes.prototype_share_left`).
    """

    temperature: float = 0.5
    num_anchors: int = 256
    num_negatives: int = 50
    delta_p: float = 0.3
    r_l: int = 3
    r_h: int = 20
    use_queue: bool = True
    rank_threshold: bool = True
    negatives_from: str = "unreliable"
    labeled_negatives: bool = True
    contrastive: bool = True
    lambda_c: float = 0.1
    queue_size: int = 30000
    prototype_momentum: float = 0.999


def _info_nce_per_anchor(anchors: Tensor, positives: Tensor, negatives: Tensor, temperature: float,
                         negatives_normalized: bool = False) -> Tensor:
    # float32 even under train.amp: autocast would run the matmul in bf16/fp16
    with torch.autocast(anchors.device.type, enabled=False):
        a = F.normalize(anchors.float(), dim=-1)
        pos = F.normalize(positives.float(), dim=-1)
        # memory-bank keys are stored L2-normalised: skip a pass over the largest tensor [A, N, D]
        neg = negatives.float() if negatives_normalized else F.normalize(negatives.float(), dim=-1)
        s_pos = (a * pos).sum(-1, keepdim=True) / temperature  # [A, 1]
        s_neg = torch.matmul(neg, a.unsqueeze(2)).squeeze(2) / temperature  # [A, N]
        logits = torch.cat([s_pos, s_neg], dim=1)
        return torch.logsumexp(logits, dim=1) - s_pos.squeeze(1)


def pixel_info_nce(anchors: Tensor, positives: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """Pixel-level InfoNCE (Eq. 10), averaged over anchors.

    ``-log(e^{s+/tau} / (e^{s+/tau} + sum_j e^{s-_j/tau}))`` with ``s`` the cosine similarity
    (all inputs are L2-normalised here), computed with ``logsumexp``.

    Args:
        anchors: ``[A, D]``; positives: ``[A, D]``; negatives: ``[A, N, D]``.

    Returns:
        0-dim tensor; ``A == 0`` gives a differentiable zero (never NaN).
    """
    if anchors.shape[0] == 0:
        return anchors.float().sum() * 0.0
    return _info_nce_per_anchor(anchors, positives, negatives, temperature).mean()


def contrastive_loss(
    z_student: Tensor,
    z_teacher: Tensor,
    anchors_mask: Tensor,
    negatives_mask: Tensor,
    prototypes: Tensor,
    proto_valid: Tensor,
    queues: ClassQueues | None,
    cfg: ContrastiveConfig,
    seed: int = 0,
    image_ids: Tensor | None = None,
    comm: Comm = LOCAL,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_c`` of Eq. 10 following Algorithm 1 (docs/method.md step 9), all classes at once.

    1. Anchors of class ``c``: the pixels of ``anchors_mask[:, c]``; up to ``M`` per class sampled
       over the *global* batch; their *student* features (L2-normalised) carry the gradient.
    2. Negative candidates of class ``c``: *teacher* features (detached, normalised) of the
       pixels of ``negatives_mask[:, c]``. Those of all processes (one all-gather) are pushed in one
       :meth:`ClassQueues.enqueue` into ``Q_c``; when a class has more candidates than the queue
       holds, a uniform random subset of ``size`` of them is pushed (it would overwrite itself
       otherwise), which bounds memory.
    3. Each anchor draws ``N`` keys from its own class's queue ``Q_c`` (with replacement), or,
       with ``use_queue=False``, from this step's candidates of its class.
    4. Positive key: the (detached) prototype of the class.
    5. ``L_c`` = mean over all anchors (of all processes) of the classes having anchors, a valid
       prototype and a non-empty queue (resp. candidate set); 0 (differentiable, never NaN) if
       none. Each process returns its share: the sum over its anchors / the global count.

    Every random choice is a function of ``seed`` and the global id of a pixel
    (:func:`pixel_keys`), so one process with batch 2B and two with B each pick the same anchors,
    push the same keys in the same order and draw the same negatives.

    Args:
        z_student, z_teacher: ``[B, D, h, w]`` representations.
        anchors_mask, negatives_mask: ``[B, C, h, w]`` bool, e.g. from
            :func:`u2plus.losses.contrastive_masks.semi_supervised_masks` (Eq. 21-28).
        prototypes: ``[C, D]``; proto_valid: ``[C]`` bool.
        queues: the memory bank (required when ``cfg.use_queue``; updated in place, identically
            on every process).
        seed: seed of this step's draws.
        image_ids: ``[B]`` index of each image in the global batch (default ``0..B-1``).
        comm: collectives (:data:`u2plus.comm.LOCAL` at one process).

    Returns:
        ``(loss, stats)``; stats (detached tensors, global over processes):
        ``anchors_per_class [C]`` (anchors sampled this step), ``negatives_per_class [C]`` (new
        negative candidates this step), ``queue_fill [C]`` (entries per queue after the push;
        zeros without a queue), ``num_anchor_classes`` (classes contributing to the loss) and
        ``num_anchors`` (anchors contributing to the loss).
    """
    if cfg.use_queue and queues is None:
        raise ValueError("contrastive_loss: cfg.use_queue is True but no ClassQueues was given")
    B, D, h, w = z_student.shape
    C = anchors_mask.shape[1]
    dev = z_student.device
    hw = h * w
    if image_ids is None:
        image_ids = torch.arange(B, device=dev)
    image_ids = image_ids.to(dev).long()

    def global_ids(flat: Tensor) -> Tensor:
        return image_ids[flat // hw] * hw + flat % hw

    # anchors (Eq. 21-23): the M lowest-keyed candidates of each class over all processes
    a_flat, a_cls = positions_by_class(anchors_mask)
    a_gid = global_ids(a_flat)
    keep = select_lowest_per_class(pixel_keys(seed, SALT_ANCHORS, a_cls, a_gid), a_cls, cfg.num_anchors, C, comm)
    a_flat, a_cls, a_gid = a_flat[keep], a_cls[keep], a_gid[keep]
    anchors = gather_pixels(z_student, a_flat).float()  # normalised in the InfoNCE
    anchors_per_class = comm.sum(class_counts(a_cls, C))

    # negatives (Eq. 25-28): this step's candidates of all processes, capped per class
    negatives_per_class = comm.sum(negatives_mask.sum(dim=(0, 2, 3)))
    n_flat, n_cls = positions_by_class(negatives_mask)
    n_key = pixel_keys(seed, SALT_NEGATIVES, n_cls, global_ids(n_flat))
    cap = queues.size if cfg.use_queue else None
    local = select_lowest_per_class(n_key, n_cls, cap, C)
    order = local.nonzero()[:, 0]
    order = order[arrival_order(n_key[order], n_cls[order])]
    n_key, n_cls = n_key[order], n_cls[order]
    # features gathered once, already in arrival order (no re-indexing of [K, D] rows)
    n_feat = F.normalize(gather_pixels(z_teacher.detach(), n_flat[order]).float(), dim=1)
    if comm.world_size > 1:
        n_feat, n_key, n_cls = merge_keys(n_feat, n_key, n_cls, comm)
        kept = select_lowest_per_class(n_key, n_cls, cap, C).nonzero()[:, 0]
        kept = kept[arrival_order(n_key[kept], n_cls[kept])]
        n_feat, n_cls = n_feat.index_select(0, kept), n_cls[kept]

    draws = uniform_draws(seed, SALT_DRAWS, a_cls, a_gid, cfg.num_negatives)
    if cfg.use_queue:
        assert queues is not None
        queues.enqueue(n_feat, n_cls)
        neg_available = queues.count.to(dev) > 0
        negatives = queues.sample(a_cls, draws).to(dev)
        queue_fill = queues.count.detach().clone().to(dev)
    else:
        cnt = class_counts(n_cls, C)
        starts = torch.cumsum(cnt, 0) - cnt
        neg_available = cnt > 0
        a_cnt = cnt[a_cls].clamp_min(1)
        pick = starts[a_cls].unsqueeze(1) + torch.minimum((draws * a_cnt.unsqueeze(1)).long(),
                                                          (a_cnt - 1).unsqueeze(1))
        if n_feat.shape[0] > 0:
            rows = pick.clamp_max(n_feat.shape[0] - 1)
            negatives = n_feat.index_select(0, rows.reshape(-1)).view(rows.shape[0], rows.shape[1], D)
        else:
            negatives = n_feat.new_zeros(a_cls.shape[0], cfg.num_negatives, D)
        queue_fill = torch.zeros(C, dtype=torch.long, device=dev)

    positives = prototypes.detach().to(dev).float()[a_cls]
    eligible_cls = (anchors_per_class > 0) & proto_valid.to(dev).bool() & neg_available
    eligible = eligible_cls[a_cls]

    per_anchor = _info_nce_per_anchor(anchors, positives, negatives, cfg.temperature, negatives_normalized=True)
    n_eligible = comm.sum(eligible.sum())
    total = torch.where(eligible, per_anchor, torch.zeros_like(per_anchor)).sum()
    loss = total / n_eligible.clamp_min(1).float()
    stats = {
        "anchors_per_class": anchors_per_class.detach(),
        "negatives_per_class": negatives_per_class.detach(),
        "queue_fill": queue_fill,
        "num_anchor_classes": eligible_cls.sum().detach(),
        "num_anchors": n_eligible.detach(),
    }
    return loss, stats
