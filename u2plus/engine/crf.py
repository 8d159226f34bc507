"""Dense CRF post-processing of predictions (Kraehenbuehl & Koltun, 2011), as the WS tables report
it (paper Sec. 4.3: "All methods are refined using CRF"): ``eval.crf=true``.

Unary: -log of the predicted probabilities; pairwise: a Gaussian position kernel (weight 3, std 1
pixel) and a bilateral kernel (weight 4, position std 67 pixels, colour std 3), 10 mean-field
iterations: the DeepLab v2 settings for PASCAL VOC that AFA's evaluation uses. Needs the
``pydensecrf2`` package (``pip install 'u2plus[crf]'``, built from source); without it
``eval.crf=true`` is a ConfigError before anything trains or evaluates.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["crf_labels", "dense_crf", "require_crf"]


def require_crf() -> None:
    """A ConfigError when the CRF package cannot be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError as e:
        raise ConfigError("eval.crf=true needs the dense CRF package pydensecrf2 "
                          f"(pip install 'u2plus[crf]'): {e}") from None


def dense_crf(image: np.ndarray, probs: np.ndarray, iterations: int = 10, pos_weight: float = 3.0,
              pos_std: float = 1.0, bi_weight: float = 4.0, bi_xy_std: float = 67.0,
              bi_rgb_std: float = 3.0) -> np.ndarray:
    """Refined probabilities ``[C, H, W]`` float32 of ``probs`` ``[C, H, W]`` on ``image``
    ``[H, W, 3]`` uint8."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    C, H, W = probs.shape
    crf = dcrf.DenseCRF2D(W, H, C)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=pos_std, compat=pos_weight)
    crf.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=bi_weight)
    return np.asarray(crf.inference(iterations), dtype=np.float32).reshape(C, H, W)


def crf_labels(images: Tensor, scores: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Labels ``[B, H, W]`` after the dense CRF of class scores ``[B, C, H, W]`` (logits or log
    probabilities) on normalised images ``[B, 3, H, W]`` (un-normalised with ``mean``/``std``)."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    rgb = ((images.float() * s + m) * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    probs = scores.float().softmax(1).cpu().numpy()
    labels = [dense_crf(rgb[i], probs[i]).argmax(0) for i in range(len(rgb))]
    return torch.from_numpy(np.stack(labels)).to(scores.device)
