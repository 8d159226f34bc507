"""Hypothesis property tests: no NaN/inf for random inputs; gradients go to the student only."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from u2plus.losses.contrastive import ContrastiveConfig
from u2plus.losses.queues import ClassQueues
from u2plus.losses.entropy import pixel_entropy
from u2plus.losses.partition import entropy_threshold, pseudo_labels, reliable_mask
from u2plus.losses.sce import adaptive_unsupervised_loss, symmetric_cross_entropy

from ..helpers import ss_contrastive_loss as contrastive_loss

SETTINGS = settings(max_examples=30, deadline=None)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 2),
    c=st.integers(1, 6),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    eta=st.floats(0.0, 3.0),
)
def test_sce_never_nan(seed, b, c, h, w, scale, eta):
    g = _gen(seed)
    logits = (torch.randn(b, c, h, w, generator=g) * scale).requires_grad_(True)
    target = torch.randint(0, c, (b, h, w), generator=g)
    target = torch.where(torch.rand(b, h, w, generator=g) < 0.3, torch.full_like(target, 255), target)
    reliable = torch.rand(b, h, w, generator=g) < 0.5
    l = symmetric_cross_entropy(logits, target)
    assert torch.isfinite(l).all() and (l >= 0).all()
    v = adaptive_unsupervised_loss(logits, target, reliable, eta=eta)
    assert torch.isfinite(v)
    v.backward()
    assert torch.isfinite(logits.grad).all()


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    c=st.integers(1, 8),
    n=st.integers(1, 40),
    alpha=st.floats(0.0, 1.0),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    half=st.booleans(),
)
def test_entropy_and_threshold_never_nan(seed, c, n, alpha, scale, half):
    g = _gen(seed)
    prob = torch.softmax(torch.randn(1, c, 1, n, generator=g) * scale, dim=1)
    if half:
        prob = prob.half()
    ent = pixel_entropy(prob)
    assert torch.isfinite(ent).all()
    assert (ent >= -1e-5).all() and (ent <= np.log(c) + 1e-3).all()
    gamma = entropy_threshold(ent, alpha)
    assert torch.isfinite(gamma)
    expected = np.percentile(ent.numpy().ravel(), 100 * (1 - alpha))
    assert abs(gamma.item() - expected) <= 1e-5 * max(1.0, abs(expected))
    rel = reliable_mask(ent, gamma)
    y = pseudo_labels(prob, rel)
    assert ((y == 255) | ((y >= 0) & (y < c))).all()
    assert torch.equal(y == 255, ~rel)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 3),
    c=st.integers(1, 6),
    d=st.integers(1, 5),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    use_queue=st.booleans(),
    rank_threshold=st.booleans(),
    negatives_from=st.sampled_from(["unreliable", "reliable", "both"]),
    labeled_negatives=st.booleans(),
    r_l=st.integers(0, 4),
    r_h=st.integers(1, 25),
    num_anchors=st.integers(1, 5),
    queue_size=st.integers(1, 6),
    prefill=st.booleans(),
    zero_feats=st.booleans(),
)
def test_contrastive_loss_finite_and_grad_to_student_only(
    seed, b, c, d, h, w, use_queue, rank_threshold, negatives_from, labeled_negatives,
    r_l, r_h, num_anchors, queue_size, prefill, zero_feats,
):
    g = _gen(seed)
    z_s = torch.randn(b, d, h, w, generator=g)
    z_t = torch.randn(b, d, h, w, generator=g)
    if zero_feats:  # degenerate all-zero features must not produce NaN either
        z_s.zero_()
        z_t.zero_()
    z_s.requires_grad_(True)
    z_t.requires_grad_(True)
    prob = torch.softmax(torch.randn(b, c, h, w, generator=g) * 3, dim=1)
    is_labeled = torch.rand(b, generator=g) < 0.5
    unreliable = (torch.rand(b, h, w, generator=g) < 0.4) & ~is_labeled.view(b, 1, 1)
    labels = torch.randint(0, c, (b, h, w), generator=g)
    labels = torch.where(unreliable, torch.full_like(labels, 255), labels)
    protos = torch.randn(c, d, generator=g).requires_grad_(True)
    proto_valid = torch.rand(c, generator=g) < 0.7
    queues = ClassQueues(c, d, size=queue_size) if use_queue else None
    if queues is not None and prefill:
        queues.enqueue(torch.randn(3, d, generator=g), torch.randint(0, c, (3,), generator=g))
    cfg = ContrastiveConfig(
        num_anchors=num_anchors, num_negatives=3, r_l=r_l, r_h=r_h, use_queue=use_queue,
        rank_threshold=rank_threshold, negatives_from=negatives_from, labeled_negatives=labeled_negatives,
    )
    loss, stats = contrastive_loss(z_s, z_t, prob, labels, is_labeled, unreliable, protos, proto_valid, queues, cfg, seed=seed)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() >= 0
    assert stats["anchors_per_class"].shape == (c,) and (stats["anchors_per_class"] <= num_anchors).all()
    assert stats["negatives_per_class"].shape == (c,)
    if queues is not None:
        assert (queues.count <= queue_size).all()
        assert torch.isfinite(queues.keys).all()
    loss.backward()
    assert z_s.grad is not None and torch.isfinite(z_s.grad).all()
    assert z_t.grad is None
    assert protos.grad is None
