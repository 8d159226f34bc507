"""Heads on the decoder map F (docs/method.md, "Network")."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel_size: int = 3, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (same padding, no bias)-BN-ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                                   groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegmentationHead(nn.Sequential):
    """f: 1x1 conv from F to C logits."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(nn.Conv2d(in_channels, num_classes, 1))


class RepresentationHead(nn.Sequential):
    """g: Conv3x3(F -> F/2)-BN-ReLU, Conv3x3(F/2 -> 256)-BN-ReLU, Conv1x1 -> ``dim``."""

    def __init__(self, in_channels: int, dim: int = 256):
        super().__init__(conv_bn_relu(in_channels, in_channels // 2), conv_bn_relu(in_channels // 2, 256),
                         nn.Conv2d(256, dim, 1))
