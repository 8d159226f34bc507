"""Eq. 10, 21-28 and Algorithm 1: ranks, masks, sampling, InfoNCE and the contrastive loss."""

import math

import pytest
import torch

from u2plus.losses.contrastive import ContrastiveConfig, pixel_info_nce
from u2plus.losses.contrastive_masks import anchor_mask, class_rank, labeled_negative_mask, unlabeled_negative_mask
from u2plus.losses.queues import ClassQueues
from u2plus.losses.sampling import hash31, pixel_keys, select_lowest_per_class, uniform_draws

from ..helpers import ss_contrastive_loss as contrastive_loss


def _map(rows):
    """[h][w][C] nested list -> [1, C, h, w] tensor."""
    return torch.tensor(rows, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)


def _set(t):
    return sorted(tuple(round(x, 5) for x in r) for r in t.tolist())


# ----------------------------------------------------------------- ranks and masks


def test_class_rank_hand_values_and_ties():
    p = _map([[[0.2, 0.5, 0.3], [0.4, 0.2, 0.4], [1 / 3, 1 / 3, 1 / 3]]])
    r = class_rank(p)
    assert r.dtype == torch.long
    assert r[0, :, 0, 0].tolist() == [2, 0, 1]
    assert r[0, :, 0, 1].tolist() == [0, 2, 1]  # tie 0 vs 2: lower class first
    assert r[0, :, 0, 2].tolist() == [0, 1, 2]


def test_anchor_mask_hand_values():
    labels = torch.tensor([[[0, 1, 255, 1]]])
    p = _map([[[0.8, 0.2], [0.75, 0.25], [0.1, 0.9], [0.4, 0.6]]])
    m = anchor_mask(labels, p, delta_p=0.3)
    # pixel0: y=0, p0=.8 -> anchor of 0; pixel1: y=1 but p1=.25 <= .3; pixel2 ignored;
    # pixel3: y=1, p1=.6 -> anchor of 1
    assert m[0, 0, 0].tolist() == [True, False, False, False]
    assert m[0, 1, 0].tolist() == [False, False, False, True]


