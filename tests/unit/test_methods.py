"""The method compositions: every preset trains, the switches do what they say, and the
unlabeled images' masks (kept only for diagnostics) never change the loss."""

from __future__ import annotations

import math

import pytest
import torch

from u2plus.methods import StepContext

from ..helpers import tiny_method, train_steps

NUM_CLASSES = 4


def make_method(name: str, *overrides: str):
    return tiny_method(name, NUM_CLASSES, "method.delta_p=0.0", *overrides)


def batches(seed: int = 0, with_unlabeled_masks: bool = False):
    g = torch.Generator().manual_seed(seed)
    labeled = {"image": torch.randn(2, 3, 32, 32, generator=g),
               "mask": torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=g)}
    labeled["mask"][:, :2] = 255
    unlabeled = {"image": torch.randn(2, 3, 32, 32, generator=g)}
    unlabeled["image_strong"] = unlabeled["image"] + 0.1 * torch.randn(2, 3, 32, 32, generator=g)
    if with_unlabeled_masks:
        unlabeled["mask"] = torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=g)
    return labeled, unlabeled


def run_steps(method, steps: int = 2, with_unlabeled_masks: bool = False, first_step: int = 0):
    def streams(step):
        labeled, unlabeled = batches(step, with_unlabeled_masks)
        return labeled, unlabeled if "unlabeled" in method.streams else None

    return train_steps(method, streams, steps, first_step)


@pytest.mark.parametrize("name, terms", [("suponly", {"loss_sup"}), ("selftrain", {"loss_sup", "loss_unsup"}),
                                         ("u2pl", {"loss_sup", "loss_unsup", "loss_contrastive"}),
                                         ("u2pl_plus", {"loss_sup", "loss_unsup", "loss_contrastive"})])
def test_every_method_trains_two_steps_with_its_loss_terms(name, terms):
    method = make_method(name)
    assert set(method.loss_terms) == terms
    for loss, logs in run_steps(method):
        assert torch.isfinite(loss)
        assert terms <= set(logs) and "loss_contrastive" not in set(logs) - terms
        for term in terms:  # present, finite and non-zero
            assert torch.isfinite(logs[term]) and float(logs[term]) > 0, term
        # the total is what the terms add up to (L_c weighted by lambda_c)
        total = sum(float(logs[t]) * (method.cfg.method.lambda_c if t == "loss_contrastive" else 1.0) for t in terms)
        assert float(loss) == pytest.approx(total, rel=1e-5)


def test_u2pl_plus_fills_queues_and_prototypes_and_logs_diagnostics():
    method = make_method("u2pl_plus")
    (_, logs1), (_, logs2) = run_steps(method)
    assert bool(method.criterion.prototypes.initialized.any())
    assert int(method.criterion.queues.count.sum()) > 0
    for key in ("loss_sup", "loss_unsup", "loss_contrastive", "gamma", "alpha_t", "reliable_fraction",
                "lambda_u", "per_class/anchors", "per_class/negatives", "per_class/queue_fill"):
        assert key in logs2, key
    # Eq. 14 with alpha_0 = 0.2 at progress 0: 80% reliable, lambda_u = 1 / 0.8
    assert float(logs1["reliable_fraction"]) == pytest.approx(0.8, abs=0.01)
    assert float(logs1["lambda_u"]) == pytest.approx(1.25, abs=0.02)
    assert logs2["per_class/queue_fill"].shape == (NUM_CLASSES,)


