"""The domain-adaptive parts on hand-made tensors: ClassMix, the confidence weight, the feature
distance, the DAFormer decoder and MiT encoders, the criterion's ClassMix from the labeled
stream, and the DAFormer recipe's step."""

from __future__ import annotations

import math

import pytest
import torch

from u2plus.config import load_config
from u2plus.criterion import CriterionConfig, U2PLPlusCriterion
from u2plus.errors import ConfigError
from u2plus.losses.daformer import (confidence_weight, feature_distance, majority_label_downscale,
                                    pseudo_label_weights)
from u2plus.losses.sce import symmetric_cross_entropy
from u2plus.methods import StepContext
from u2plus.mixing import class_mix_masks, paste
from u2plus.models import build_segmentor
from u2plus.models.daformer import DAFormerDecoder
from u2plus.models.encoders import build_encoder

from ..helpers import tiny_method, train_steps

C = 4


# ---- ClassMix ----------------------------------------------------------------------------------

def test_class_mix_on_a_hand_made_pair():
    source = torch.tensor([[[0, 0, 1, 1],
                            [2, 2, 3, 255]]])
    pseudo = torch.tensor([[[3, 3, 3, 3],
                            [1, 1, 1, 1]]])
    mask = class_mix_masks(source, torch.Generator().manual_seed(0), num_classes=C)
    pasted = set(source[mask].tolist())
    assert len(pasted) == 2 and 255 not in pasted  # half of the 4 classes, never the ignore label
    assert torch.equal(mask, torch.isin(source, torch.tensor(sorted(pasted))))  # every pixel of them
    partner = torch.tensor([0])
    mixed = paste(mask, partner, pseudo, source)
    assert torch.equal(mixed, torch.where(mask, source, pseudo))
    weights = paste(mask, partner, pseudo_label_weights(torch.tensor(0.25), pseudo.shape),
                    torch.ones_like(source, dtype=torch.float32))
    assert torch.equal(weights, torch.where(mask, 1.0, 0.25))  # source pixels weigh 1, pseudo-labels q