def test_labeled_negative_mask_label_not_c_and_rank_below_rl():
    labels = torch.tensor([[[0, 1, 255]]])
    p = _map([[[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]])
    m = labeled_negative_mask(labels, class_rank(p), r_l=3)
    # ranks [0,1,2,3] at every pixel; pixel0 (y=0): classes 1,2 ; pixel1 (y=1): classes 0,2
    assert m[0, :, 0, 0].tolist() == [False, True, True, False]
    assert m[0, :, 0, 1].tolist() == [True, False, True, False]
    assert not m[0, :, 0, 2].any()  # ignored pixel
    # a wrong prediction with r_l = 1: y=1 but argmax 0 -> negative of class 0 only
    m1 = labeled_negative_mask(labels, class_rank(p), r_l=1)
    assert m1[0, :, 0, 1].tolist() == [True, False, False, False]
    assert not m1[0, :, 0, 0].any()  # y == argmax: never a negative of its own class


def test_unlabeled_negative_mask_rank_window_and_rh_clipped():
    unrel = torch.tensor([[[True, False]]])
    p = _map([[[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]]])
    rank = class_rank(p)
    m = unlabeled_negative_mask(unrel, rank, r_l=1, r_h=3)
    assert m[0, :, 0, 0].tolist() == [False, True, True, False]
    assert not m[0, :, 0, 1].any()  # reliable pixel
    # C = 4 < r_h = 20: window [1, 4)
    m2 = unlabeled_negative_mask(unrel, rank, r_l=1, r_h=20)
    assert m2[0, :, 0, 0].tolist() == [False, True, True, True]


# ----------------------------------------------------------------- sampling


def test_hash31_range_and_spread():
    h = hash31(torch.arange(100000))
    assert int(h.min()) >= 0 and int(h.max()) < 2**31
    assert h.unique().numel() > 99990  # (almost) no collisions on consecutive inputs
    assert abs(h.double().mean().item() / 2**31 - 0.5) < 0.01


def test_pixel_keys_unique_per_class_and_seeded():
    ids = torch.arange(50)
    k0 = pixel_keys(7, 1, torch.zeros(50, dtype=torch.long), ids)
    assert k0.unique().numel() == 50
    assert torch.equal(k0 & (2**31 - 1), ids)  # low bits: the pixel id (uniqueness)
    assert torch.equal(k0, pixel_keys(7, 1, torch.zeros(50, dtype=torch.long), ids))
    assert not torch.equal(k0, pixel_keys(8, 1, torch.zeros(50, dtype=torch.long), ids))
    assert not torch.equal(k0, pixel_keys(7, 1, torch.ones(50, dtype=torch.long), ids))
    # a pixel's key does not depend on which other pixels are present (process-independent)
    assert torch.equal(pixel_keys(7, 1, torch.zeros(5, dtype=torch.long), ids[10:15]), k0[10:15])


def test_uniform_draws_range_and_reproducible():
    u = uniform_draws(3, 5, torch.zeros(200, dtype=torch.long), torch.arange(200), 50)
    assert u.shape == (200, 50) and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(u.mean().item() - 0.5) < 0.01
    assert torch.equal(u[20:30], uniform_draws(3, 5, torch.zeros(10, dtype=torch.long), torch.arange(20, 30), 50))


def test_select_lowest_per_class_hand_case():
    keys = torch.tensor([50, 10, 40, 30, 20, 60, 5])
    classes = torch.tensor([0, 0, 1, 0, 1, 1, 2])
    # class 0 keys 50, 10, 30 -> lowest two 10, 30; class 1: 40, 20, 60 -> 20, 40; class 2: 5
    assert select_lowest_per_class(keys, classes, 2, 3).tolist() == [False, True, True, True, True, False, True]
    assert select_lowest_per_class(keys, classes, None, 3).all()
    assert select_lowest_per_class(keys[:0], classes[:0], 2, 3).numel() == 0


class _FakeTwoProcessComm:
    """``comm.cat`` as two processes holding ``mine`` and ``other`` would see it."""

    world_size = 2

    def __init__(self, other_table):
        self.other = other_table

    def cat(self, t):
        return torch.cat([t, self.other])


def test_select_lowest_per_class_uses_the_global_kth_key():
    # process A holds class-0 keys 10, 30, 50; process B holds 20, 40 (k = 2: global 10, 20)
    keys_a, cls_a = torch.tensor([10, 30, 50]), torch.zeros(3, dtype=torch.long)
    table_b = torch.full((1, 1, 2), torch.iinfo(torch.int64).max)
    table_b[0, 0] = torch.tensor([20, 40])
    keep = select_lowest_per_class(keys_a, cls_a, 2, 1, _FakeTwoProcessComm(table_b))
    assert keep.tolist() == [True, False, False]


# ----------------------------------------------------------------- InfoNCE


def test_pixel_info_nce_hand_value():
    a = torch.tensor([[3.0, 0.0]])  # normalised inside
    pos = torch.tensor([[1.0, 0.0]])  # cos 1
    neg = torch.tensor([[[0.0, 2.0], [-1.0, 0.0]]])  # cos 0, -1
    # -log(e^2 / (e^2 + e^0 + e^-2)) = log(1 + e^-2 + e^-4)
    v = pixel_info_nce(a, pos, neg, temperature=0.5)
    assert v.item() == pytest.approx(0.1429316, abs=1e-6)
    two = pixel_info_nce(
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[0.0, -1.0], [0.0, -1.0]]]),
        0.5,
    )
    # mean of log(1 + 2e^-2) and log(1 + 2e^-4)
    assert two.item() == pytest.approx((0.2395448 + 0.0359764) / 2, abs=1e-6)


def test_pixel_info_nce_no_anchor_is_finite_zero():
    a = torch.zeros(0, 4, requires_grad=True)
    v = pixel_info_nce(a, torch.zeros(0, 4), torch.zeros(0, 5, 4), 0.5)
    assert torch.isfinite(v) and v.item() == 0.0
    v.backward()
    assert a.grad.shape == (0, 4)


# ----------------------------------------------------------------- contrastive_loss