@pytest.mark.parametrize("classwise", [True, False])
def test_classwise_partition_keeps_every_predicted_class_reliable(classwise, monkeypatch):
    """A teacher that is sure of classes 0-2 and unsure of the rarer class 3: with
    ``method.classwise_partition`` each predicted class keeps ~1 - alpha_t of its pixels reliable;
    with the paper's single quantile class 3 keeps none."""
    import u2plus.criterion as u2pl_module

    seen = {}
    original = u2pl_module.pseudo_labels

    def spy(prob, reliable, ignore_index=255):
        seen["predicted"], seen["reliable"] = prob.max(dim=1).indices, reliable
        return original(prob, reliable, ignore_index)

    def teacher(x, with_rep=False):
        g = torch.Generator().manual_seed(5)
        logits = 0.3 * torch.randn(x.shape[0], NUM_CLASSES, 8, 8, generator=g)
        cls = torch.randint(0, 3, (x.shape[0], 8, 8), generator=g)
        cls[:, ::3, ::3] = 3  # a rarer class
        margin = torch.where(cls == 3, 1.0, 4.0)
        return {"logits": logits + margin.unsqueeze(1) * torch.nn.functional.one_hot(cls, NUM_CLASSES).permute(0, 3, 1, 2)}

    method = make_method("selftrain", f"method.classwise_partition={str(classwise).lower()}")
    method.train()
    monkeypatch.setattr(method.teacher, "forward", teacher)
    monkeypatch.setattr(u2pl_module, "pseudo_labels", spy)
    labeled, unlabeled = batches(0)
    _, logs = method.training_step(labeled, unlabeled, StepContext(0, 10, 5))
    share = {c: seen["reliable"][seen["predicted"] == c].float().mean().item() for c in range(NUM_CLASSES)}
    if classwise:
        assert all(v == pytest.approx(0.8, abs=0.03) for v in share.values()), share
    else:
        assert share[3] < 0.05 and min(share[c] for c in range(3)) > 0.79, share
    assert torch.isfinite(torch.as_tensor(logs["gamma"]))


def test_switches_select_components():
    selftrain = make_method("selftrain")
    assert selftrain.criterion.queues is None and selftrain.criterion.prototypes is None
    (_, logs), = run_steps(selftrain, steps=1)
    assert "loss_contrastive" not in logs
    u2pl = make_method("u2pl")
    assert u2pl.cfg.method.prototype_momentum == 0.0 and not u2pl.cfg.method.prototype_denoising and u2pl.cfg.method.sce_xi2 == 0.0
    in_batch = make_method("u2pl_plus", "method.use_queue=false")
    assert in_batch.criterion.queues is None
    (loss, logs), = run_steps(in_batch, steps=1)
    assert torch.isfinite(loss) and "loss_contrastive" in logs


def test_unlabeled_masks_only_feed_diagnostics():
    a = run_steps(make_method("u2pl_plus"), with_unlabeled_masks=False)
    b = run_steps(make_method("u2pl_plus"), with_unlabeled_masks=True)
    for (loss_a, _), (loss_b, logs_b) in zip(a, b):
        assert torch.equal(loss_a, loss_b)
    assert "diag/pseudo_label_precision" in logs_b and "diag/false_negative_rate" in logs_b
    assert 0.0 <= float(logs_b["diag/false_negative_rate"]) <= 1.0
    # a pixel has at most one true class among its negatives: per-pixel rate >= per-pair rate
    per_pixel = float(logs_b["diag/unreliable_pixels_true_class_negative"])
    assert float(logs_b["diag/false_negative_rate"]) <= per_pixel <= 1.0
    # pseudo-label precision is logged for every semi-supervised method, the negatives' only with L_c
    (_, logs), = run_steps(make_method("selftrain"), steps=1, with_unlabeled_masks=True)
    assert 0.0 <= float(logs["diag/pseudo_label_precision"]) <= 1.0 and "diag/false_negative_rate" not in logs


def test_teacher_stays_in_eval_mode_and_follows_student():
    method = make_method("u2pl_plus")
    method.train()
    assert method.student.training and not method.teacher.training
    before = [p.clone() for p in method.teacher.parameters()]
    run_steps(method, steps=2)
    changed = any(not torch.equal(a, b) for a, b in zip(before, method.teacher.parameters()))
    assert changed, "EMA did not update the teacher"
    # step 0 uses momentum 0: the teacher equals the student right after the first update
    fresh = make_method("u2pl_plus")
    run_steps(fresh, steps=1)
    for t, s in zip(fresh.teacher.parameters(), fresh.student.parameters()):
        assert torch.equal(t, s)


