"""Contrastive learning with unreliable pseudo-labels (paper Eq. 10, 21-28, Algorithm 1).

Building blocks: class ranks (the ``O_ij`` of Sec. 3.5.1), anchor and negative masks,
per-class FIFO memory banks (:class:`ClassQueues`), vectorised per-class sampling, the
pixel-level InfoNCE of Eq. 10 and :func:`contrastive_loss`, the whole of Algorithm 1.

Two faults of the conference reference code are deliberately *not* reproduced: negatives of
class ``c`` are pixels with label ``!= c`` (never ANDed with ``label == c``), and the anchors of
class ``c`` are only contrasted with the keys of class ``c``'s own queue ``Q_c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.distributed import LOCAL, Comm

__all__ = [
    "ClassQueues",
    "ContrastiveConfig",
    "anchor_mask",
    "class_rank",
    "contrastive_loss",
    "hash31",
    "labeled_negative_mask",
    "pixel_info_nce",
    "pixel_keys",
    "select_lowest_per_class",
    "uniform_draws",
    "unlabeled_negative_mask",
]


_M31 = 0x7FFFFFFF
_KEY_MAX = torch.iinfo(torch.int64).max
# salts that separate the random streams of one step
_SALT_ANCHORS, _SALT_NEGATIVES, _SALT_DRAWS = 0x1B873593, 0x2C1B3C6D, 0x297A2D39


def hash31(x: Tensor) -> Tensor:
    """A 31-bit integer hash of int64 tensors (xor-shift-multiply rounds; products stay below
    2**63, so nothing overflows)."""
    x = x & _M31
    for _ in range(3):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _M31
    return x


def _seed31(seed: int, salt: int) -> int:
    """:func:`hash31` of a Python int (any size), mixed with a salt."""
    x = ((seed ^ salt) ^ (seed >> 31)) & _M31  # fold the high bits of a large seed in
    for _ in range(3):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _M31
    return x


def pixel_keys(seed: int, salt: int, classes: Tensor, pixel_ids: Tensor) -> Tensor:
    """Reproducible random sort keys of ``(class, pixel)`` pairs.

    ``pixel_ids`` are *global* ids (image index in the global batch x H*W + pixel, < 2**31), so
    a pair gets the same key whichever process holds it: sampling "the k pairs of class c with
    the lowest keys" is then the same at any process count. The low 31 bits are the pixel id,
    which makes keys unique within a class.
    """
    s = _seed31(seed, salt)
    h = hash31(hash31(pixel_ids ^ s) ^ ((classes.long() * 0x9E3779B1) & _M31))
    return (h << 31) | (pixel_ids & _M31)


def uniform_draws(seed: int, salt: int, classes: Tensor, pixel_ids: Tensor, n: int) -> Tensor:
    """``[len(pixel_ids), n]`` reproducible uniforms in ``[0, 1)``, a function of (pair, j) only."""
    base = pixel_keys(seed, salt, classes, pixel_ids) >> 31
    j = torch.arange(1, n + 1, device=pixel_ids.device, dtype=torch.long)
    bits = hash31(hash31(base.unsqueeze(1) ^ ((j * 0x27D4EB2F) & _M31).unsqueeze(0)) ^ j)
    return bits.double().div(2.0 ** 31).float().clamp_max(1.0 - 2.0 ** -24)


def select_lowest_per_class(keys: Tensor, classes: Tensor, k: int | None, num_classes: int,
                            comm: Comm = LOCAL) -> Tensor:
    """Bool mask of the entries whose key is among the ``k`` lowest of their class *over all
    processes* (every entry when ``k`` is None or a class has fewer).

    Each process ranks its own entries per class; the local top-``k`` keys of every class go
    to all processes in one fixed-size all-gather ``[C, k]``, which gives each class's global
    ``k``-th key.
    """
    if k is None:
        return torch.ones_like(classes, dtype=torch.bool)
    n = keys.shape[0]
    dev = keys.device
    o1 = torch.argsort(keys)
    o2 = torch.sort(classes[o1], stable=True).indices
    order = o1[o2]
    counts = _class_counts(classes, num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.empty(n, dtype=torch.long, device=dev)
    rank_in_class[order] = torch.arange(n, device=dev) - starts[classes[order]]
    keep = rank_in_class < k
    if comm.world_size == 1:
        return keep
    table = torch.full((num_classes, k), _KEY_MAX, dtype=torch.long, device=dev)
    table[classes[keep], rank_in_class[keep]] = keys[keep]
    everyone = comm.cat(table.unsqueeze(0))  # [W, C, k]
    kth = everyone.permute(1, 0, 2).reshape(num_classes, -1).sort(dim=1).values[:, k - 1]
    return keep & (keys <= kth[classes])


# --------------------------------------------------------------------------- masks


def class_rank(prob: Tensor) -> Tensor:
    """``O(c)``: position of class ``c`` in the probabilities sorted high to low (0 = argmax).

    Ties are broken by the lower class index first (stable sort).

    Args:
        prob: ``[B, C, H, W]``.

    Returns:
        ``[B, C, H, W]`` long ranks in ``[0, C)``.
    """
    order = torch.sort(prob.detach(), dim=1, descending=True, stable=True).indices
    C = prob.shape[1]
    positions = torch.arange(C, device=prob.device).view(1, C, 1, 1).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _class_ids(C: int, device: torch.device) -> Tensor:
    return torch.arange(C, device=device).view(1, C, 1, 1)


def anchor_mask(labels: Tensor, prob: Tensor, delta_p: float, ignore_index: int = 255) -> Tensor:
    """Anchor candidates ``label == c and p(c) > delta_p`` (Eq. 21-23).

    For unlabeled images pass pseudo-labels with ``ignore_index`` on unreliable pixels (Eq. 22).

    Returns:
        ``[B, C, H, W]`` bool.
    """
    C = prob.shape[1]
    lab = labels.long().unsqueeze(1)
    is_c = (lab == _class_ids(C, prob.device)) & (lab != ignore_index)
    return is_c & (prob > delta_p)


def labeled_negative_mask(labels: Tensor, rank: Tensor, r_l: int, ignore_index: int = 255) -> Tensor:
    """Labeled negatives ``n^l(c) = [y != c] * [0 <= O(c) < r_l]`` on non-ignored pixels (Eq. 26).

    Returns:
        ``[B, C, H, W]`` bool.
    """
    C = rank.shape[1]
    lab = labels.long().unsqueeze(1)
    not_c = (lab != _class_ids(C, rank.device)) & (lab != ignore_index)
    return not_c & (rank < r_l)


def unlabeled_negative_mask(unreliable: Tensor, rank: Tensor, r_l: int, r_h: int) -> Tensor:
    """Unlabeled negatives ``n^u(c) = [unreliable] * [r_l <= O(c) < r_h]`` (Eq. 27), ``r_h``
    clipped to ``C``.

    Returns:
        ``[B, C, H, W]`` bool.
    """
    r_h = min(int(r_h), rank.shape[1])
    return unreliable.to(torch.bool).unsqueeze(1) & (rank >= r_l) & (rank < r_h)


# --------------------------------------------------------------------------- memory bank


def _ring_write_plan(classes: Tensor, ptr: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where each of ``N`` keys (arrival order = row order) goes in the per-class ring buffers.

    Returns ``(cls [N], slot [N], src [N], n_new [C])``: row ``src[i]`` is written to
    ``keys[cls[i], slot[i]]``. Keys are stably sorted by class; the within-class arrival rank
    ``o`` gives slot ``(ptr[c] + o) % size``. When a slot is hit several times (more than
    ``size`` keys of a class), every write to it carries the *newest* key's row, so the result
    does not depend on the order in which a parallel device performs duplicate writes.
    """
    C = ptr.shape[0]
    n = classes.shape[0]
    dev = classes.device
    sorted_cls, order = torch.sort(classes, stable=True)
    n_new = torch.zeros(C, dtype=torch.long, device=dev).index_add_(0, classes, torch.ones_like(classes))
    starts = torch.cumsum(n_new, 0) - n_new
    offset = torch.arange(n, device=dev) - starts[sorted_cls]  # within-class arrival rank
    n_c = n_new[sorted_cls]
    # newest key sharing the slot: the largest o' = o + k*size with o' < n_c
    winner = offset + size * torch.div(n_c - 1 - offset, size, rounding_mode="floor")
    src = order[starts[sorted_cls] + winner]
    slot = (ptr[sorted_cls] + offset) % size
    return sorted_cls, slot, src, n_new


