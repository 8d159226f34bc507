"""The weakly-supervised recipes (afa, afa_u2pl_plus) and their network heads: the terms each step
trains, the classifier-only start, L_c's prototypes from the teacher's anchor features, the
Table XIV switches, the attention maps of MiT and of the CNN attention block."""

from __future__ import annotations

import pytest
import torch

from u2plus.config import load_config
from u2plus.models import build_segmentor
from u2plus.models.image_level import LastStageAttention, attach_image_level_heads

from ..helpers import tiny_method, train_steps

C = 4


def make_method(name: str, *overrides: str):
    return tiny_method(name, C, "data.supervision=tags", "method.single_threshold=true", "method.cam_beta=0.0",
                       "method.sup_only_fraction=0.5", *overrides)


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tags = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[1, :, 28:] = False  # crop padding
    return {"image": torch.randn(2, 3, 32, 32, generator=g), "tags": tags, "valid": valid}


def run_steps(method, steps: int = 4):
    return train_steps(method, lambda step: (batch(step), None), steps, max_iters=steps, iters_per_epoch=steps)


@pytest.mark.parametrize("name", ["afa", "afa_u2pl_plus"])
def test_classifier_and_affinity_first_then_every_term(name):
    method = make_method(name)
    terms = {"loss_sup", "loss_unsup", "loss_affinity"} | ({"loss_contrastive"} if name == "afa_u2pl_plus" else set())
    assert set(method.loss_terms) == terms and method.streams == ("labeled",) and method.supervision == "tags"
    logs = run_steps(method)
    for step, (loss, log) in enumerate(logs):
        on = terms if step >= 2 else {"loss_sup", "loss_affinity"}  # sup_only_fraction 0.5 of 4 steps
        assert on == set(log) & terms
        for term in on:
            assert torch.isfinite(log[term]) and float(log[term]) > 0, (step, term)
        weights = {"loss_sup": 1.0, "loss_unsup": 0.1, "loss_affinity": 0.1, "loss_contrastive": 0.1}
        assert float(loss) == pytest.approx(sum(weights[t] * float(log[t]) for t in on), rel=1e-5)


def test_teacher_copies_the_student_through_the_classifier_only_start():
    method = make_method("afa_u2pl_plus", "method.sup_only_fraction=0.75")
    run_steps(method, steps=2)  # both in the classifier-only start (first 3 of 4 steps)
    for t, s in zip(method.teacher.parameters(), method.student.parameters()):
        assert torch.equal(t, s)
    assert "image_level" in dict(method.teacher.named_children())  # the teacher has the heads too


def test_contrastive_prototypes_are_the_teachers_anchor_features(monkeypatch):
    method = make_method("afa_u2pl_plus", "method.sup_only_fraction=0.0")
    crit = method.criterion
    seen = {}
    real = crit.contrastive

    def spy(cams, tags, valid, student_rep, teacher_rep, seed):
        # the teacher's features as one unit vector: every centroid (Eq. 30) is that vector
        seen["student"], seen["teacher"] = student_rep, teacher_rep
        constant = torch.zeros_like(teacher_rep)
        constant[:, 3] = 1.0
        return real(cams, tags, valid, student_rep, constant, seed)

    monkeypatch.setattr(crit, "contrastive", spy)
    (_, logs), = run_steps(method, steps=1)
    has_anchors = logs["per_class/anchors"] > 0
    assert bool(has_anchors.any()) and torch.equal(crit.prototypes.initialized, has_anchors)
    expected = torch.zeros(8)
    expected[3] = 1.0
    for proto in crit.prototypes.prototypes[has_anchors]:
        assert torch.allclose(proto, expected)
    assert not seen["teacher"].requires_grad and seen["student"].requires_grad  # keys detached, anchors not
    assert int(crit.queues.count.sum()) > 0


def test_table_xiv_switches_choose_the_negatives():
    def negatives(*overrides):
        method = make_method("afa_u2pl_plus", "method.sup_only_fraction=0.0", "method.cam_beta=0.5", *overrides)
        return run_steps(method, steps=1)[0][1]["per_class/negatives"]

    both = negatives()
    absent = negatives("method.negatives_low_cam=false")
    low = negatives("method.negatives_absent_class=false")
    # 1[y^c = 0]: every valid pixel of the 8x8 representation map of an image without c: classes 1
    # and 3 are absent from image 1 (its last column is crop padding: 56), class 2 from image 0 (64)
    assert absent.tolist() == [56, 64, 56]
    assert torch.equal(both, absent + low)  # Eq. 31 is the union of two disjoint sets
    assert int(low.sum()) > 0


def test_mit_attention_maps_and_stride():
    cfg = load_config(None, ["model.encoder=mit_b0", "model.pretrained=none", "model.decoder=segformer",
                             f"data.num_classes={C}", "model.output_stride=16"])
    model = attach_image_level_heads(build_segmentor(cfg.model, C)).eval()
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 64, 64))
        attention = model.encoder.attention_maps()
        out = model(torch.randn(1, 3, 64, 64), with_cam=True)
    assert [f.shape[-1] for f in features] == [16, 8, 4, 4]  # strides 4, 8, 16, 16 (AFA's MiT strides)
    assert attention.shape == (1, 2 * 8, 16, 16)  # 2 blocks x 8 heads of the last stage, N = 4 x 4
    assert torch.allclose(attention.sum(-1), torch.ones(1, 16, 16), atol=1e-5)  # softmax rows
    assert out["cams"].shape == (1, C - 1, 4, 4) and out["affinity"].shape == (1, 16, 16)
    assert torch.allclose(out["affinity"], out["affinity"].transpose(1, 2))  # A + A^T: symmetric
    assert out["logits"].shape == (1, C, 16, 16)


def test_cnn_attention_block_starts_as_identity_and_gives_softmax_maps():
    block = LastStageAttention(16, heads=4, key_dim=8)
    x = torch.randn(2, 16, 3, 5)
    y, attention = block(x)
    assert torch.equal(y, x) and attention.shape == (2, 4, 15, 15)
    assert torch.allclose(attention.sum(-1), torch.ones(2, 4, 15), atol=1e-5)


def test_cams_are_the_classifier_weights_on_the_last_map():
    cfg = load_config(None, ["model.encoder=resnet18", "model.pretrained=none", "model.decoder_channels=16",
                             f"data.num_classes={C}"])
    model = attach_image_level_heads(build_segmentor(cfg.model, C), pooling="avg").eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        last = model.image_level.attend(model.encoder(x), model.encoder)[0][-1]
        out = model(x, with_cam=True)
        w = model.image_level.classifier.conv.weight
        raw = torch.einsum("kd,bdhw->bkhw", w.flatten(1), last)
    assert torch.allclose(out["cams"], raw.clamp_min(0), atol=1e-5)  # Eq. 5
    assert torch.allclose(out["cls_logits"], raw.mean(dim=(2, 3)), atol=1e-5)  # GAP, then the 1x1 conv


def test_checkpoint_of_a_ws_method_loads_into_a_fresh_one():
    method = make_method("afa_u2pl_plus", "method.sup_only_fraction=0.0")
    run_steps(method, steps=1)
    fresh = make_method("afa_u2pl_plus", "method.sup_only_fraction=0.0")
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.criterion.prototypes.prototypes, method.criterion.prototypes.prototypes)