def test_sup_only_warmup_skips_unlabeled_losses():
    method = make_method("u2pl_plus", "method.sup_only_epochs=1")
    (_, logs), = run_steps(method, steps=1)
    assert set(logs) == {"loss_sup"}


def test_crop_padding_of_unlabeled_images_is_never_pseudo_labelled(monkeypatch):
    # docs/method.md: padding is never a class. ``valid`` False on the left half (padding): no
    # pseudo-label and no reliable pixel there; reliable fraction and lambda_u over valid pixels
    import u2plus.criterion as u2pl_module

    seen = {}
    real = u2pl_module.adaptive_unsupervised_loss

    def spy(logits, pseudo_label, reliable, *args, **kwargs):
        seen["label"], seen["reliable"] = pseudo_label, reliable
        return real(logits, pseudo_label, reliable, *args, **kwargs)

    monkeypatch.setattr(u2pl_module, "adaptive_unsupervised_loss", spy)
    method = make_method("u2pl_plus", "method.cutmix_prob=0.0")
    method.train()
    labeled, unlabeled = batches(0)
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[:, :, :16] = False
    unlabeled["valid"] = valid
    _, logs = method.training_step(labeled, unlabeled, StepContext(0, 10, 5))
    assert not bool(seen["reliable"][~valid].any())
    assert bool((seen["label"][~valid] == 255).all())
    assert float(logs["reliable_fraction"]) == pytest.approx(0.8, abs=0.01)  # of the valid half
    n_rel = int(seen["reliable"].sum())
    assert float(logs["lambda_u"]) == pytest.approx(int(valid.sum()) / n_rel)


def test_unsup_rampup_scales_the_unlabeled_losses_from_the_first_semi_step():
    # 0.4 epochs of 5 steps: step 2 is the first semi-supervised step; a ramp of 4 steps weighs the
    # unlabeled losses of steps 2, 3 by exp(-5), exp(-5 * 0.75^2); logged as unsup_weight
    def loss_parts(*overrides):
        method = make_method("u2pl_plus", "method.sup_only_epochs=0.4", *overrides)
        out = []
        for step in range(4):
            (loss, logs), = run_steps(method, steps=1, first_step=step)
            out.append((float(loss), logs))
        return method.cfg.method.lambda_c, out

    lambda_c, ramped = loss_parts("method.unsup_rampup_steps=4")
    _, full = loss_parts()
    for step, weight in ((2, math.exp(-5)), (3, math.exp(-5 * 0.75 ** 2))):
        loss, logs = ramped[step]
        unsup = float(logs["loss_unsup"]) + lambda_c * float(logs["loss_contrastive"])
        assert float(logs["unsup_weight"]) == pytest.approx(weight)
        assert loss == pytest.approx(float(logs["loss_sup"]) + weight * unsup, rel=1e-5)
    # the warm-up is untouched and, at step 2 (same weights so far), the criterion sees the same inputs
    assert ramped[0][0] == full[0][0] and ramped[1][0] == full[1][0]
    assert float(ramped[2][1]["loss_unsup"]) == pytest.approx(float(full[2][1]["loss_unsup"]), rel=1e-6)
    assert ramped[2][0] < full[2][0] and "unsup_weight" not in full[2][1]


def test_rep_head_detach_steps_stop_the_contrastive_gradient_at_the_representation_head():
    # 0.4 epochs of 5 steps: step 2 is the first semi-supervised step; with rep_head_detach_steps=1
    # L_c trains the representation head alone at step 2 (the rest of the network gets exactly the
    # gradient of the same step with lambda_c = 0), then the whole network from step 3 on
    def grads(step, *overrides):
        method = make_method("u2pl_plus", "method.sup_only_epochs=0.4", *overrides)
        method.train()
        ctx = StepContext(step, max_iters=10, iters_per_epoch=5)
        loss, logs = method.training_step(*batches(step), ctx)
        loss.backward()
        named = dict(method.student.named_parameters())
        rep = {k: p.grad for k, p in named.items() if k.startswith("rep_head.")}
        rest = {k: p.grad for k, p in named.items() if not k.startswith("rep_head.")}
        return rep, rest, logs

    for step, detached in ((2, True), (3, False)):
        rep, rest, logs = grads(step, "method.rep_head_detach_steps=1")
        _, no_lc, _ = grads(step, "method.lambda_c=0")
        _, full, _ = grads(step)
        assert float(logs["rep_head_detached"]) == float(detached)
        assert all(g is not None and float(g.abs().sum()) > 0 for g in rep.values())
        same = all(torch.allclose(rest[k], no_lc[k], atol=1e-7) for k in rest)
        assert same == detached, step
        assert all(torch.allclose(rest[k], full[k], atol=1e-7) for k in rest) == (not detached), step