def test_class_mix_takes_ceil_half_per_image_and_is_seeded():
    labels = torch.tensor([[[0, 1, 2]], [[4, 4, 4]], [[255, 255, 255]]])
    counts = [len(set(labels[i][m].tolist())) for i, m in enumerate(class_mix_masks(labels, num_classes=5))]
    assert counts == [2, 1, 0]  # ceil(3/2), ceil(1/2), nothing to paste
    draw = [class_mix_masks(torch.arange(8).view(1, 1, 8), torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(draw[0], draw[1]) and int(draw[0].sum()) == 4
    frequency = torch.stack([class_mix_masks(torch.arange(8).view(1, 1, 8), torch.Generator().manual_seed(s))[0, 0]
                             for s in range(400)]).float().mean(0)
    assert torch.allclose(frequency, torch.full((8,), 0.5), atol=0.1)  # every class half of the time


# ---- the confidence weight ---------------------------------------------------------------------

def test_confidence_weight_is_the_share_of_confident_valid_pixels():
    confidence = torch.tensor([[[0.99, 0.968, 0.5, 0.97],
                                [0.1, 0.999, 0.99, 0.2]]])
    assert float(confidence_weight(confidence, 0.968)) == pytest.approx(5 / 8)  # >= threshold, as DAFormer
    valid = torch.tensor([[[True, True, True, True], [False, False, True, True]]])
    assert float(confidence_weight(confidence, 0.968, valid)) == pytest.approx(4 / 6)  # padding not counted
    w = pseudo_label_weights(torch.tensor(0.5), (2, 6, 3), ignore_rows=(1, 2))
    assert torch.equal(w[:, 0], torch.zeros(2, 3)) and torch.equal(w[:, 4:], torch.zeros(2, 2, 3))
    assert torch.equal(w[:, 1:4], torch.full((2, 3, 3), 0.5))


# ---- ImageNet feature distance -----------------------------------------------------------------

def test_majority_label_downscale():
    labels = torch.tensor([[[1, 1, 2, 2],
                            [1, 1, 2, 3],
                            [255, 255, 0, 0],
                            [255, 1, 0, 0]]])
    small = majority_label_downscale(labels, (2, 2), num_classes=C, min_ratio=0.75)
    assert small.tolist() == [[[1, 2], [255, 0]]]  # 3/4 of 2 is enough; mostly ignore -> ignore
    assert majority_label_downscale(labels, (2, 2), C, min_ratio=1.0).tolist() == [[[1, 255], [255, 0]]]


def test_feature_distance_is_masked_to_thing_classes():
    labels = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3], [0, 0, 3, 3]]])
    frozen = torch.zeros(1, 2, 2, 2)
    student = torch.zeros(1, 2, 2, 2, requires_grad=True)
    offset = torch.zeros(1, 2, 2, 2)
    offset[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # class 1: distance 5
    offset[0, 0, 0, 1] = 1.0  # class 2: distance 1
    offset[0, 0, 1, 0] = 7.0  # class 0 (stuff): never counted
    things = feature_distance(student + offset, frozen, labels, classes=[1, 2], num_classes=C)
    assert float(things.detach()) == pytest.approx(3.0)  # mean of 5 and 1
    assert float(feature_distance(student + offset, frozen, labels).detach()) == pytest.approx(13 / 4)
    none = feature_distance(student + offset, frozen, labels, classes=[3], num_classes=C)
    assert float(none.detach()) == 0.0  # class 3's pixel does not differ
    absent = feature_distance(student, frozen, torch.zeros_like(labels), classes=[1], num_classes=C)
    absent.backward()  # no thing pixel: an exact, differentiable 0
    assert float(absent.detach()) == 0.0 and student.grad is not None


# ---- DAFormer decoder, MiT encoders --------------------------------------------------------------

@pytest.mark.parametrize("encoder, stride", [("mit_b0", 32), ("resnet18", 16), ("tf_efficientnet_lite0", 32)])
def test_daformer_decoder_output_is_at_stride_4(encoder, stride):
    enc = build_encoder(encoder, "none", stride)
    decoder = DAFormerDecoder(enc.channels, enc.reductions, channels=32)
    x = torch.randn(2, 3, 64, 96)
    features = enc(x)
    out = decoder(features)
    assert out.shape == (2, 32, 16, 24) and out.shape[-2:] == features[enc.reductions.index(4)].shape[-2:]
    assert len(decoder.branches) == 4 and len(decoder.embed) == sum(r >= 4 for r in enc.reductions)


def test_segmentor_with_daformer_decoder_has_both_heads_on_F():
    cfg = load_config(None, ["model.encoder=mit_b0", "model.output_stride=32", "model.pretrained=none",
                             "model.decoder=daformer", "model.decoder_channels=32", "model.rep_dim=8"])
    out = build_segmentor(cfg.model, C)(torch.randn(1, 3, 64, 64), with_rep=True, with_features=True)
    assert out["logits"].shape == (1, C, 16, 16) and out["rep"].shape == (1, 8, 16, 16)
    assert [f.shape[-1] for f in out["features"]] == [16, 8, 4, 2]


def test_mit_weights_from_a_local_file_only(tmp_path):
    source = build_encoder("mit_b0", "none", 32)
    state = dict(source.body.state_dict())
    state["head.weight"] = torch.zeros(1000, 256)  # SegFormer's mit_b0.pth has its ImageNet classifier: ignored
    torch.save(state, tmp_path / "mit_b0.pth")
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in source.body.state_dict().items()}}, tmp_path / "b.pth")
    for path in (tmp_path / "mit_b0.pth", tmp_path / "b.pth"):
        loaded = build_encoder("mit_b0", str(path), 32)
        assert torch.equal(loaded.body.block4[1].mlp.fc2.weight, source.body.block4[1].mlp.fc2.weight)
    with pytest.raises(ConfigError, match="no offline ImageNet weights for mit_b0"):
        build_encoder("mit_b0", "imagenet", 32)
    with pytest.raises(ConfigError, match="supports 16 .* or 32"):
        build_encoder("mit_b0", "none", 8)


# ---- the criterion's ClassMix from the labeled stream --------------------------------------------

