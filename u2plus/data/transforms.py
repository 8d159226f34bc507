"""Joint image + mask augmentation with ``torchvision.transforms.v2`` (images and masks as tv_tensors).

- weak: random scale, random crop padded with the ignore label (image padded with 0), h-flip;
- strong (unlabeled images only): colour jitter, random grayscale, Gaussian blur, applied to a
  copy of the weakly augmented crop, so teacher (weak) and student (strong) see the same pixels.
  CutMix is applied per batch in the training step (:mod:`u2plus.mixing`).
- eval: no geometric change, only normalisation.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range`` (masks with nearest neighbour)."""

    def __init__(self, scale_range: Sequence[float]):
        super().__init__()
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale_range
        s = lo + (hi - lo) * torch.rand(()).item()
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        if isinstance(inpt, tv_tensors.Image):
            return TF.resize(inpt, params["size"], antialias=True)
        return inpt


def weak_augmentation(crop_size: Sequence[int], scale_range: Sequence[float], hflip: bool,
                      ignore_index: int = 255) -> v2.Compose:
    ops: list = [
        RandomScale(scale_range),
        v2.RandomCrop(list(crop_size), pad_if_needed=True,
                      fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
    ]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops)


def strong_augmentation(color_jitter: Sequence[float], color_jitter_p: float, grayscale_p: float,
                        blur_p: float) -> v2.Compose:
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(*color_jitter)], p=color_jitter_p),
        v2.RandomGrayscale(p=grayscale_p),
        v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=blur_p),
    ])


class Normalize:
    """uint8 image -> float, normalised with the encoder's mean/std (in [0, 1] units)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.op = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.op(image).as_subclass(torch.Tensor)


class TrainTransform:
    """Weak augmentation (+ a strong view for unlabeled images), then normalisation.

    Output: ``image`` (weak view), optionally ``image_strong`` (unlabeled images), ``valid`` (bool,
    False on crop padding; unlabeled and tagged images), ``mask`` (int64, ignore-padded) and
    ``tags`` (image-level labels, passed on).
    """

    def __init__(self, data_cfg, mean, std, strong: bool = False):
        self.weak = weak_augmentation(data_cfg.crop_size, data_cfg.scale_range, data_cfg.hflip,
                                      data_cfg.ignore_index)
        self.strong = (strong_augmentation(data_cfg.color_jitter, data_cfg.color_jitter_p,
                                           data_cfg.grayscale_p, data_cfg.blur_p) if strong else None)
        self.normalize = Normalize(mean, std)
        self.ignore_index = data_cfg.ignore_index

    def __call__(self, sample: dict) -> dict:
        inputs = {k: sample[k] for k in ("image", "mask") if k in sample}
        track_padding = self.strong is not None or "tags" in sample
        if track_padding:
            # unlabeled and tagged images: track crop padding (filled with ignore) so that padded
            # pixels never get a pseudo-label or enter the entropy quantile (docs/method.md:
            # padding is never a class)
            inputs["valid"] = tv_tensors.Mask(torch.zeros(sample["image"].shape[-2:], dtype=torch.uint8))
        out = self.weak(inputs)
        result = {"id": sample["id"], "index": sample["index"], "image": self.normalize(out["image"])}
        if self.strong is not None:
            result["image_strong"] = self.normalize(self.strong(out["image"]))
        if track_padding:
            result["valid"] = out["valid"].as_subclass(torch.Tensor) != self.ignore_index
        if "mask" in out:
            result["mask"] = out["mask"].as_subclass(torch.Tensor).long()
        if "tags" in sample:
            result["tags"] = sample["tags"]
        return result


class EvalTransform:
    def __init__(self, mean, std):
        self.normalize = Normalize(mean, std)

    def __call__(self, sample: dict) -> dict:
        result = {"id": sample["id"], "index": sample["index"], "image": self.normalize(sample["image"])}
        if "mask" in sample:
            result["mask"] = sample["mask"].as_subclass(torch.Tensor).long()
        if "tags" in sample:
            result["tags"] = sample["tags"]
        return result