def _same_weights(a, b) -> bool:
    """Parameters and buffers (BN statistics included) equal bit for bit."""
    return all(torch.equal(x, y) for x, y in zip(list(a.parameters()) + list(a.buffers()),
                                                   list(b.parameters()) + list(b.buffers())))


def test_teacher_copies_student_through_warmup_and_first_semi_step_by_default():
    # docs/method.md, step 11 (the default): iters_per_epoch 5, 0.4 epochs of L_s alone: steps 0-1
    # warm-up, step 2 the first semi-supervised step (m = 0 there too), step 3 m = 0.5
    method = make_method("u2pl_plus", "method.sup_only_epochs=0.4")
    assert method.cfg.method.ema_from_semi_start
    kinds = []
    for step in range(3):
        (_, logs), = run_steps(method, steps=1, first_step=step)
        kinds.append(set(logs) == {"loss_sup"})
        assert _same_weights(method.teacher, method.student), step
    assert kinds == [True, True, False]
    run_steps(method, steps=1, first_step=3)
    assert not _same_weights(method.teacher, method.student)
    # the literal reading (m_t counted from step 0): at step 1 m = 0.5, the teacher lags
    counting_from_zero = make_method("u2pl_plus", "method.sup_only_epochs=0.4", "method.ema_from_semi_start=false")
    run_steps(counting_from_zero, steps=2)
    assert not _same_weights(counting_from_zero.teacher, counting_from_zero.student)


@pytest.mark.parametrize("name", ["suponly", "u2pl_plus"])
def test_bf16_autocast_step_is_finite_and_losses_fp32(name):
    method = make_method(name)
    method.train()
    labeled, unlabeled = batches(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = method.training_step(labeled, unlabeled if "unlabeled" in method.streams else None,
                                          StepContext(0, 10, 5))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.student.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["suponly", "u2pl_plus"])
def test_class_weights_weigh_the_supervised_loss_only(name):
    """``set_class_weights`` turns L_s into the weighted mean (L_u and L_c are unchanged), and
    the weights stay out of the checkpoint (they come from the config)."""
    from u2plus.losses.supervised import pixel_cross_entropy

    method = make_method(name)
    labeled, _ = batches()
    logits = torch.randn(2, NUM_CLASSES, 8, 8)
    w = torch.tensor([1.0, 5.0, 0.5, 2.0])
    plain = method.supervised_loss(logits, labeled["mask"])
    method.set_class_weights(w)
    weighted = method.supervised_loss(logits, labeled["mask"])
    assert weighted.item() == pytest.approx(pixel_cross_entropy(logits, labeled["mask"], class_weights=w).item())
    assert weighted.item() != pytest.approx(plain.item())
    assert "class_weights" not in method.state_dict()
    assert torch.isfinite(run_steps(method)[-1][0])


@pytest.mark.parametrize("key, decoder_frozen", [("model.freeze_bn", True), ("model.freeze_encoder_bn", False)])
def test_frozen_batchnorm_keeps_running_statistics(key, decoder_frozen):
    method = make_method("suponly", f"{key}=true")
    bn = torch.nn.modules.batchnorm._BatchNorm
    enc = [m for m in method.student.encoder.modules() if isinstance(m, bn)]
    dec = [m for m in method.student.decoder.modules() if isinstance(m, bn)]
    before_enc = [m.running_mean.clone() for m in enc]
    before_dec = [m.running_mean.clone() for m in dec]
    run_steps(method, steps=1)
    assert enc and dec
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before_enc, enc))
    dec_same = [torch.equal(a, m.running_mean) for a, m in zip(before_dec, dec)]
    assert all(dec_same) if decoder_frozen else not any(dec_same)
    assert all(not m.training for m in enc) and all(m.training != decoder_frozen for m in dec)