def test_criterion_mix_from_labeled_takes_labels_and_teacher_outputs_of_the_source():
    g = torch.Generator().manual_seed(0)
    crit = U2PLPlusCriterion(CriterionConfig(contrastive=False, prototype_denoising=False, sce_xi2=0.1), C)
    labels = torch.randint(0, C, (2, 8, 8), generator=g)
    labels[:, 0] = 255
    t_l, t_u, s_u = (torch.randn(2, C, 8, 8, generator=g) for _ in range(3))
    partner = torch.tensor([1, 0])

    def unsup(mask):
        return crit(labels=labels, teacher_logits_l=t_l, teacher_logits_u=t_u, student_logits_u=s_u,
                    cutmix=(mask, partner), mix_from_labeled=True)["loss_unsup"]

    everywhere = torch.ones(2, 8, 8, dtype=torch.bool)
    # every pixel pasted: the labels of the partner source images are the (reliable) pseudo-labels
    target = labels[partner]
    expected = symmetric_cross_entropy(s_u, target)[target != 255].mean()
    assert float(unsup(everywhere)) == pytest.approx(float(expected), rel=1e-5)
    # nothing pasted: the plain unlabeled loss
    plain = crit(labels=labels, teacher_logits_l=t_l, teacher_logits_u=t_u, student_logits_u=s_u)["loss_unsup"]
    assert float(unsup(~everywhere)) == pytest.approx(float(plain), rel=1e-6)


def test_criterion_mix_from_labeled_gives_the_contrastive_loss_source_anchors():
    g = torch.Generator().manual_seed(1)
    cfg = CriterionConfig(num_anchors=8, num_negatives=4, queue_size=32, delta_p=0.0)
    crit = U2PLPlusCriterion(cfg, C, rep_dim=8)
    labels = torch.randint(0, 2, (1, 8, 8), generator=g)  # classes 0 and 1 only
    reps = [torch.nn.functional.normalize(torch.randn(1, 8, 2, 2, generator=g), dim=1) for _ in range(4)]
    logits = [torch.randn(1, C, 2, 2, generator=g) for _ in range(3)]
    for _ in range(2):  # the second call has queued negatives
        out = crit(labels=labels, teacher_logits_l=logits[0], teacher_logits_u=logits[1], student_logits_u=logits[2],
                   teacher_rep_l=reps[0], teacher_rep_u=reps[1], student_rep_l=reps[2], student_rep_u=reps[3],
                   cutmix=(torch.ones(1, 8, 8, dtype=torch.bool), torch.tensor([0])), mix_from_labeled=True)
    # the whole target image is source pixels: labeled anchors there too, of the source's classes only
    present = torch.zeros(C, dtype=torch.bool).scatter_(0, labels.flatten(), True)
    anchors = out["per_class/anchors"]
    assert torch.isfinite(out["loss"]) and int(anchors.sum()) > 0 and not bool((anchors[~present] > 0).any())


# ---- the DAFormer recipe -------------------------------------------------------------------------

def make_da_method(name: str, *overrides: str):
    return tiny_method(name, C, "model.decoder=daformer", "method.delta_p=0.0", "method.fd_classes=[1,2]",
                       "method.fd_min_ratio=0.0", *overrides)


def da_batches(step: int):
    g = torch.Generator().manual_seed(step)
    source = {"image": torch.randn(2, 3, 32, 32, generator=g), "mask": torch.randint(0, C, (2, 32, 32), generator=g)}
    source["mask"][:, :2] = 255
    target = {"image": torch.randn(2, 3, 32, 32, generator=g)}
    target["image_strong"] = target["image"] + 0.1 * torch.randn(2, 3, 32, 32, generator=g)
    return source, target


def run_da_steps(method, steps: int = 2):
    return train_steps(method, da_batches, steps)


@pytest.mark.parametrize("name, terms", [("daformer", {"loss_sup", "loss_mix", "loss_fd"}),
                                         ("daformer_u2pl_plus", {"loss_sup", "loss_mix", "loss_fd", "loss_contrastive"})])
