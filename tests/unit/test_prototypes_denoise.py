"""Eq. 15-18 (momentum prototypes) and Eq. 19-20 (prototypical denoising)."""

import math

import pytest
import torch

from u2plus.losses.denoise import denoise_probabilities, prototype_weights
from u2plus.losses.partition import pseudo_labels
from u2plus.losses.prototypes import (
    PrototypeMemory,
    class_feature_sums,
    momentum_prototype_update,
)

FEATS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
LABELS = torch.tensor([0, 0, 1, 255])


def test_class_feature_sums_hand_values():
    sums, counts = class_feature_sums(FEATS, LABELS, num_classes=3)
    torch.testing.assert_close(sums, torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]))
    assert counts.tolist() == [2, 1, 0]


def test_class_feature_sums_ignored_nan_does_not_leak():
    feats = FEATS.clone()
    feats[3] = float("nan")
    sums, _ = class_feature_sums(feats, LABELS, num_classes=3)
    assert torch.isfinite(sums).all()


def test_momentum_update_hand_values():
    old = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.6, 0.8]])
    init = torch.tensor([True, False, True])
    sums, counts = class_feature_sums(FEATS, LABELS, num_classes=3)
    new, new_init = momentum_prototype_update(old, init, sums, counts, momentum=0.5)
    # c0: .5*[0,1] + .5*[.5,.5] = [.25,.75] -> /0.790569 ; c1 first seen -> centroid [1,0]
    # c2 no pixel -> unchanged
    expected = torch.tensor([[0.3162278, 0.9486833], [1.0, 0.0], [0.6, 0.8]])
    torch.testing.assert_close(new, expected, atol=1e-6, rtol=0)
    assert new_init.tolist() == [True, True, True]


def test_momentum_zero_gives_in_batch_centroid_and_absent_class_stays_uninitialised():
    old = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    init = torch.tensor([True, False, False])
    sums, counts = class_feature_sums(FEATS, LABELS, num_classes=3)
    new, new_init = momentum_prototype_update(old, init, sums, counts, momentum=0.0)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(new, torch.tensor([[s, s], [1.0, 0.0], [0.0, 0.0]]), atol=1e-6, rtol=0)
    assert new_init.tolist() == [True, True, False]


def test_prototype_memory_buffers_update_and_state_dict():
    mem = PrototypeMemory(num_classes=3, dim=2)
    assert set(mem.state_dict()) == {"prototypes", "initialized"}
    sums, counts = class_feature_sums(FEATS, LABELS, num_classes=3)
    mem.update(sums, counts, momentum=0.9)  # first sight: centroids
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(mem.prototypes, torch.tensor([[s, s], [1.0, 0.0], [0.0, 0.0]]), atol=1e-6, rtol=0)
    mem.update(torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]]), torch.tensor([0, 2, 0]), momentum=0.9)
    # c1: .9*[1,0] + .1*[0,1] = [.9,.1] normalised
    n = math.hypot(0.9, 0.1)
    torch.testing.assert_close(mem.prototypes[1], torch.tensor([0.9 / n, 0.1 / n]), atol=1e-6, rtol=0)
    other = PrototypeMemory(3, 2)
    other.load_state_dict(mem.state_dict())
    assert torch.equal(other.prototypes, mem.prototypes)
    assert other.initialized.tolist() == [True, True, False]


def test_prototype_weights_hand_values_uninitialised_distance_sqrt2():
    z = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [-1.0, 0.0]])
    init = torch.tensor([True, True, False, True])
    w = prototype_weights(z, protos, init)
    # softmax(-[0, sqrt2, sqrt2 (uninitialised), 2])
    expected = torch.tensor([0.6166868, 0.1499269, 0.1499269, 0.0834595]).view(1, 4, 1, 1)
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=0)


def test_denoise_changes_argmax_hand_case():
    prob = torch.tensor([0.5, 0.3, 0.2]).view(1, 3, 1, 1)
    w = torch.tensor([0.1, 0.6, 0.3]).view(1, 3, 1, 1)
    p_star = denoise_probabilities(prob, w)
    torch.testing.assert_close(p_star.flatten(), torch.tensor([0.05, 0.18, 0.06]))
    rel = torch.ones(1, 1, 1, dtype=torch.bool)
    assert pseudo_labels(prob, rel).item() == 0
    assert pseudo_labels(p_star, rel).item() == 1


def test_prototype_weights_shape_and_sum():
    gen = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 4, 3, 5, generator=gen), dim=1)
    protos = torch.nn.functional.normalize(torch.randn(6, 4, generator=gen), dim=1)
    w = prototype_weights(z, protos, torch.ones(6, dtype=torch.bool))
    assert w.shape == (2, 6, 3, 5)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 3, 5))
    # the closest prototype gets the largest weight
    d = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 4), protos)
    assert torch.equal(w.permute(0, 2, 3, 1).reshape(-1, 6).argmax(1), d.argmin(1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_prototype_weights_fp32_output(dtype):
    z = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).to(dtype)
    w = prototype_weights(z, torch.eye(2), torch.ones(2, dtype=torch.bool))
    assert w.dtype == torch.float32


def test_prototype_weights_stay_float32_under_autocast():
    """Eq. 19 under train.amp: the distances are computed in float32."""
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, 16, 5, 7, generator=g), dim=1)
    protos = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    init = torch.ones(4, dtype=torch.bool)
    ref = prototype_weights(z, protos, init)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = prototype_weights(z, protos, init)
    assert amp.dtype == torch.float32
    assert torch.allclose(amp, ref, atol=1e-6)


@pytest.mark.parametrize("momentum, steps", [(0.999, 693), (0.99, 50), (0.9, 7)])
def test_first_centroid_share_after_T_updates_is_m_to_the_T(momentum, steps):
    """The first centroid e_0, then T updates towards e_1: without the re-normalisation the
    prototype would be m^T e_0 + (1 - m^T) e_1; with it, e_0 keeps a little more (at most +0.1
    here), so m^T is the share to plan a schedule with (0.999^693 ~ one half)."""
    from u2plus.losses.prototypes import prototype_share_left

    memory = PrototypeMemory(1, 2)
    counts = torch.ones(1, dtype=torch.long)
    memory.update(torch.tensor([[1.0, 0.0]]), counts, momentum)
    for _ in range(steps):
        memory.update(torch.tensor([[0.0, 1.0]]), counts, momentum)
    p0, p1 = memory.prototypes[0].double().tolist()
    share = prototype_share_left(momentum, steps)
    assert share <= p0 / (p0 + p1) < share + 0.1
    assert prototype_share_left(0.999, 693) == pytest.approx(0.5, abs=0.001)