def test_rare_class_paste_puts_labeled_pixels_and_labels_on_the_strong_view(monkeypatch):
    """``method.rare_paste_prob=1``: every unlabeled image gets labeled pixels pasted after CutMix;
    the student sees those pixels of the labeled image and L_u takes their labels there, as
    reliable pseudo-labels; the confidence bank holds the teacher's confidence per class."""
    import u2plus.criterion as u2pl_module
    import u2plus.methods.semi_supervised as ss_module

    seen = {}
    real_loss, real_mask = u2pl_module.adaptive_unsupervised_loss, ss_module.rare_class_paste_masks

    def loss_spy(logits, pseudo_label, reliable, *args, **kwargs):
        seen["label"], seen["reliable"] = pseudo_label, reliable
        return real_loss(logits, pseudo_label, reliable, *args, **kwargs)

    def mask_spy(*args, **kwargs):
        seen["mask"], seen["partner"] = real_mask(*args, **kwargs)
        seen["weights"] = args[2]
        return seen["mask"], seen["partner"]

    monkeypatch.setattr(u2pl_module, "adaptive_unsupervised_loss", loss_spy)
    monkeypatch.setattr(ss_module, "rare_class_paste_masks", mask_spy)
    method = make_method("u2pl_plus", "method.cutmix_prob=0.0", "method.rare_paste_prob=1.0",
                         "method.rare_paste_classes=1")
    method.train()
    inputs = {}
    real_forward = method.student_forward
    monkeypatch.setattr(method, "student_forward", lambda x, **kw: inputs.setdefault("x", x) is not None
                        and real_forward(x, **kw))
    labeled, unlabeled = batches(0)
    _, logs = method.training_step(labeled, unlabeled, StepContext(0, 10, 5))
    mask, partner = seen["mask"], seen["partner"]
    assert bool(mask.any(dim=(1, 2)).all())  # each image got one class of its partner
    for i in range(2):
        src = labeled["mask"][partner[i]]
        assert len(set(src[mask[i]].tolist())) == 1 and 255 not in src[mask[i]].tolist()
        x_u = inputs["x"][2 + i]  # the student's batch: labeled, then the mixed strong view
        assert torch.equal(x_u[:, mask[i]], labeled["image"][partner[i]][:, mask[i]])
        assert torch.equal(x_u[:, ~mask[i]], unlabeled["image_strong"][i][:, ~mask[i]])
        assert torch.equal(seen["label"][i][mask[i]], src[mask[i]]) and bool(seen["reliable"][i][mask[i]].all())
    # the bank after its first step: the teacher's mean probability of the true class on the
    # labeled pixels of each class (labels taken at the logits' resolution)
    with torch.no_grad():
        logits = method.teacher(torch.cat([labeled["image"], unlabeled["image"]]))["logits"][:2]
    small = labeled["mask"][:, ::32 // logits.shape[-2], ::32 // logits.shape[-1]]
    prob = logits.softmax(1)
    for c in range(NUM_CLASSES):
        p_c = prob[:, c][small == c]
        assert float(method.class_confidence[c]) == pytest.approx(float(p_c.mean()), rel=1e-5), c
    assert bool(method.class_confidence_seen.all())
    assert torch.all(seen["weights"] == 1 - method.class_confidence)
    assert 0 < float(logs["paste_fraction"]) < 1 and "class_confidence" in method.state_dict()


def test_rare_class_paste_is_off_by_default_and_leaves_the_state_alone():
    method = make_method("u2pl_plus")
    assert "class_confidence" not in method.state_dict()
    (_, logs), = run_steps(method, steps=1)
    assert "paste_fraction" not in logs
