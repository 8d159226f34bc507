"""u2plus.losses.supervised: pixel cross-entropy and OHEM on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from u2plus.losses.supervised import (
    median_frequency_weights,
    ohem_cross_entropy,
    pixel_cross_entropy,
    upsample_logits,
    weighted_pixel_count,
)


def hand_logits():
    # pixel 0: logits (2, 0); pixel 1: logits (0, 1)  -> [1, 2, 1, 2]
    return torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]], requires_grad=True)


def test_pixel_ce_hand_case():
    target = torch.tensor([[[0, 0]]])
    # log(1 + e^-2) = 0.12692801, log(1 + e^1) = 1.31326169; mean = 0.72009485
    loss = pixel_cross_entropy(hand_logits(), target)
    assert loss.item() == pytest.approx(0.7200948492805977, abs=1e-6)
    target = torch.tensor([[[1, 1]]])
    # log(1 + e^2) = 2.12692801, log(1 + e^-1) = 0.31326169
    assert pixel_cross_entropy(hand_logits(), target).item() == pytest.approx((2.126928011 + 0.313261687) / 2,
                                                                             abs=1e-6)


def test_pixel_ce_ignores_pixels():
    logits = hand_logits()
    loss = pixel_cross_entropy(logits, torch.tensor([[[0, 255]]]))
    assert loss.item() == pytest.approx(0.1269280110429726, abs=1e-6)
    loss.backward()
    assert torch.all(logits.grad[..., 1] == 0)  # the ignored pixel gets no gradient
    assert torch.any(logits.grad[..., 0] != 0)


def test_pixel_ce_custom_ignore_index():
    loss = pixel_cross_entropy(hand_logits(), torch.tensor([[[7, 1]]]), ignore_index=7)
    assert loss.item() == pytest.approx(0.313261687, abs=1e-6)


def test_pixel_ce_all_ignored_is_zero_with_grad():
    logits = hand_logits()
    loss = pixel_cross_entropy(logits, torch.tensor([[[255, 255]]]))
    assert loss.item() == 0.0
    assert not math.isnan(loss.item())
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_upsample_logits_noop_and_bilinear():
    x = torch.randn(1, 2, 3, 4)
    assert upsample_logits(x, (3, 4)) is x
    # class 0 along width: (0, 4) -> bilinear, align_corners=False, to 4 columns: (0, 1, 3, 4)
    y = upsample_logits(torch.tensor([[[[0.0, 4.0]], [[0.0, 0.0]]]]), (1, 4))
    assert torch.allclose(y[0, 0, 0], torch.tensor([0.0, 1.0, 3.0, 4.0]))


def test_pixel_ce_upsamples_low_resolution_logits():
    logits = torch.tensor([[[[0.0, 4.0]], [[0.0, 0.0]]]], requires_grad=True)  # 1x2x1x2
    target = torch.ones(1, 1, 4, dtype=torch.long)  # label at 1x4
    # upsampled class-0 logits (0, 1, 3, 4), class 1 = 0 -> CE_i = log(1 + e^{x_i})
    loss = pixel_cross_entropy(logits, target)
    assert loss.item() == pytest.approx(2.26828653689243, abs=1e-5)
    loss.backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape


def test_pixel_ce_bf16_logits_computed_in_float():
    logits = hand_logits().detach().to(torch.bfloat16)
    loss = pixel_cross_entropy(logits, torch.tensor([[[0, 0]]]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.72009485, abs=1e-3)


def prob_logits(probs):
    """2-class logits whose class-0 softmax probability is exactly ``probs`` (1 x 2 x 1 x N)."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()])[None, :, None, :].float()


def test_ohem_keeps_pixels_below_thresh():
    logits = prob_logits([0.9, 0.6, 0.3, 0.8])
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    # min_kept=1: threshold = max(0.3, 0.7) -> pixels with p <= 0.7: 0.6 and 0.3
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1)
    assert loss.item() == pytest.approx((-math.log(0.6) - math.log(0.3)) / 2, abs=1e-5)  # 0.8573992


def test_ohem_min_kept_raises_threshold():
    logits = prob_logits([0.9, 0.6, 0.3, 0.8])
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    # min_kept=3: 3rd smallest p is 0.8 > thresh -> keep 0.6, 0.3, 0.8
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=3)
    assert loss.item() == pytest.approx(0.6459806598020456, abs=1e-5)
    # min_kept beyond the number of valid pixels: every valid pixel is kept
    loss_all = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=100)
    assert loss_all.item() == pytest.approx(0.5108256237659907, abs=1e-5)


