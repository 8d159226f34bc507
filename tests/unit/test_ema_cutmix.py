"""Eq. 2 (EMA teacher) and CutMix (docs/method.md, step 4)."""

import math

import pytest
import torch
from torch import nn

from u2plus.methods.mean_teacher import ema_momentum, ema_update, unsup_rampup
from u2plus.mixing import apply_cutmix, cutmix_masks, cutmix_partners


def test_ema_momentum_schedule():
    assert ema_momentum(0, 0.99) == 0.0
    assert ema_momentum(1, 0.99) == pytest.approx(0.5)
    assert ema_momentum(9, 0.99) == pytest.approx(0.9)
    assert ema_momentum(99, 0.99) == pytest.approx(0.99)
    assert ema_momentum(10_000, 0.99) == pytest.approx(0.99)
    assert ema_momentum(10_000, 0.999) == pytest.approx(0.999)


def test_ema_momentum_counts_from_start():
    # before and at ``start`` the teacher copies the student; then 1 - 1/(t+1) with t = step - start
    assert ema_momentum(3, 0.99, start=81) == 0.0
    assert ema_momentum(81, 0.99, start=81) == 0.0
    assert ema_momentum(82, 0.99, start=81) == pytest.approx(0.5)
    assert ema_momentum(90, 0.99, start=81) == pytest.approx(0.9)
    assert ema_momentum(81 + 99, 0.99, start=81) == pytest.approx(0.99)


def test_ema_momentum_without_ramp_is_the_maximum_from_start():
    assert ema_momentum(80, 0.99, start=81, ramp=False) == 0.0
    assert ema_momentum(81, 0.99, start=81, ramp=False) == 0.99
    assert ema_momentum(82, 0.999, start=81, ramp=False) == 0.999


def test_unsup_rampup_is_the_sigmoid_ramp_of_mean_teacher():
    # exp(-5 (1 - t/N)^2): t = 0 -> e^-5, t = N/2 -> e^-1.25, t = 3N/4 -> e^-0.3125, then 1
    assert unsup_rampup(0, 200) == pytest.approx(0.0067379, abs=1e-7)
    assert unsup_rampup(100, 200) == pytest.approx(0.2865048, abs=1e-7)
    assert unsup_rampup(150, 200) == pytest.approx(0.7316156, abs=1e-7)
    assert unsup_rampup(200, 200) == 1.0 and unsup_rampup(5000, 200) == 1.0
    assert unsup_rampup(-1, 200) == 0.0  # still in the supervised-only warm-up
    assert unsup_rampup(0, 0) == 1.0 and unsup_rampup(-3, 0) == 1.0  # off: the paper's full weight


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1, bias=False)
        self.bn = nn.BatchNorm1d(1)


def _pair():
    t, s = _Net(), _Net()
    with torch.no_grad():
        t.lin.weight.fill_(1.0)
        s.lin.weight.fill_(3.0)
        t.bn.running_mean.fill_(0.0)
        s.bn.running_mean.fill_(2.0)
        t.bn.running_var.fill_(1.0)
        s.bn.running_var.fill_(5.0)
        s.bn.num_batches_tracked.fill_(5)
    return t, s


def test_ema_update_params_and_buffers_hand_values():
    t, s = _pair()
    ema_update(t, s, momentum=0.75)
    assert t.lin.weight.item() == pytest.approx(0.75 * 1 + 0.25 * 3)  # 1.5
    assert t.bn.running_mean.item() == pytest.approx(0.5)  # buffers blended too
    assert t.bn.running_var.item() == pytest.approx(0.75 * 1 + 0.25 * 5)  # 2.0
    assert t.bn.num_batches_tracked.item() == 5  # integer buffer copied
    assert s.lin.weight.item() == 3.0  # student untouched
    assert not t.lin.weight.grad_fn and t.lin.weight.requires_grad


def test_ema_update_momentum_zero_copies_student():
    t, s = _pair()
    ema_update(t, s, momentum=ema_momentum(0, 0.99))
    for a, b in zip(t.state_dict().values(), s.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_update_structure_mismatch_raises():
    with pytest.raises(ValueError):
        ema_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.5)


def test_cutmix_masks_prob_zero_and_one():
    gen = torch.Generator().manual_seed(0)
    assert not cutmix_masks(4, 16, 20, prob=0.0, generator=gen).any()
    m = cutmix_masks(64, 16, 20, prob=1.0, generator=gen)
    assert m.shape == (64, 16, 20) and m.dtype == torch.bool
    for b in range(64):
        ys, xs = torch.nonzero(m[b], as_tuple=True)
        assert ys.numel() > 0
        # exactly one axis-aligned box: the True set equals its bounding box
        box = torch.zeros_like(m[b])
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        assert torch.equal(box, m[b])
        ratio = ys.numel() / (16 * 20)
        assert 0.01 <= ratio <= 0.45


