"""Eq. 4 (symmetric CE) and Eq. 14 (adaptive weight)."""

import math

import pytest
import torch

from u2plus.losses.sce import adaptive_unsupervised_loss, symmetric_cross_entropy

# softmax(log p) = p = [.7, .2, .1] at each of 3 pixels of a 1x3 image
LOGITS = torch.log(torch.tensor([0.7, 0.2, 0.1])).view(1, 3, 1, 1).expand(1, 3, 1, 3).contiguous()
# l_sce(target 0) = -ln .7 + 0.1 * (-ln 1e-4) * (1 - .7)  = 0.356675 + 0.276310
L0 = 0.6329852
# l_sce(target 1) = -ln .2 + 0.1 * (-ln 1e-4) * (1 - .2)  = 1.609438 + 0.736827
L1 = 2.3462651


def test_sce_hand_values_and_ignore():
    target = torch.tensor([[[0, 1, 255]]])
    loss = symmetric_cross_entropy(LOGITS, target)
    assert loss.shape == (1, 1, 3)
    torch.testing.assert_close(loss, torch.tensor([[[L0, L1, 0.0]]]), atol=1e-5, rtol=0)


def test_sce_ce_only_and_rce_only():
    target = torch.tensor([[[0, 0, 0]]])
    ce = symmetric_cross_entropy(LOGITS, target, xi1=1.0, xi2=0.0)
    assert ce[0, 0, 0].item() == pytest.approx(0.3566749, abs=1e-6)  # -ln .7
    rce = symmetric_cross_entropy(LOGITS, target, xi1=0.0, xi2=1.0)
    assert rce[0, 0, 0].item() == pytest.approx(2.7631021, abs=1e-5)  # 9.21034 * 0.3


def test_sce_half_logits_give_fp32_and_zero_grad_on_ignored():
    logits = LOGITS.clone().half().requires_grad_(True)
    loss = symmetric_cross_entropy(logits, torch.tensor([[[0, 1, 255]]]))
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert torch.all(logits.grad[..., 2] == 0)
    assert torch.any(logits.grad[..., 0] != 0)


def test_adaptive_loss_hand_values():
    pseudo = torch.tensor([[[0, 1, 2]]])
    reliable = torch.tensor([[[True, True, False]]])  # pixel 2 not counted
    mean = (L0 + L1) / 2  # 1.489625
    assert adaptive_unsupervised_loss(LOGITS, pseudo, reliable).item() == pytest.approx(mean, abs=1e-5)
    assert adaptive_unsupervised_loss(LOGITS, pseudo, reliable, eta=2.0).item() == pytest.approx(2 * mean, abs=1e-5)
    # global count (e.g. all-reduced over processes) of 4 reliable pixels
    v = adaptive_unsupervised_loss(LOGITS, pseudo, reliable, count_override=torch.tensor(4))
    assert v.item() == pytest.approx((L0 + L1) / 4, abs=1e-5)
    # weighting differs from a plain mean over all pixels (Eq. 14 normalises by #reliable)
    assert v.item() != pytest.approx((L0 + L1) / 3, abs=1e-3)


def test_adaptive_loss_no_reliable_pixel_is_finite_differentiable_zero():
    logits = LOGITS.clone().requires_grad_(True)
    pseudo = torch.full((1, 1, 3), 255)
    reliable = torch.zeros(1, 1, 3, dtype=torch.bool)
    v = adaptive_unsupervised_loss(logits, pseudo, reliable)
    assert torch.isfinite(v) and v.item() == 0.0
    assert v.requires_grad
    v.backward()
    assert torch.all(logits.grad == 0)


def test_adaptive_loss_gradient_only_from_reliable_pixels():
    logits = LOGITS.clone().requires_grad_(True)
    v = adaptive_unsupervised_loss(logits, torch.tensor([[[0, 1, 2]]]), torch.tensor([[[True, False, False]]]))
    assert v.item() == pytest.approx(L0, abs=1e-5)
    v.backward()
    assert torch.any(logits.grad[..., 0] != 0)
    assert torch.all(logits.grad[..., 1:] == 0)


def test_rce_constant_is_minus_log_1e4():
    # RCE of a fully wrong prediction (p_target -> 0) tends to -log(1e-4)
    logits = torch.tensor([30.0, -30.0]).view(1, 2, 1, 1)
    r = symmetric_cross_entropy(logits, torch.tensor([[[1]]]), xi1=0.0, xi2=1.0)
    assert r.item() == pytest.approx(-math.log(1e-4), rel=1e-6)