class ClassQueues(nn.Module):
    """Per-class FIFO memory banks ``Q_c`` as fixed-size ring buffers (Sec. 3.5.1).

    Buffers (saved in checkpoints): ``keys [C, size, D]``, ``ptr [C]`` (next write slot) and
    ``count [C]`` (valid entries, capped at ``size``). Entries of class ``c`` occupy slots
    ``[0, count[c])`` until the ring is full, then all slots; the oldest are overwritten.
    """

    keys: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, num_classes: int, dim: int, size: int = 30000) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        self.num_classes = num_classes
        self.dim = dim
        self.size = size
        self.register_buffer("keys", torch.zeros(num_classes, size, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, classes: Tensor) -> None:
        """Push ``keys [N, D]`` into the queues of ``classes [N]`` (arrival order = row order).

        Vectorised, O(N): the keys are stably sorted by class; the within-class offset ``o`` of
        a key is its rank among the keys of its class; it goes to slot ``(ptr[c] + o) % size``.
        When more than ``size`` keys of one class arrive only the newest ``size`` survive:
        every key whose slot is also the target of a newer key writes that newer key's value,
        so duplicate writes are identical and the result does not depend on write order.
        """
        if keys.shape[0] == 0:
            return
        dev = self.keys.device
        keys = keys.detach().to(device=dev, dtype=self.keys.dtype)
        cls, slot, src, n_new = _ring_write_plan(classes.to(dev).long(), self.ptr, self.size)
        self.keys[cls, slot] = keys.index_select(0, src)
        self.ptr.copy_((self.ptr + n_new) % self.size)
        self.count.copy_(torch.clamp(self.count + n_new, max=self.size))

    @torch.no_grad()
    def sample(self, classes: Tensor, uniforms: Tensor) -> Tensor:
        """Keys of the queues of ``classes [A]``, one per entry of ``uniforms [A, n]`` (in
        ``[0, 1)``): entry ``u`` picks slot ``floor(u * count_c)``, i.e. uniform sampling with
        replacement among the valid entries of the class's own queue, in one gather.

        The caller guarantees ``count > 0`` for those classes (an empty queue yields zero keys).

        Returns:
            ``[A, n, D]``.
        """
        dev = self.keys.device
        classes = classes.to(dev).long()
        cnt = self.count[classes].clamp_min(1)
        idx = torch.minimum((uniforms.to(dev) * cnt.unsqueeze(1)).long(), (cnt - 1).unsqueeze(1))
        rows = (classes.unsqueeze(1) * self.size + idx).reshape(-1)  # index_select: one fast gather
        return self.keys.view(-1, self.dim).index_select(0, rows).view(idx.shape[0], idx.shape[1], self.dim)

    @torch.no_grad()
    def reset(self) -> None:
        self.keys.zero_()
        self.ptr.zero_()
        self.count.zero_()


# --------------------------------------------------------------------------- sampling


def _positions_by_class(mask: Tensor) -> tuple[Tensor, Tensor]:
    """True positions of ``mask [B, C, H, W]`` as ``(flat index into B*H*W, class)``, sorted by
    class, then by flat index."""
    C = mask.shape[1]
    nz = mask.transpose(0, 1).reshape(C, -1).nonzero()
    return nz[:, 1], nz[:, 0]


def _class_counts(classes: Tensor, C: int) -> Tensor:
    return torch.zeros(C, dtype=torch.long, device=classes.device).index_add_(
        0, classes, torch.ones_like(classes)
    )


def _gather_pixels(z: Tensor, flat: Tensor) -> Tensor:
    """Rows ``[K, D]`` of the feature map ``z [B, D, H, W]`` at flat pixel indices."""
    # channels-last rows + one index_select: contiguous [K, D] rows (cheap to normalise), ~3x
    # faster on CPU than advanced indexing of [B, D, H*W] for the ~10^4 negative candidates
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).index_select(0, flat)