def _hand_case():
    """Labeled 1x3 image, C=2, D=2 (see test docstrings for the derivation)."""
    labels = torch.tensor([[[0, 0, 1]]])
    prob = _map([[[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]]])
    z_s = _map([[[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]]])
    z_t = _map([[[0.0, -1.0], [0.0, -1.0], [0.0, 1.0]]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    return dict(
        z_student=z_s,
        z_teacher=z_t,
        prob=prob,
        labels=labels,
        is_labeled=torch.tensor([True]),
        unreliable=torch.zeros(1, 1, 3, dtype=torch.bool),
        prototypes=protos,
        proto_valid=torch.tensor([True, True]),
    )


# class 0: anchor pixel0 (s+ = 1), negative pixel2 (label 1, rank(0) = 1) with s- = 0
#   -> log(1 + 2 e^-2) = 0.2395448 with N = 2
# class 1: anchor pixel2 (s+ = 1), negatives pixels 0, 1 (label 0, rank(1) < 3) with s- = -1
#   -> log(1 + 2 e^-4) = 0.0359764 ; pixel1 is no anchor (p(0) = .2 <= delta_p)
HAND_LOSS = (0.2395448 + 0.0359764) / 2


@pytest.mark.parametrize("use_queue", [True, False])
def test_contrastive_loss_hand_value(use_queue):
    cfg = ContrastiveConfig(num_negatives=2, use_queue=use_queue)
    q = ClassQueues(2, 2, size=8) if use_queue else None
    loss, stats = contrastive_loss(**_hand_case(), queues=q, cfg=cfg)
    assert loss.item() == pytest.approx(HAND_LOSS, abs=1e-6)
    assert stats["anchors_per_class"].tolist() == [1, 1]
    assert stats["negatives_per_class"].tolist() == [1, 2]
    assert stats["queue_fill"].tolist() == ([1, 2] if use_queue else [0, 0])
    assert int(stats["num_anchor_classes"]) == 2


def test_contrastive_loss_invalid_prototype_excludes_class():
    case = _hand_case()
    case["proto_valid"] = torch.tensor([True, False])
    loss, stats = contrastive_loss(**case, queues=ClassQueues(2, 2, 8), cfg=ContrastiveConfig(num_negatives=2))
    assert loss.item() == pytest.approx(0.2395448, abs=1e-6)
    assert int(stats["num_anchor_classes"]) == 1


def test_contrastive_grad_flows_into_student_only():
    case = _hand_case()
    # anchors not collinear with their keys (collinear unit vectors have zero cosine gradient)
    case["z_student"] = _map([[[3.0, 1.0], [1.0, 1.0], [0.5, 2.0]]]).requires_grad_(True)
    case["z_teacher"].requires_grad_(True)
    case["prototypes"].requires_grad_(True)
    loss, _ = contrastive_loss(**case, queues=ClassQueues(2, 2, 8), cfg=ContrastiveConfig(num_negatives=2))
    loss.backward()
    g = case["z_student"].grad
    assert g is not None and torch.isfinite(g).all()
    assert g[0, :, 0, 0].abs().sum() > 0 and g[0, :, 0, 2].abs().sum() > 0  # anchors
    assert g[0, :, 0, 1].abs().sum() == 0  # not an anchor
    assert case["z_teacher"].grad is None
    assert case["prototypes"].grad is None


def test_reference_fault_1_absent_negative_with_label_not_c_goes_into_Qc():
    """Labeled 1x2 image, C=3: pixel0 y=1 p=[.3,.6,.1], pixel1 y=0 p=[.8,.15,.05].
    Negatives (r_l=3): pixel0 -> Q_0 and Q_2, pixel1 -> Q_1 and Q_2; a pixel never goes into the
    queue of its own label (the reference ANDed the mask with label == c)."""
    q = ClassQueues(3, 2, size=4)
    loss, stats = contrastive_loss(
        z_student=torch.randn(1, 2, 1, 2),
        z_teacher=_map([[[0.0, 2.0], [3.0, 0.0]]]),
        prob=_map([[[0.3, 0.6, 0.1], [0.8, 0.15, 0.05]]]),
        labels=torch.tensor([[[1, 0]]]),
        is_labeled=torch.tensor([True]),
        unreliable=torch.zeros(1, 1, 2, dtype=torch.bool),
        prototypes=torch.eye(3, 2),
        proto_valid=torch.ones(3, dtype=torch.bool),
        queues=q,
        cfg=ContrastiveConfig(num_negatives=3),
    )
    assert q.count.tolist() == [1, 1, 2]
    assert q.keys[0, 0].tolist() == [0.0, 1.0]  # pixel0 (label 1), normalised
    assert q.keys[1, 0].tolist() == [1.0, 0.0]  # pixel1 (label 0)
    assert _set(q.keys[2, :2]) == [(0.0, 1.0), (1.0, 0.0)]
    assert stats["negatives_per_class"].tolist() == [1, 1, 2]
    assert torch.isfinite(loss)


def _isolation_case(q0_key, q1_keys):
    """Labeled 2x2 image, every pixel y=0 with p=[.9,.1]: class 0 has anchors, class 1 none.
    Q_0 holds only q0_key (nothing new enters it: no pixel has label != 0); Q_1 gets this
    step's teacher features plus q1_keys."""
    q = ClassQueues(2, 2, size=16)
    q.enqueue(torch.tensor([q0_key]), torch.tensor([0]))
    q.enqueue(torch.tensor(q1_keys), torch.ones(len(q1_keys), dtype=torch.long))
    z_s = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).clone().requires_grad_(True)
    loss, stats = contrastive_loss(
        z_student=z_s,
        z_teacher=torch.tensor(q1_keys[0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).clone(),
        prob=torch.tensor([0.9, 0.1]).view(1, 2, 1, 1).expand(1, 2, 2, 2).clone(),
        labels=torch.zeros(1, 2, 2, dtype=torch.long),
        is_labeled=torch.tensor([True]),
        unreliable=torch.zeros(1, 2, 2, dtype=torch.bool),
        prototypes=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        proto_valid=torch.tensor([True, True]),
        queues=q,
        cfg=ContrastiveConfig(num_negatives=2),
    )
    return loss, stats, q


def test_reference_fault_2_absent_anchors_only_use_own_class_queue():
    # Q_0 = {[0,1]} -> every anchor: log(1 + 2 e^{(0 - 1)/.5}) = log(1 + 2e^-2)
    loss_a, stats, q = _isolation_case([0.0, 1.0], [[-1.0, 0.0]])
    assert loss_a.item() == pytest.approx(0.2395448, abs=1e-6)
    assert q.count.tolist() == [1, 5]  # the 4 pixels went into Q_1 only
    assert stats["anchors_per_class"].tolist() == [4, 0]
    # a completely different Q_1 leaves class 0's loss unchanged
    loss_b, _, _ = _isolation_case([0.0, 1.0], [[1.0, 0.0], [0.6, 0.8]])
    assert loss_b.item() == pytest.approx(loss_a.item(), abs=1e-7)
    # ...while changing Q_0 does change it: log(1 + 2e^-4)
    loss_c, _, _ = _isolation_case([-1.0, 0.0], [[-1.0, 0.0]])
    assert loss_c.item() == pytest.approx(0.0359764, abs=1e-6)


def _unlabeled_case(cfg, C=4):
    """Unlabeled 1x3 image: pixel0 unreliable p=[.4,.3,.2,.1] (ranks 0,1,2,3), pixel1 reliable
    y=0 p=[.7,.2,.05,.05] (ranks 0,1,2,3), pixel2 unreliable p=[.3,.1,.2,.4] (ranks 1,3,2,0)."""
    prob = _map([[[0.4, 0.3, 0.2, 0.1], [0.7, 0.2, 0.05, 0.05], [0.3, 0.1, 0.2, 0.4]]])[:, :C]
    prob = prob / prob.sum(1, keepdim=True)
    q = ClassQueues(C, 2, size=8)
    loss, stats = contrastive_loss(
        z_student=torch.randn(1, 2, 1, 3),
        z_teacher=torch.randn(1, 2, 1, 3),
        prob=prob,
        labels=torch.tensor([[[255, 0, 255]]]),
        is_labeled=torch.tensor([False]),
        unreliable=torch.tensor([[[True, False, True]]]),
        prototypes=torch.eye(C, 2),
        proto_valid=torch.ones(C, dtype=torch.bool),
        queues=q,
        cfg=cfg,
    )
    assert torch.isfinite(loss)
    return stats["negatives_per_class"].tolist(), q


def test_unlabeled_negatives_sources_and_rank_window():
    # r_l=1, r_h=3: pixel0 -> classes 1,2 ; pixel1 (reliable) -> 1,2 ; pixel2 -> 0 (rank1), 2 (rank2)
    base = dict(r_l=1, r_h=3, num_negatives=2)
    assert _unlabeled_case(ContrastiveConfig(**base))[0] == [1, 1, 2, 0]
    assert _unlabeled_case(ContrastiveConfig(**base, negatives_from="reliable"))[0] == [0, 1, 1, 0]
    assert _unlabeled_case(ContrastiveConfig(**base, negatives_from="both"))[0] == [1, 2, 3, 0]
    # PRT off: every unreliable pixel is a negative of every class
    assert _unlabeled_case(ContrastiveConfig(**base, rank_threshold=False))[0] == [2, 2, 2, 2]
    # PRT off with reliable pixels: never a negative of its own pseudo-label (y=0)
    off_rel = ContrastiveConfig(**base, rank_threshold=False, negatives_from="reliable")
    assert _unlabeled_case(off_rel)[0] == [0, 1, 1, 1]


def test_contrastive_loss_C_less_than_r_h_is_finite():
    # C = 3 < r_h = 20: window [1, 3): pixel0 (ranks 0,1,2) -> 1,2 ; pixel2 p=[.5,1/6,1/3] -> 1,2
    counts, q = _unlabeled_case(ContrastiveConfig(r_l=1, r_h=20, num_negatives=2), C=3)
    assert counts == [0, 2, 2]
    assert q.count.tolist() == [0, 2, 2]


def test_labeled_negatives_switches():
    case = _hand_case()
    off = ContrastiveConfig(num_negatives=2, labeled_negatives=False)
    _, stats = contrastive_loss(**case, queues=ClassQueues(2, 2, 8), cfg=off)
    assert stats["negatives_per_class"].tolist() == [0, 0]
    # PRT off on labeled pixels: every class != y (here C = 2, so the same as r_l = 3)
    three = dict(
        z_student=torch.randn(1, 2, 1, 2), z_teacher=torch.randn(1, 2, 1, 2),
        prob=_map([[[0.7, 0.2, 0.05, 0.05], [0.1, 0.2, 0.3, 0.4]]]), labels=torch.tensor([[[0, 3]]]),
        is_labeled=torch.tensor([True]), unreliable=torch.zeros(1, 1, 2, dtype=torch.bool),
        prototypes=torch.eye(4, 2), proto_valid=torch.ones(4, dtype=torch.bool),
    )
    _, s_on = contrastive_loss(**three, queues=ClassQueues(4, 2, 8), cfg=ContrastiveConfig(num_negatives=2))
    # pixel0 y=0 ranks [0,1,2,3] -> 1,2 ; pixel1 y=3 ranks [3,2,1,0] -> 2,1
    assert s_on["negatives_per_class"].tolist() == [0, 2, 2, 0]
    prt_off = ContrastiveConfig(num_negatives=2, rank_threshold=False)
    _, s_off = contrastive_loss(**three, queues=ClassQueues(4, 2, 8), cfg=prt_off)
    assert s_off["negatives_per_class"].tolist() == [1, 2, 2, 1]


def test_contrastive_loss_mixed_batch_uses_per_image_rules():
    # image0 labeled y=[0,1]; image1 unlabeled with pixel0 unreliable
    prob = torch.cat([_map([[[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]]), _map([[[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]]])])
    _, stats = contrastive_loss(
        z_student=torch.randn(2, 2, 1, 2), z_teacher=torch.randn(2, 2, 1, 2), prob=prob,
        labels=torch.tensor([[[0, 1]], [[255, 0]]]), is_labeled=torch.tensor([True, False]),
        unreliable=torch.tensor([[[False, False]], [[True, False]]]),
        prototypes=torch.eye(3, 2), proto_valid=torch.ones(3, dtype=torch.bool),
        queues=ClassQueues(3, 2, 8), cfg=ContrastiveConfig(r_l=1, r_h=3, num_negatives=2),
    )
    # labeled, r_l=1: y == argmax everywhere -> none ; unlabeled pixel0 ranks [0,1,2] -> 1, 2
    assert stats["negatives_per_class"].tolist() == [0, 1, 1]
    # anchors: img0 pixel0 (c0), pixel1 (c1); img1 pixel1 (c0, reliable)
    assert stats["anchors_per_class"].tolist() == [2, 1, 0]


def test_contrastive_loss_caps_anchors_per_class():
    z = torch.randn(1, 2, 4, 4)
    _, stats = contrastive_loss(
        z_student=z, z_teacher=z, prob=torch.tensor([0.9, 0.1]).view(1, 2, 1, 1).expand(1, 2, 4, 4),
        labels=torch.zeros(1, 4, 4, dtype=torch.long), is_labeled=torch.tensor([True]),
        unreliable=torch.zeros(1, 4, 4, dtype=torch.bool), prototypes=torch.eye(2), proto_valid=torch.ones(2, dtype=torch.bool),
        queues=ClassQueues(2, 2, 8), cfg=ContrastiveConfig(num_anchors=5, num_negatives=2),
    )
    assert stats["anchors_per_class"].tolist() == [5, 0]


def test_contrastive_loss_no_anchor_is_finite_zero():
    z_s = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss, stats = contrastive_loss(
        z_student=z_s, z_teacher=torch.randn(1, 3, 2, 2),
        prob=torch.full((1, 4, 2, 2), 0.25),  # p(c) = .25 <= delta_p everywhere
        labels=torch.zeros(1, 2, 2, dtype=torch.long), is_labeled=torch.tensor([True]),
        unreliable=torch.zeros(1, 2, 2, dtype=torch.bool), prototypes=torch.eye(4, 3),
        proto_valid=torch.ones(4, dtype=torch.bool), queues=ClassQueues(4, 3, 8), cfg=ContrastiveConfig(),
    )
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert int(stats["num_anchor_classes"]) == 0
    loss.backward()
    assert torch.all(z_s.grad == 0)


@pytest.mark.parametrize("use_queue", [True, False])
def test_contrastive_loss_empty_queue_is_finite_zero(use_queue):
    z_s = torch.randn(1, 2, 2, 2, requires_grad=True)
    loss, stats = contrastive_loss(
        z_student=z_s, z_teacher=torch.randn(1, 2, 2, 2),
        prob=torch.tensor([0.9, 0.1]).view(1, 2, 1, 1).expand(1, 2, 2, 2),
        labels=torch.zeros(1, 2, 2, dtype=torch.long), is_labeled=torch.tensor([True]),
        unreliable=torch.zeros(1, 2, 2, dtype=torch.bool), prototypes=torch.eye(2),
        proto_valid=torch.ones(2, dtype=torch.bool),
        queues=ClassQueues(2, 2, 8) if use_queue else None,
        cfg=ContrastiveConfig(r_l=1, use_queue=use_queue),  # rank(1) = 1 is not < 1: no negative
    )
    assert stats["anchors_per_class"].tolist() == [4, 0]
    assert stats["negatives_per_class"].tolist() == [0, 0]
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z_s.grad).all()


def test_contrastive_loss_single_class_is_finite():
    z_s = torch.randn(1, 4, 3, 3, requires_grad=True)
    loss, stats = contrastive_loss(
        z_student=z_s, z_teacher=torch.randn(1, 4, 3, 3), prob=torch.ones(1, 1, 3, 3),
        labels=torch.zeros(1, 3, 3, dtype=torch.long), is_labeled=torch.tensor([True]),
        unreliable=torch.zeros(1, 3, 3, dtype=torch.bool), prototypes=torch.ones(1, 4),
        proto_valid=torch.ones(1, dtype=torch.bool), queues=ClassQueues(1, 4, 8), cfg=ContrastiveConfig(),
    )
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert stats["anchors_per_class"].tolist() == [9]
    loss.backward()
    assert torch.isfinite(z_s.grad).all()


def test_contrastive_loss_requires_queue_and_valid_source():
    case = _hand_case()
    with pytest.raises(ValueError):
        contrastive_loss(**case, queues=None, cfg=ContrastiveConfig(use_queue=True))
    with pytest.raises(ValueError):
        contrastive_loss(**case, queues=ClassQueues(2, 2, 8), cfg=ContrastiveConfig(negatives_from="all"))


def test_contrastive_loss_half_inputs():
    case = _hand_case()
    for k in ("z_student", "z_teacher", "prob"):
        case[k] = case[k].half()
    loss, _ = contrastive_loss(**case, queues=ClassQueues(2, 2, 8), cfg=ContrastiveConfig(num_negatives=2))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(HAND_LOSS, abs=1e-3)
    assert math.isfinite(loss.item())


def test_pixel_info_nce_stays_float32_under_autocast():
    """Eq. 10 under train.amp: autocast must not run the similarity matmul in bf16."""
    g = torch.Generator().manual_seed(0)
    a, pos, neg = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g), torch.randn(64, 50, 32, generator=g)
    ref = pixel_info_nce(a, pos, neg, temperature=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = pixel_info_nce(a, pos, neg, temperature=0.1)
    assert amp.dtype == torch.float32
    assert amp.item() == pytest.approx(ref.item(), abs=1e-6)
