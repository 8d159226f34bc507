"""Mix Transformer (MiT-B0..B5, SegFormer; Xie et al., 2021) encoders from segmentation-models-pytorch,
with the attention maps of the last stage exposed for AFA's affinity (u2plus.models.image_level).

smp's ``Attention`` does not return its attention map; its ``attn_drop`` (applied to the softmaxed
map) is replaced here by an :class:`AttentionTap` that keeps the map it passes on, so the weights
and their names are those of the official SegFormer checkpoints (``model.pretrained`` = a local
``mit_bN.pth``; no ImageNet weights are bundled). ``model.output_stride=16`` sets the last patch
embedding's stride to 1, AFA's MiT strides (4, 2, 2, 1): the last stage and its attention at
stride 16 instead of 32.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder


class AttentionTap(nn.Module):
    """Stands in for an attention block's dropout: keeps the attention map ``[B, heads, N, N']``."""

    def __init__(self, dropout: nn.Module):
        super().__init__()
        self.dropout = dropout
        self.maps: torch.Tensor | None = None

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        self.maps = attn
        return self.dropout(attn)


class MiTEncoder(Encoder):
    """``mit_b0`` .. ``mit_b5``: feature maps at strides 4, 8, 16, 32 (16 with output stride 16)."""

    def __init__(self, name: str, output_stride: int = 32):
        nn.Module.__init__(self)
        from segmentation_models_pytorch.encoders import encoders

        if name not in encoders or not name.startswith("mit_"):
            raise ConfigError(f"model.encoder={name!r} is not a Mix Transformer (mit_b0 .. mit_b5)")
        if output_stride not in (16, 32):
            raise ConfigError(f"model.output_stride={output_stride}: {name} supports 16 or 32")
        spec = encoders[name]
        self.body = spec["encoder"](**spec["params"])
        if output_stride == 16:
            self.body.patch_embed4.proj.stride = (1, 1)
        self.name = name
        self.channels = list(spec["params"]["embed_dims"])
        self.reductions = [4, 8, 16, output_stride]
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.taps = []
        for block in self.body.block4:
            block.attn.attn_drop = AttentionTap(block.attn.attn_drop)
            self.taps.append(block.attn.attn_drop)
        self.attention_map_count = len(self.taps) * spec["params"]["num_heads"][-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)[2:]  # smp adds the input and an empty stride-2 map in front

    def attention_maps(self) -> torch.Tensor:
        """The last stage's attention maps of the latest forward, ``[B, blocks * heads, N, N]``
        (released after reading)."""
        maps = torch.cat([tap.maps for tap in self.taps], dim=1)
        for tap in self.taps:
            tap.maps = None
        return maps