# --------------------------------------------------------------------------- InfoNCE


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


# --------------------------------------------------------------------------- Algorithm 1


@dataclass
class ContrastiveConfig:
    """Hyper-parameters and ablation switches of ``L_c`` (paper defaults).

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
        ignore_index: label of ignored pixels.
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
    ignore_index: int = 255


_NEG_SOURCES = ("unreliable", "reliable", "both")


def _negative_mask(
    labels: Tensor, rank: Tensor, is_labeled: Tensor, unreliable: Tensor, cfg: ContrastiveConfig
) -> Tensor:
    """``n(c)`` of Eq. 25-27 (with the ablation switches) as ``[B, C, h, w]`` bool."""
    if cfg.negatives_from not in _NEG_SOURCES:
        raise ValueError(f"negatives_from must be one of {_NEG_SOURCES}, got {cfg.negatives_from!r}")
    B, C = rank.shape[:2]
    ign = cfg.ignore_index
    lab = labels.long()
    not_c = lab.unsqueeze(1) != _class_ids(C, rank.device)  # true for ignored pixels too
    # labeled images (Eq. 26)
    if not cfg.labeled_negatives:
        neg_l = torch.zeros_like(rank, dtype=torch.bool)
    elif cfg.rank_threshold:
        neg_l = labeled_negative_mask(lab, rank, cfg.r_l, ign)
    else:
        neg_l = not_c & (lab != ign).unsqueeze(1)
    # unlabeled images (Eq. 27)
    unrel = unreliable.to(torch.bool)
    reliable = (~unrel) & (lab != ign)
    if cfg.negatives_from == "unreliable":
        src = unrel
    elif cfg.negatives_from == "reliable":
        src = reliable
    else:
        src = unrel | reliable
    neg_u = src.unsqueeze(1) & not_c  # reliable pixels are never negatives of their own class
    if cfg.rank_threshold:
        r_h = min(int(cfg.r_h), C)
        neg_u = neg_u & (rank >= cfg.r_l) & (rank < r_h)
    lab_img = is_labeled.to(device=rank.device, dtype=torch.bool).view(B, 1, 1, 1)
    return torch.where(lab_img, neg_l, neg_u)


def _arrival_order(keys: Tensor, classes: Tensor) -> Tensor:
    """Permutation putting ``(key, class)`` rows in queue arrival order: by class, then by key."""
    o1 = torch.argsort(keys)
    return o1[torch.sort(classes[o1], stable=True).indices]


def _merge_keys(feats: Tensor, keys: Tensor, classes: Tensor, comm: Comm) -> tuple[Tensor, Tensor, Tensor]:
    """All processes' ``(feature, key, class)`` rows in one padded all-gather (the features'
    float32 bits, the int64 keys and the classes packed into one int32 tensor)."""
    if comm.world_size == 1:
        return feats, keys, classes
    D = feats.shape[1]
    packed = torch.cat([feats.float().contiguous().view(torch.int32),
                        keys.contiguous().view(torch.int32).view(-1, 2),
                        classes.to(torch.int32).unsqueeze(1)], dim=1)
    rows = comm.cat_rows(packed)
    return (rows[:, :D].contiguous().view(torch.float32), rows[:, D:D + 2].contiguous().view(torch.int64)[:, 0],
            rows[:, D + 2].long())


def contrastive_loss(
    z_student: Tensor,
    z_teacher: Tensor,
    prob: Tensor,
    labels: Tensor,
    is_labeled: Tensor,
    unreliable: Tensor,
    prototypes: Tensor,
    proto_valid: Tensor,
    queues: ClassQueues | None,
    cfg: ContrastiveConfig,
    seed: int = 0,
    image_ids: Tensor | None = None,
    comm: Comm = LOCAL,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_c`` of Eq. 10 following Algorithm 1 (docs/method.md step 9), all classes at once.

    1. Anchors of class ``c`` (Eq. 21-23): pixels with label ``c`` and ``p(c) > delta_p``; up to
       ``M`` per class sampled over the *global* batch; their *student* features (L2-normalised)
       carry the gradient.
    2. Negative candidates of class ``c`` (Eq. 25-28): *teacher* features (detached, normalised)
       of labeled pixels with ``y != c`` and ``O(c) < r_l`` and of unreliable unlabeled pixels
       with ``r_l <= O(c) < r_h``. Those of all processes (one all-gather) are pushed in one
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
        prob: ``[B, C, h, w]`` teacher probabilities.
        labels: ``[B, h, w]`` ground truth (labeled images) or pseudo-labels with ``ignore_index``
            on unreliable pixels (unlabeled images).
        is_labeled: ``[B]`` bool.
        unreliable: ``[B, h, w]`` bool (False on labeled images).
        prototypes: ``[C, D]``; proto_valid: ``[C]`` bool.
        queues: the memory bank (required when ``cfg.use_queue``; updated in place, identically
            on every process).
        seed: seed of this step's draws.
        image_ids: ``[B]`` index of each image in the global batch (default ``0..B-1``).
        comm: collectives (:data:`u2plus.engine.distributed.LOCAL` at one process).

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
    C = prob.shape[1]
    dev = z_student.device
    hw = h * w
    prob = prob.detach().float()
    rank = class_rank(prob)
    if image_ids is None:
        image_ids = torch.arange(B, device=dev)
    image_ids = image_ids.to(dev).long()

    def global_ids(flat: Tensor) -> Tensor:
        return image_ids[flat // hw] * hw + flat % hw

    # anchors (Eq. 21-23): the M lowest-keyed candidates of each class over all processes
    a_flat, a_cls = _positions_by_class(anchor_mask(labels, prob, cfg.delta_p, cfg.ignore_index))
    a_gid = global_ids(a_flat)
    keep = select_lowest_per_class(pixel_keys(seed, _SALT_ANCHORS, a_cls, a_gid), a_cls, cfg.num_anchors, C, comm)
    a_flat, a_cls, a_gid = a_flat[keep], a_cls[keep], a_gid[keep]
    anchors = _gather_pixels(z_student, a_flat).float()  # normalised in the InfoNCE
    anchors_per_class = comm.sum(_class_counts(a_cls, C))

    # negatives (Eq. 25-28): this step's candidates of all processes, capped per class
    n_mask = _negative_mask(labels, rank, is_labeled, unreliable, cfg)
    negatives_per_class = comm.sum(n_mask.sum(dim=(0, 2, 3)))
    n_flat, n_cls = _positions_by_class(n_mask)
    n_key = pixel_keys(seed, _SALT_NEGATIVES, n_cls, global_ids(n_flat))
    cap = queues.size if cfg.use_queue else None
    local = select_lowest_per_class(n_key, n_cls, cap, C)
    order = local.nonzero()[:, 0]
    order = order[_arrival_order(n_key[order], n_cls[order])]
    n_key, n_cls = n_key[order], n_cls[order]
    # features gathered once, already in arrival order (no re-indexing of [K, D] rows)
    n_feat = F.normalize(_gather_pixels(z_teacher.detach(), n_flat[order]).float(), dim=1)
    if comm.world_size > 1:
        n_feat, n_key, n_cls = _merge_keys(n_feat, n_key, n_cls, comm)
        kept = select_lowest_per_class(n_key, n_cls, cap, C).nonzero()[:, 0]
        kept = kept[_arrival_order(n_key[kept], n_cls[kept])]
        n_feat, n_cls = n_feat.index_select(0, kept), n_cls[kept]

    draws = uniform_draws(seed, _SALT_DRAWS, a_cls, a_gid, cfg.num_negatives)
    if cfg.use_queue:
        assert queues is not None
        queues.enqueue(n_feat, n_cls)
        neg_available = queues.count.to(dev) > 0
        negatives = queues.sample(a_cls, draws).to(dev)
        queue_fill = queues.count.detach().clone().to(dev)
    else:
        cnt = _class_counts(n_cls, C)
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
