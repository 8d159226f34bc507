"""U2PLPlusCriterion on hand-made tensors: the terms it returns, CutMix of what the teacher
derived, its state (prototypes, queues) and its argument checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from u2plus import CriterionConfig, U2PLPlusCriterion

SELFTRAIN = dict(contrastive=False, prototype_denoising=False, sce_xi2=0.0)


def logits_of(probs):
    """[B, W, C] nested probabilities -> [B, C, 1, W] logits whose softmax gives them."""
    return torch.tensor(probs).log().permute(0, 2, 1).unsqueeze(2)


# one unlabeled image of 1 x 4 pixels, C = 2: entropy grows from left to right
TEACHER_U = logits_of([[[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]])
TEACHER_L = logits_of([[[0.7, 0.3]] * 4])
LABELS = torch.tensor([[[0, 1, 0, 1]]])
STUDENT_U = torch.tensor([[[[2.0, 1.0, 0.0, -1.0]], [[0.0, 0.0, 0.0, 0.0]]]])  # [1, 2, 1, 4]


def h(p):
    return -sum(x * math.log(x) for x in p)


def test_reliable_pixels_pseudo_labels_and_ce_by_hand():
    crit = U2PLPlusCriterion(CriterionConfig(alpha0=0.25, **SELFTRAIN), num_classes=2, rep_dim=4)
    out = crit(labels=LABELS, teacher_logits_l=TEACHER_L, teacher_logits_u=TEACHER_U, student_logits_u=STUDENT_U,
               progress=0.0)
    # gamma: the 0.75 quantile of the 4 entropies (position 2.25): pixels 0-2 are reliable
    ent = [h(p) for p in ([0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.5, 0.5])]
    gamma = ent[2] + 0.25 * (ent[3] - ent[2])
    assert float(out["gamma"]) == pytest.approx(gamma, rel=1e-5)
    assert float(out["reliable_fraction"]) == pytest.approx(0.75)
    assert float(out["lambda_u"]) == pytest.approx(4 / 3)
    # pseudo-label 0 on the three reliable pixels; CE = -log softmax(student)[0]
    ce = [math.log(1 + math.exp(-s)) for s in (2.0, 1.0, 0.0)]
    assert float(out["loss_unsup"]) == pytest.approx(sum(ce) / 3, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(sum(ce) / 3, rel=1e-5)
    assert "loss_contrastive" not in out and out["loss"].dim() == 0


def test_symmetric_ce_and_eta_and_dpa_by_hand():
    cfg = CriterionConfig(alpha0=0.25, eta=2.0, **{**SELFTRAIN, "sce_xi2": 0.1})
    crit = U2PLPlusCriterion(cfg, num_classes=2, rep_dim=4)
    # progress 1: alpha_t = 0 (DPA), every pixel but the maximal-entropy one is reliable
    out = crit(labels=LABELS, teacher_logits_l=TEACHER_L, teacher_logits_u=TEACHER_U, student_logits_u=STUDENT_U,
               progress=1.0)
    p0 = [1 / (1 + math.exp(-s)) for s in (2.0, 1.0, 0.0)]
    sce = [-math.log(p) + 0.1 * -math.log(1e-4) * (1 - p) for p in p0]
    assert float(out["alpha_t"]) == 0.0
    assert float(out["loss_unsup"]) == pytest.approx(2.0 * sum(sce) / 3, rel=1e-5)


def test_cutmix_mixes_pseudo_labels_and_validity_like_the_images():
    """Two unlabeled images; the box of image 0 covers its two right pixels, taken from image 1,
    whose pixels are all sure of class 1 (pseudo-label 1 there)."""
    teacher_u = logits_of([[[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]],
                           [[0.05, 0.95]] * 4])
    student_u = torch.zeros(2, 2, 1, 4)
    student_u[0, 1, 0, 2:] = 3.0  # the student already says 1 inside the box
    box = torch.tensor([[[False, False, True, True]], [[False, False, False, False]]])
    partner = torch.tensor([1, 0])
    crit = U2PLPlusCriterion(CriterionConfig(alpha0=0.0, dynamic_partition=False, **SELFTRAIN), 2, rep_dim=4)
    valid = torch.tensor([[[True] * 4], [[True, True, True, False]]])  # image 1's last pixel: padding
    out = crit(labels=LABELS, teacher_logits_l=TEACHER_L, teacher_logits_u=teacher_u, student_logits_u=student_u,
               valid_u=valid, cutmix=(box, partner))
    # mixed: image 0 = [0, 0, 1, pad], image 1 = [1, 1, 1, pad]; reliable = valid (alpha 0, ties
    # at the maximum entropy are unreliable: image 1's three pixels share the top entropy)
    ce_sure = math.log(1 + math.exp(-3.0))  # pseudo-label 1 where the student says 1
    ce_flat = math.log(2.0)
    # entropies: image 0 pixels 0.325 (x4), image 1 0.199 (x3): gamma = max = 0.325, strict <
    # keeps image 1's three valid pixels reliable and none of image 0's
    assert float(out["reliable_fraction"]) == pytest.approx(3 / 7)
    # image 1's pixels: student logits 0 -> CE log 2; the mixed copy of image 1's pixel 2 lands in
    # image 0 (reliable, label 1, student sure) and image 1's padding pixel 3 stays invalid there
    assert float(out["loss_unsup"]) == pytest.approx((2 * ce_flat + ce_sure + ce_flat) / 4, rel=1e-5)


def test_a_paste_from_the_labeled_batch_after_cutmix_takes_the_labels():
    """``cutmix`` as a list: the CutMix of the previous test, then pixel 0 of each unlabeled
    image taken from labeled image 0 (a rare-class paste): there the pseudo-label is that image's
    label (0), reliable, whatever the teacher said of the unlabeled pixel."""
    teacher_u = logits_of([[[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]],
                           [[0.05, 0.95]] * 4])
    student_u = torch.zeros(2, 2, 1, 4)
    box = torch.tensor([[[False, False, True, True]], [[False, False, False, False]]])
    pasted = torch.tensor([[[True, False, False, False]]] * 2)
    cfg = CriterionConfig(alpha0=0.0, dynamic_partition=False, **SELFTRAIN)
    seen = {}

    def run(cutmix):
        import u2plus.criterion as module
        real = module.adaptive_unsupervised_loss

        def spy(logits, pseudo_label, reliable, *args, **kwargs):
            seen["label"], seen["reliable"] = pseudo_label.clone(), reliable.clone()
            return real(logits, pseudo_label, reliable, *args, **kwargs)

        module.adaptive_unsupervised_loss = spy
        try:
            U2PLPlusCriterion(cfg, 2, rep_dim=4)(labels=LABELS, teacher_logits_l=TEACHER_L, teacher_logits_u=teacher_u,
                                                  student_logits_u=student_u, cutmix=cutmix)
        finally:
            module.adaptive_unsupervised_loss = real
        return seen["label"], seen["reliable"]

    one_label, one_rel = run((box, torch.tensor([1, 0])))
    listed_label, listed_rel = run([(box, torch.tensor([1, 0]))])  # a list of one mix: the same
    assert torch.equal(one_label, listed_label) and torch.equal(one_rel, listed_rel)
    label, rel = run([(box, torch.tensor([1, 0])), (pasted, torch.tensor([0, 0]), True)])
    assert label[:, 0, 0].tolist() == [0, 0] and bool(rel[:, 0, 0].all())  # LABELS[0] at pixel 0 is 0
    assert torch.equal(label[:, :, 1:], one_label[:, :, 1:]) and torch.equal(rel[:, :, 1:], one_rel[:, :, 1:])


def test_state_dict_holds_prototypes_queues_and_steps_and_the_terms_are_finite():
    torch.manual_seed(0)
    cfg = CriterionConfig(num_anchors=8, num_negatives=4, queue_size=16, delta_p=0.0)
    crit = U2PLPlusCriterion(cfg, num_classes=3, rep_dim=4)
    assert {"prototypes.prototypes", "prototypes.initialized", "queues.keys", "queues.ptr", "queues.count",
            "steps"} <= set(crit.state_dict())

    def rep(b):
        return torch.nn.functional.normalize(torch.randn(b, 4, 4, 4), dim=1)

    z_s_l, z_s_u = rep(2).requires_grad_(), rep(2).requires_grad_()
    kw = dict(labels=torch.randint(0, 3, (2, 16, 16)), teacher_logits_l=torch.randn(2, 3, 4, 4),
              teacher_logits_u=torch.randn(2, 3, 4, 4), student_logits_u=torch.randn(2, 3, 4, 4, requires_grad=True),
              teacher_rep_l=rep(2), teacher_rep_u=rep(2), student_rep_l=z_s_l, student_rep_u=z_s_u)
    for step in range(2):
        out = crit(**kw, seed=step)
    assert int(crit.steps) == 2 and bool(crit.prototypes.initialized.all()) and int(crit.queues.count.sum()) > 0
    for term in ("loss", "loss_unsup", "loss_contrastive"):
        assert torch.isfinite(out[term]) and float(out[term].detach()) > 0, term
    assert out["loss"].item() == pytest.approx(out["loss_unsup"].item() + 0.1 * out["loss_contrastive"].item())
    out["loss"].backward()
    assert z_s_l.grad is not None and z_s_u.grad.abs().sum() > 0  # L_c reaches the student's features
    assert not out["gamma"].requires_grad and out["per_class/anchors"].shape == (3,)


def test_missing_representations_are_named():
    crit = U2PLPlusCriterion(CriterionConfig(), num_classes=2, rep_dim=4)
    with pytest.raises(ValueError, match="teacher_rep"):
        crit(labels=LABELS, teacher_logits_l=TEACHER_L, teacher_logits_u=TEACHER_U, student_logits_u=STUDENT_U)
    assert crit.needs_teacher_rep and crit.needs_student_rep
    no_lc = U2PLPlusCriterion(CriterionConfig(contrastive=False), num_classes=2, rep_dim=4)
    assert no_lc.needs_teacher_rep and not no_lc.needs_student_rep  # PD still reads the teacher's


def test_config_is_the_method_sections_knobs():
    """One source per knob: every criterion field is a ``method.*`` key of the same default."""
    from u2plus.config import MethodConfig

    method_fields = {f.name: f.default for f in dataclasses.fields(MethodConfig)}
    for f in dataclasses.fields(CriterionConfig):
        assert f.name in method_fields and method_fields[f.name] == f.default, f.name
