"""DAFormer decoder (Hoyer et al., "DAFormer", CVPR 2022, Sec. 3.2: context-aware feature fusion).

Each encoder level at stride >= 4 is embedded to a common width by a linear layer (DAFormer's "mlp"
embedding, SegFormer's: a 1x1 convolution without normalisation or activation) and upsampled
bilinearly to the stride-4 level (:func:`u2plus.models.segformer.embed_levels`); the concatenation
is fused by parallel convolutions of several dilation rates, concatenated again and projected by a
3x3 bottleneck: DAFormer's ``ASPPWrapper`` with ``sep=True, pool=False``, where rate 1 is a 1x1
convolution and every other rate a dilated depthwise-separable 3x3 convolution (depthwise-BN-ReLU,
pointwise-BN-ReLU). The output is the feature map F at stride 4 on which u2plus's segmentation and
representation heads sit, as with :class:`~u2plus.models.deeplabv3plus.DeepLabV3PlusDecoder`; any
encoder works with it.
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import conv_bn_relu
from .segformer import embed_levels


def fusion_branch(cin: int, cout: int, rate: int) -> nn.Sequential:
    """Rate 1: a 1x1 convolution; else a dilated depthwise-separable 3x3 convolution."""
    if rate == 1:
        return conv_bn_relu(cin, cout, 1)
    return nn.Sequential(conv_bn_relu(cin, cin, 3, dilation=rate, groups=cin), conv_bn_relu(cin, cout, 1))


class DAFormerDecoder(nn.Module):
    """features (finest to deepest) -> fused map F at stride 4 with ``channels`` channels."""

    def __init__(self, encoder_channels: list[int], encoder_reductions: list[int], channels: int = 256,
                 rates=(1, 6, 12, 18)):
        super().__init__()
        if 4 not in encoder_reductions:
            raise ValueError("the DAFormer decoder needs an encoder feature map at stride 4")
        self.levels = [i for i, r in enumerate(encoder_reductions) if r >= 4]
        self.embed = nn.ModuleList(nn.Conv2d(encoder_channels[i], channels, 1) for i in self.levels)
        fused = channels * len(self.levels)
        self.branches = nn.ModuleList(fusion_branch(fused, channels, r) for r in rates)
        self.bottleneck = conv_bn_relu(channels * len(self.branches), channels, 3)
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(embed_levels([features[i] for i in self.levels], self.embed), dim=1)
        return self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1))