def test_ohem_excludes_ignored_pixels_even_if_hard():
    logits = prob_logits([0.9, 0.6, 0.05, 0.3, 0.8])
    target = torch.tensor([[[0, 0, 255, 0, 0]]])
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1)
    assert loss.item() == pytest.approx(0.8573992140459634, abs=1e-5)
    loss3 = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=3)
    assert loss3.item() == pytest.approx(0.6459806598020456, abs=1e-5)


def test_ohem_true_class_other_than_zero():
    # same probabilities, but target class 1 with the columns swapped
    logits = prob_logits([0.9, 0.6, 0.3, 0.8]).flip(1)
    target = torch.ones(1, 1, 4, dtype=torch.long)
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1)
    assert loss.item() == pytest.approx(0.8573992140459634, abs=1e-5)


def test_ohem_gradient_only_on_kept_pixels():
    logits = prob_logits([0.9, 0.6, 0.3, 0.8]).requires_grad_(True)
    ohem_cross_entropy(logits, torch.zeros(1, 1, 4, dtype=torch.long), thresh=0.7, min_kept=1).backward()
    kept = (logits.grad[0].abs().sum(0)[0] > 0).tolist()
    assert kept == [False, True, True, False]


def test_ohem_all_ignored_is_zero_with_grad():
    logits = prob_logits([0.5, 0.5]).requires_grad_(True)
    loss = ohem_cross_entropy(logits, torch.full((1, 1, 2), 255, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ohem_thresh_one_equals_plain_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    target = torch.randint(0, 3, (2, 8, 10), generator=g)
    target[0, :2] = 255
    plain = pixel_cross_entropy(logits, target)
    ohem = ohem_cross_entropy(logits, target, thresh=1.0, min_kept=1)
    assert ohem.item() == pytest.approx(plain.item(), rel=1e-5)


# -- class weights (train.class_weights) -----------------------------------------------------------
def test_pixel_ce_class_weights_hand_case():
    # pixel 0 (target 0): 0.12692801; pixel 1 (target 1): 0.31326169; weights (1, 3)
    # -> (1 * 0.12692801 + 3 * 0.31326169) / (1 + 3)
    loss = pixel_cross_entropy(hand_logits(), torch.tensor([[[0, 1]]]), class_weights=torch.tensor([1.0, 3.0]))
    assert loss.item() == pytest.approx((0.126928011 + 3 * 0.313261687) / 4, abs=1e-6)
    # equal weights are the plain mean
    plain = pixel_cross_entropy(hand_logits(), torch.tensor([[[0, 1]]]))
    same = pixel_cross_entropy(hand_logits(), torch.tensor([[[0, 1]]]), class_weights=torch.tensor([2.0, 2.0]))
    assert same.item() == pytest.approx(plain.item(), abs=1e-7)


def test_weighted_shares_add_up_to_the_global_weighted_mean():
    """What each process returns (local weighted sum / global weight sum) adds up to the mean
    over the whole batch, so the weights mean the same at any process count."""
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3, 5, 6), torch.randint(0, 3, (4, 5, 6))
    target[0, 0] = 255
    w = torch.tensor([0.5, 2.0, 1.0])
    whole = pixel_cross_entropy(logits, target, class_weights=w)
    count = weighted_pixel_count(target[:2], class_weights=w) + weighted_pixel_count(target[2:], class_weights=w)
    assert count.item() == pytest.approx(float(w[target[target != 255]].sum()))
    shares = sum(pixel_cross_entropy(logits[s], target[s], count_override=count, class_weights=w)
                 for s in (slice(0, 2), slice(2, 4)))
    assert shares.item() == pytest.approx(whole.item(), rel=1e-6)
    assert weighted_pixel_count(target).item() == 4 * 30 - 6


def test_median_frequency_weights_hand_case():
    # frequencies f = pixels / pixels of the images holding the class: 0.1, 0.2, 0.4, 0.8, class 4
    # absent; median (lower, of four) 0.2 -> w = 0.2 / f = 2, 1, 0.5, 0.25; the absent class 1
    w = median_frequency_weights(torch.tensor([10, 40, 40, 160, 0]), torch.tensor([100, 200, 100, 200, 0]))
    assert w.tolist() == pytest.approx([2.0, 1.0, 0.5, 0.25, 1.0])
    assert median_frequency_weights(torch.zeros(3, dtype=torch.long), torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]
