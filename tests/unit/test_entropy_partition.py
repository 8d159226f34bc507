"""Eq. 11-13: entropy, dynamic partition, entropy threshold, reliable mask, pseudo-labels."""

import numpy as np
import pytest
import torch

from u2plus.losses.entropy import pixel_entropy
from u2plus.losses.partition import (
    classwise_entropy_threshold,
    entropy_threshold,
    pseudo_labels,
    reliable_mask,
    unreliable_fraction,
)


def _prob_2x2():
    """One 2x2 image, C=3: [.7,.2,.1], [0,0,1], [.5,.5,0], [1/3,1/3,1/3]."""
    p = torch.tensor(
        [
            [[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]],
            [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]],
        ]
    )  # [H, W, C]
    return p.permute(2, 0, 1).unsqueeze(0)  # [1, 3, 2, 2]


# entropies: -(.7 ln .7 + .2 ln .2 + .1 ln .1), 0, ln 2, ln 3
H_2x2 = torch.tensor([[[0.8018186, 0.0], [0.6931472, 1.0986123]]])


def test_pixel_entropy_hand_values():
    h = pixel_entropy(_prob_2x2())
    assert h.shape == (1, 2, 2)
    torch.testing.assert_close(h, H_2x2, atol=1e-6, rtol=0)


def test_pixel_entropy_half_input_computes_fp32():
    h = pixel_entropy(_prob_2x2().half())
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, H_2x2, atol=2e-3, rtol=0)


def test_unreliable_fraction_linear_schedule_and_clip():
    assert unreliable_fraction(0.2, 0.0) == pytest.approx(0.2)
    assert unreliable_fraction(0.2, 0.5) == pytest.approx(0.1)
    assert unreliable_fraction(0.2, 0.75) == pytest.approx(0.05)
    assert unreliable_fraction(0.2, 1.0) == pytest.approx(0.0)
    assert unreliable_fraction(0.2, 1.7) == pytest.approx(0.0)  # clipped
    assert unreliable_fraction(0.2, -0.3) == pytest.approx(0.2)  # clipped
    assert unreliable_fraction(0.2, 0.5, dynamic=False) == pytest.approx(0.2)  # DPA off


def test_entropy_threshold_hand_values():
    # sorted H = [0, ln2, 0.80182, ln3]
    # alpha .25 -> pos .75*3 = 2.25 -> 0.80182 + .25*(1.09861 - 0.80182) = 0.876017
    assert entropy_threshold(H_2x2, 0.25).item() == pytest.approx(0.8760170, abs=1e-6)
    # alpha .5 -> pos 1.5 -> (ln2 + 0.80182)/2 = 0.747483
    assert entropy_threshold(H_2x2, 0.5).item() == pytest.approx(0.7474829, abs=1e-6)
    assert entropy_threshold(H_2x2, 0.0).item() == pytest.approx(1.0986123, abs=1e-6)  # max
    assert entropy_threshold(H_2x2, 1.0).item() == pytest.approx(0.0, abs=1e-7)  # min
    g = entropy_threshold(H_2x2, 0.25)
    assert g.dim() == 0 and g.dtype == torch.float32


def test_entropy_threshold_valid_mask_uses_only_valid_pixels():
    valid = torch.tensor([[[True, True], [True, False]]])  # drop ln3
    # [0, ln2, 0.80182], alpha .5 -> pos 1 -> ln2
    assert entropy_threshold(H_2x2, 0.5, valid).item() == pytest.approx(0.6931472, abs=1e-6)


def test_entropy_threshold_no_valid_pixel_returns_zero_so_nobody_reliable():
    valid = torch.zeros(1, 2, 2, dtype=torch.bool)
    g = entropy_threshold(H_2x2, 0.2, valid)
    assert g.dim() == 0 and g.item() == 0.0
    assert not reliable_mask(H_2x2, g).any()
    assert entropy_threshold(torch.empty(0), 0.2).item() == 0.0


