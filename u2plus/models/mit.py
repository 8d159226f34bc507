"""Mix Transformer (MiT-B0..B5, SegFormer; Xie et al., 2021) encoders from segmentation-models-pytorch:
the one MiT of u2plus, the encoder of DAFormer (domain-adaptive recipes, its maps feed the DAFormer
decoder and the feature distance) and of AFA (weakly-supervised recipes, whose affinity reads the
attention maps of the last stage, u2plus.models.image_level).

The weights and their names are those of the official SegFormer checkpoints (``model.pretrained``
= a local ``mit_bN.pth``, its ImageNet classifier ignored; no ImageNet weights are bundled).
Feature maps at strides 4, 8, 16, 32; ``model.output_stride=16`` sets the last patch embedding's
stride to 1, AFA's MiT strides (4, 2, 2, 1): the last stage and its attention at stride 16.

smp's ``Attention`` does not return its attention map; its ``attn_drop`` (applied to the softmaxed
map) is replaced here by an :class:`AttentionTap` that passes the map on and, once
:meth:`MiTEncoder.tap_attention` switched it on (the weakly-supervised heads do), keeps it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder

MIT_ENCODERS = tuple(f"mit_b{i}" for i in range(6))


class AttentionTap(nn.Module):
    """Stands in for an attention block's dropout; when ``enabled``, keeps the attention map
    ``[B, heads, N, N']`` it passes on."""

    def __init__(self, dropout: nn.Module):
        super().__init__()
        self.dropout = dropout
        self.enabled = False
        self.maps: torch.Tensor | None = None

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            self.maps = attn
        return self.dropout(attn)


class MiTEncoder(Encoder):
    """``mit_b0`` .. ``mit_b5``: feature maps at strides 4, 8, 16, 32 (16 with output stride 16)."""

    def __init__(self, name: str, output_stride: int = 32):
        nn.Module.__init__(self)
        from segmentation_models_pytorch.encoders import encoders

        if name not in MIT_ENCODERS or name not in encoders:
            raise ConfigError(f"model.encoder={name!r} is not a Mix Transformer ({', '.join(MIT_ENCODERS)})")
        if output_stride not in (16, 32):
            raise ConfigError(f"model.output_stride={output_stride}: {name} supports 16 (AFA's last stage at "
                              "stride 16) or 32")
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
        return list(self.body(x))[2:]  # smp adds the input and an empty stride-2 map in front

    def tap_attention(self, enabled: bool = True) -> None:
        """Keep the last stage's attention maps of every forward (for :meth:`attention_maps`)."""
        for tap in self.taps:
            tap.enabled = enabled

    def attention_maps(self) -> torch.Tensor:
        """The last stage's attention maps of the latest forward, ``[B, blocks * heads, N, N]``
        (released after reading)."""
        if any(tap.maps is None for tap in self.taps):
            raise RuntimeError("no attention maps kept: call tap_attention() before the forward")
        maps = torch.cat([tap.maps for tap in self.taps], dim=1)
        for tap in self.taps:
            tap.maps = None
        return maps