def test_da_methods_train_with_their_loss_terms(name, terms):
    method = make_da_method(name)
    assert method.streams == ("source", "target") and set(method.loss_terms) == terms
    assert method.cfg.method.ema_momentum == 0.999
    for step, (loss, logs) in enumerate(run_da_steps(method)):
        assert torch.isfinite(loss)
        for term in terms - ({"loss_fd"} if step == 0 else set()):  # FD is 0 before the first update
            assert torch.isfinite(logs[term]) and float(logs[term]) > 0, term
        total = sum(float(logs[t]) * (method.cfg.method.lambda_c if t == "loss_contrastive" else 1.0) for t in terms)
        assert float(loss) == pytest.approx(total, rel=1e-5)  # U2PL+'s L_u is off: DAFormer's CE is the pseudo loss
        assert 0.0 <= float(logs["pseudo_weight"]) <= 1.0


def test_feature_distance_starts_at_zero_and_the_imagenet_encoder_stays_frozen():
    method = make_da_method("daformer")
    frozen = {k: v.clone() for k, v in method.imagenet_encoder.state_dict().items()}
    (_, first), _ = run_da_steps(method)
    assert float(first["loss_fd"]) == 0.0  # same weights, same batch statistics
    for k, v in method.imagenet_encoder.state_dict().items():  # running statistics included
        assert torch.equal(v, frozen[k]) or k.endswith("num_batches_tracked"), k
    assert not any(p.requires_grad for p in method.imagenet_encoder.parameters())
    assert not make_da_method("daformer", "method.fd_lambda=0").imagenet_encoder


def test_feature_distance_pulls_towards_the_pretrained_encoder_not_init_from(tmp_path):
    """train.init_from replaces the student's weights before the method is built (in the trainer):
    the frozen encoder of the feature distance still holds model.pretrained's."""
    from u2plus.models.encoders import build_encoder

    torch.manual_seed(1)
    encoder = build_encoder("resnet18", "none")
    torch.save(encoder.body.state_dict(), tmp_path / "r18.pt")  # a classification model's weights
    pretrained = encoder.state_dict()
    method = make_da_method("daformer", f"model.pretrained={tmp_path / 'r18.pt'}", "train.init_from=other.pt")
    with torch.no_grad():
        for p in method.student.encoder.parameters():
            p.add_(1.0)  # what init_from does to the student
    rebuilt = type(method)(method.cfg, method.student)
    for k, v in rebuilt.imagenet_encoder.state_dict().items():
        assert torch.equal(v, pretrained[k]), k
    weights = "body.conv1.weight"
    assert not torch.equal(rebuilt.student.encoder.state_dict()[weights], pretrained[weights])
    # without init_from the frozen encoder is the student's own (here the perturbed one)
    method.cfg.train.init_from = None
    own = type(method)(method.cfg, method.student)
    assert torch.equal(own.imagenet_encoder.state_dict()[weights], method.student.encoder.state_dict()[weights])


def test_da_step_is_deterministic_per_step_and_pastes_source_pixels():
    a, b = make_da_method("daformer"), make_da_method("daformer")
    source, target = da_batches(0)
    mix_a = a.teacher_class_mix(source, target, StepContext(3, 10, 5))
    mix_b = b.teacher_class_mix(source, target, StepContext(3, 10, 5))
    assert torch.equal(mix_a["mask"], mix_b["mask"]) and torch.equal(mix_a["image"], mix_b["image"])
    m = mix_a["mask"]
    assert torch.equal(mix_a["label"][m], source["mask"][m]) and bool(m.any()) and not bool(m.all())
    assert torch.equal(mix_a["image"].permute(0, 2, 3, 1)[m], source["image"].permute(0, 2, 3, 1)[m])
    assert torch.equal(mix_a["image"].permute(0, 2, 3, 1)[~m], target["image_strong"].permute(0, 2, 3, 1)[~m])
    assert math.isclose(float(mix_a["weight"][m].min()), 1.0)


def test_source_only_trains_on_the_source_stream():
    method = make_da_method("source_only")
    assert method.streams == ("source",) and method.loss_terms == ("loss_sup",)