def test_cutmix_masks_probability_and_reproducibility():
    m1 = cutmix_masks(400, 8, 8, prob=0.5, generator=torch.Generator().manual_seed(1))
    m2 = cutmix_masks(400, 8, 8, prob=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(m1, m2)
    frac = m1.flatten(1).any(1).float().mean().item()
    assert 0.4 < frac < 0.6
    assert cutmix_masks(2, 4, 4, prob=1.0, device="cpu").device.type == "cpu"


def test_apply_cutmix_hand_values_all_tensor_kinds():
    mask = torch.tensor([[[True, False], [False, False]], [[False, False], [False, True]]])
    perm = torch.tensor([1, 0])
    img = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    lab = torch.tensor([[[1, 1], [1, 1]], [[2, 2], [2, 2]]])
    rel = torch.tensor([[[True, True], [True, True]], [[False, False], [False, False]]])
    prob = torch.stack([torch.full((2, 2, 2), 0.1), torch.full((2, 2, 2), 0.9)])
    img_m, lab_m, rel_m, prob_m = apply_cutmix(mask, perm, img, lab, rel, prob)
    assert lab_m.tolist() == [[[2, 1], [1, 1]], [[2, 2], [2, 1]]]
    assert rel_m.tolist() == [[[False, True], [True, True]], [[False, False], [False, True]]]
    # image 0 channel c pixel (0,0) comes from image 1: value 12 + 4c
    assert img_m[0, :, 0, 0].tolist() == [12.0, 16.0, 20.0]
    assert img_m[0, :, 1, 1].tolist() == [3.0, 7.0, 11.0]
    assert img_m[1, :, 1, 1].tolist() == [3.0, 7.0, 11.0]
    assert prob_m[0, :, 0, 0].tolist() == pytest.approx([0.9, 0.9])
    assert prob_m[0, :, 0, 1].tolist() == pytest.approx([0.1, 0.1])
    assert lab_m.dtype == torch.long and rel_m.dtype == torch.bool


def test_apply_cutmix_shape_mismatch_raises():
    with pytest.raises(ValueError):
        apply_cutmix(torch.zeros(2, 4, 4, dtype=torch.bool), torch.tensor([1, 0]), torch.zeros(2, 3, 4, 5))


def test_cutmix_partners_never_self_and_uniform_over_the_others():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([cutmix_partners(4, g) for _ in range(4000)])  # [4000, 4]
    assert draws.dtype == torch.long
    assert not bool((draws == torch.arange(4)).any())  # docs/method.md, step 4: never the image itself
    # each other image is the partner a third of the time (a permutation drawn with randperm
    # would make an image its own partner a quarter of the time at 4 images)
    for i in range(4):
        freq = torch.bincount(draws[:, i], minlength=4).float() / len(draws)
        others = [j for j in range(4) if j != i]
        assert freq[others].tolist() == pytest.approx([1 / 3] * 3, abs=0.03)
    assert torch.equal(cutmix_partners(7, torch.Generator().manual_seed(3)),
                       cutmix_partners(7, torch.Generator().manual_seed(3)))


def test_cutmix_partners_of_a_single_image_leave_it_unchanged():
    partner = cutmix_partners(1, torch.Generator().manual_seed(0))
    assert partner.tolist() == [0]
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(apply_cutmix(torch.ones(1, 4, 4, dtype=torch.bool), partner, x)[0], x)


def test_rare_class_paste_draws_classes_by_weight_from_a_labeled_partner():
    from u2plus.mixing import rare_class_paste_masks

    labels = torch.tensor([[[0, 0, 1, 1, 2, 2, 255, 255]]])  # one labeled image, classes 0-2
    weights = torch.tensor([0.0, 1.0, 3.0])
    draws = [rare_class_paste_masks(labels, 2, weights, 1.0, 1, torch.Generator().manual_seed(s)) for s in range(400)]
    picked = torch.stack([labels[0, 0][m[i, 0]].unique() for m, _ in draws for i in range(2)])  # one class each
    share_2 = float((picked == 2).float().mean())
    assert share_2 == pytest.approx(0.75, abs=0.05) and not bool((picked == 0).any())  # weight 0: never first
    mask, partner = draws[0]
    assert partner.tolist() == [0, 0] and not bool(mask[:, 0, 6:].any())  # ignored pixels are never pasted
    # more classes asked than present: all present ones; prob 0: nothing
    every, _ = rare_class_paste_masks(labels, 1, weights, 1.0, 5, torch.Generator().manual_seed(0))
    assert every[0, 0].tolist() == [True] * 6 + [False] * 2
    none, _ = rare_class_paste_masks(labels, 3, weights, 0.0, 2, torch.Generator().manual_seed(0))
    assert not bool(none.any())


def test_true_class_confidence_by_hand():
    from u2plus.mixing import true_class_confidence

    # 1 x 2 logits, labels at twice the resolution (nearest: pixels 0 and 2 count)
    logits = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]]])  # pixel 0: p = (0.5, 0.5); pixel 1: p0 = e^2/(e^2+1)
    labels = torch.tensor([[[1, 255, 0, 0]]])
    sums, counts = true_class_confidence(logits, labels, 2)
    p0 = math.exp(2) / (math.exp(2) + 1)
    assert counts.tolist() == [1.0, 1.0]
    assert sums.tolist() == pytest.approx([p0, 0.5])
