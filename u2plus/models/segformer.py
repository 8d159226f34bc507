"""SegFormer's all-MLP decoder (Xie et al., 2021), the WS segmentation head of the paper (Sec. 4.3):
each of the encoder's last four maps (strides 4 .. 32) is projected to ``channels`` by a linear
layer (1x1 convolution), upsampled to stride 4, and the concatenation fused by a 1x1
convolution + BN + ReLU, then dropout. The result is the map F at stride 4 that the seg and
representation heads read."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def embed_levels(maps: list[torch.Tensor], projections: nn.ModuleList) -> list[torch.Tensor]:
    """SegFormer's MLP embedding, shared with the DAFormer decoder: each map through its 1x1
    projection, upsampled (bilinear) to the size of the first (finest) map."""
    size = maps[0].shape[-2:]
    return [F.interpolate(proj(m), size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size
            else proj(m) for proj, m in zip(projections, maps)]


class SegFormerHead(nn.Module):
    def __init__(self, encoder_channels: list[int], encoder_reductions: list[int], channels: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        if len(encoder_reductions) < 4 or encoder_reductions[-4] != 4:
            raise ValueError("the SegFormer head needs the encoder's last four maps to start at stride 4")
        self.project = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in encoder_channels[-4:])
        self.fuse = nn.Sequential(nn.Conv2d(4 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.out_channels = channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat(embed_levels(features[-4:], self.project)[::-1], dim=1))
