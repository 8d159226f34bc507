"""bench/pseudo_label_audit.py's counts on a hand-made batch."""

import importlib.util
import math
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "pseudo_label_audit", Path(__file__).resolve().parents[2] / "bench" / "pseudo_label_audit.py")
audit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit)


def test_audit_counts_by_hand():
    # 6 pixels, 2 classes; true classes 0 0 0 0 1 1, predictions 0 0 0 1 1 0
    p0 = torch.tensor([0.99, 0.95, 0.7, 0.4, 0.45, 0.9])  # p(class 0); entropies ordered by |p - 0.5|
    prob = torch.stack([p0, 1 - p0]).reshape(1, 2, 1, 6)
    mask = torch.tensor([[[0, 0, 0, 0, 1, 1]]])
    counts = audit.audit_counts(prob, mask, alpha=0.5)
    # one threshold: the 3 lowest entropies of 6 (p0 0.99, 0.95, 0.9) are reliable; of those,
    # pixels 0 and 1 are class 0 predicted right, pixel 5 (true 1) gets class 0's label
    assert counts["pixels"].tolist() == [4, 2]
    assert counts["predicted"].tolist() == [3, 1]
    assert counts["reliable"].tolist() == [2, 0]
    assert counts["wrong_reliable"].tolist() == [0, 1]
    # per predicted class: class 0 is predicted at p0 0.99, 0.95, 0.7, 0.9 -> its median entropy
    # lies between those of 0.95 and 0.9, so 0.99 and 0.95 are reliable; class 1 at p0 0.4, 0.45
    # -> the lower-entropy one (0.4) is reliable and true class 0 (wrong, not counted as right)
    # while the true-1 pixel at 0.45 stays unreliable
    assert counts["reliable_classwise"].tolist() == [2, 0]
    assert math.isclose(float(counts["pixels"].sum()), 6)


def test_audit_counts_ignores_void_and_keeps_a_rare_class_per_class():
    # a rare class predicted right at high entropy: one threshold drops it, one per class keeps it
    p0 = torch.tensor([0.99, 0.98, 0.97, 0.96, 0.35, 0.4, 0.45, 0.5])
    prob = torch.stack([p0, 1 - p0]).reshape(1, 2, 1, 8)
    mask = torch.tensor([[[0, 0, 0, 0, 1, 1, 1, 255]]])
    counts = audit.audit_counts(prob, mask, alpha=0.4)
    assert counts["pixels"].tolist() == [4, 3]  # the void pixel counts nowhere
    # 0.6 quantile of 7 entropies lies between the 4th and 5th lowest: the class-0 pixels only
    assert counts["reliable"].tolist() == [4, 0]
    # per class: class 0's threshold between its 2nd and 3rd lowest, class 1's (p1 0.65, 0.6,
    # 0.55) between its 2nd and 3rd: two of each
    assert counts["reliable_classwise"].tolist() == [2, 2]
    assert counts["wrong_reliable"].tolist() == [0, 0]