def test_entropy_threshold_matches_numpy_percentile():
    gen = torch.Generator().manual_seed(0)
    h = torch.rand(3, 7, 5, generator=gen)
    for alpha in (0.0, 0.13, 0.2, 0.5, 0.977, 1.0):
        expected = np.percentile(h.numpy().ravel(), 100 * (1 - alpha))
        assert entropy_threshold(h, alpha).item() == pytest.approx(expected, abs=1e-6)


def test_entropy_threshold_above_torch_quantile_size_limit():
    n = 2**24 + 1  # torch.quantile refuses more than 2**24 elements
    h = torch.arange(n, dtype=torch.float32).flip(0)
    # pos = 0.75 * 2**24 = 12582912 exactly
    assert entropy_threshold(h, 0.25).item() == 12582912.0


def test_reliable_mask_is_strict_and_partitions():
    g = entropy_threshold(H_2x2, 0.25)
    rel = reliable_mask(H_2x2, g)
    assert rel.tolist() == [[[True, True], [True, False]]]
    # a pixel exactly at the threshold is unreliable (H < gamma strict)
    rel2 = reliable_mask(H_2x2, H_2x2[0, 1, 0].clone())
    assert rel2.tolist() == [[[False, True], [False, False]]]
    unrel = ~rel2
    assert (rel2 ^ unrel).all()


def test_pseudo_labels_argmax_on_reliable_ignore_elsewhere():
    rel = torch.tensor([[[True, True], [True, False]]])
    y = pseudo_labels(_prob_2x2(), rel, ignore_index=255)
    # pixel (1,0) is a tie [.5,.5,0] -> lowest index 0
    assert y.dtype == torch.long
    assert y.tolist() == [[[0, 2], [0, 255]]]
    assert pseudo_labels(_prob_2x2(), rel, ignore_index=-1)[0, 1, 1].item() == -1


def test_classwise_threshold_hand_values():
    # class 0: entropies 0.1, 0.2, 0.3, 0.9 -> 0.75 quantile at position 2.25: 0.3 + 0.25 * 0.6 = 0.45
    # class 2: 1.5, 2.0 -> position 0.75: 1.5 + 0.75 * 0.5 = 1.875; class 1 absent -> 0
    # the invalid pixel (entropy 5.0, class 2) is left out
    entropy = torch.tensor([[0.9, 0.1, 2.0, 0.3], [0.2, 1.5, 5.0, 0.1]])
    predicted = torch.tensor([[0, 0, 2, 0], [0, 2, 2, 3]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, True]])
    gamma = classwise_entropy_threshold(entropy, predicted, 0.25, 4, valid)
    assert gamma.tolist() == pytest.approx([0.45, 0.0, 1.875, 0.1])
    assert gamma.dtype == torch.float32


def test_classwise_threshold_matches_numpy_per_class_and_keeps_each_class_share():
    g = torch.Generator().manual_seed(0)
    entropy = torch.rand(2, 24, 32, generator=g)
    predicted = torch.randint(0, 2, (2, 24, 32), generator=g)
    predicted[torch.rand(2, 24, 32, generator=g) < 0.1] = 2  # a rare class the teacher is unsure of:
    entropy[predicted == 2] += 1.5  # all its pixels lie above the global quantile
    gamma = classwise_entropy_threshold(entropy, predicted, 0.2, 3)
    for c in range(3):
        assert gamma[c].item() == pytest.approx(np.percentile(entropy[predicted == c].numpy(), 80), rel=1e-5)
    reliable = reliable_mask(entropy, gamma[predicted])
    for c in range(3):
        assert reliable[predicted == c].float().mean().item() == pytest.approx(0.8, abs=0.01)
    # one global quantile leaves class 2 without a single reliable pixel
    assert not bool(reliable_mask(entropy, entropy_threshold(entropy, 0.2))[predicted == 2].any())
