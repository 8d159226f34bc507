"""Distribution alignment (beyond the paper) on hand-computed cases, and its place in the criterion."""

import pytest
import torch

from u2plus.criterion import CriterionConfig, U2PLPlusCriterion
from u2plus.losses.alignment import align_distribution, class_frequencies, mean_probabilities


def test_align_distribution_hand_computed():
    prob = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)
    target = torch.tensor([0.2, 0.4, 0.4])
    current = torch.tensor([0.4, 0.4, 0.2])
    # p * target / current = [0.3, 0.3, 0.2] -> / 0.8
    expected = torch.tensor([0.375, 0.375, 0.25]).view(1, 3, 1, 1)
    assert torch.allclose(align_distribution(prob, target, current), expected)


def test_equal_priors_change_nothing_and_a_raised_class_can_win_the_argmax():
    prob = torch.rand(2, 4, 3, 5).softmax(1)
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert torch.allclose(align_distribution(prob, prior, prior), prob)
    p = torch.tensor([0.5, 0.4, 0.1]).view(1, 3, 1, 1)  # class 1 under-predicted 1:4 against the labels
    out = align_distribution(p, torch.tensor([0.4, 0.4, 0.2]), torch.tensor([0.7, 0.1, 0.2]))
    assert out.argmax(1).item() == 1 and torch.allclose(out.sum(1), torch.ones(1, 1, 1))


def test_class_frequencies_and_mean_probabilities():
    labels = torch.tensor([[[0, 2, 255], [2, 2, 1]]])
    assert class_frequencies(labels, 4, 255).tolist() == [1.0, 1.0, 3.0, 0.0]
    prob = torch.tensor([[0.5, 0.5], [0.25, 0.75]]).T.reshape(1, 2, 1, 2)  # pixel 0: (0.5, 0.5), pixel 1: (0.25, 0.75)
    valid = torch.tensor([[[True, False]]])
    total, count = mean_probabilities(prob, valid)
    assert total.tolist() == [0.5, 0.5] and count.item() == 1


def _inputs(b=2, c=3, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, h, w, dtype=torch.long)
    labels[:, :, 2:] = 1  # class 2 never labeled... then a quarter of class 2
    labels[:, 0, :] = 2
    return dict(labels=labels, teacher_logits_l=torch.randn(b, c, h, w, generator=g),
                teacher_logits_u=torch.randn(b, c, h, w, generator=g),
                student_logits_u=torch.randn(b, c, h, w, generator=g))


def test_criterion_aligns_the_teacher_and_keeps_running_priors():
    cfg = CriterionConfig(contrastive=False, prototype_denoising=False, sce_xi2=0.0, distribution_alignment=True,
                          alignment_momentum=0.5)
    crit = U2PLPlusCriterion(cfg, num_classes=3)
    plain = U2PLPlusCriterion(CriterionConfig(contrastive=False, prototype_denoising=False, sce_xi2=0.0), 3)
    assert "label_prior" in crit.state_dict() and "label_prior" not in plain.state_dict()
    x = _inputs()
    crit(**x)
    freq = class_frequencies(x["labels"], 3, 255)
    assert torch.allclose(crit.label_prior, freq / freq.sum())  # the first step sets the running means
    teacher_mean = x["teacher_logits_u"].softmax(1).mean(dim=(0, 2, 3))
    assert torch.allclose(crit.teacher_prior, teacher_mean, atol=1e-6)
    y = _inputs(seed=1)
    crit(**y)
    second = y["teacher_logits_u"].softmax(1).mean(dim=(0, 2, 3))
    assert torch.allclose(crit.teacher_prior, 0.5 * teacher_mean + 0.5 * second, atol=1e-6)
    # the loss differs from the unaligned criterion's (the pseudo-labels moved)
    a, b = crit(**x)["loss"], plain(**x)["loss"]
    assert not torch.isclose(a, b)


def test_alignment_momentum_must_be_a_fraction():
    with pytest.raises(ValueError, match="alignment_momentum"):
        U2PLPlusCriterion(CriterionConfig(distribution_alignment=True, alignment_momentum=1.5), 3)


def test_pseudo_label_recall_and_share_per_class_hand_computed():
    crit = U2PLPlusCriterion(CriterionConfig(contrastive=False, prototype_denoising=False), num_classes=3)
    gt = torch.tensor([[[0, 0, 1, 1, 255, 2]]])
    y_hat = torch.tensor([[[0, 1, 1, 0, 2, 255]]])
    reliable = torch.tensor([[[True, True, True, False, True, False]]])
    out = crit._pseudo_label_recall(gt, y_hat, reliable)
    recall, share = out["per_class/pseudo_label_recall"], out["per_class/pseudo_label_share"]
    # class 0: 2 true pixels, 1 hit; class 1: 2 true, 1 hit; class 2: 1 true (not reliable), 0 hits
    assert recall.tolist() == [0.5, 0.5, 0.0]
    # reliable and known: pseudo-labels 0, 1, 1 -> shares 1/3, 2/3, 0
    assert torch.allclose(share, torch.tensor([1 / 3, 2 / 3, 0.0]))
