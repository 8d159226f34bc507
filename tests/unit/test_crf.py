"""Dense CRF post-processing (eval.crf): it sharpens a blurred prediction to the image's edges, and
evaluate() reports the scores with and without it from the same forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from u2plus.engine.crf import crf_labels, dense_crf, require_crf
from u2plus.engine.evaluate import evaluate
from u2plus.errors import ConfigError

try:
    import pydensecrf.densecrf  # noqa: F401
    HAVE_CRF = True
except ImportError:
    HAVE_CRF = False
needs_crf = pytest.mark.skipif(not HAVE_CRF, reason="pydensecrf2 is not installed (pip install 'u2plus[crf]')")

H, W, EDGE = 32, 48, 24


def two_regions():
    """A dark left and a bright right half, and class-1 probabilities that ramp up 4 pixels too
    early: a blurred mask whose argmax puts the edge at column 20 instead of 24."""
    rng = np.random.default_rng(0)
    truth = np.zeros((H, W), np.int64)
    truth[:, EDGE:] = 1
    image = np.where(truth[..., None] == 1, 200, 40).astype(np.float64) + rng.normal(0, 3, (H, W, 3))
    image = image.clip(0, 255).astype(np.uint8)
    ramp = 1 / (1 + np.exp(-(np.arange(W) - (EDGE - 5)) / 3.0))
    p1 = np.broadcast_to(0.1 + 0.8 * ramp, (H, W))
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    return image, probs, truth


@needs_crf
def test_dense_crf_sharpens_a_blurred_mask_to_the_image_edge():
    image, probs, truth = two_regions()
    plain = probs.argmax(0)
    refined = dense_crf(image, probs)
    assert refined.shape == probs.shape and np.allclose(refined.sum(0), 1, atol=1e-4)
    crf = refined.argmax(0)
    assert (plain != truth).sum() == 4 * H  # the blurred mask is 4 columns off
    assert (crf != truth).sum() < (plain != truth).sum() / 4  # the CRF moves the edge to the colour edge


@needs_crf
def test_evaluate_reports_scores_with_and_without_crf():
    image, probs, truth = two_regions()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    logits = torch.from_numpy(np.log(probs))[None]
    loader = [{"image": x[None], "mask": torch.from_numpy(truth)[None]}]
    post = lambda images, scores: crf_labels(images, scores, mean, std)  # noqa: E731
    result = evaluate(lambda _: logits, loader, 2, crf=post)
    assert result["crf"]["mIoU"] > result["mIoU"] + 10
    assert set(result["crf"]) == {"mIoU", "per_class", "mAcc", "aAcc", "per_class_acc"}
    assert "crf" not in evaluate(lambda _: logits, loader, 2)


def test_eval_crf_without_the_package_is_one_config_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_crf(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError("No module named 'pydensecrf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_crf)
    with pytest.raises(ConfigError, match=r"eval.crf=true needs .*pydensecrf2"):
        require_crf()
