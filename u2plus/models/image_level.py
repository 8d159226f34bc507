"""The heads of the weakly-supervised setting (paper Sec. 3.1 and 4.3; AFA, Ru et al., CVPR 2022) on
the encoder's last feature map F, attached to a :class:`u2plus.models.segmentor.Segmentor` by the
weakly-supervised recipes (:func:`attach_image_level_heads`):

- f_cls: global pooling + 1x1 convolution without bias to the C - 1 foreground classes; its
  weights give the CAMs (Eq. 5, :func:`u2plus.losses.cam.class_activation_maps`);
- the affinity head: attention maps ``[B, M, N, N]`` made symmetric (``A + A^T``), a 1x1
  convolution over the M maps and a sigmoid give the affinity ``[B, N, N]`` (AFA Sec. 3.2).

Attention maps: a Mix Transformer encoder exposes its last stage's (u2plus.models.mit). A CNN
encoder has none, so a multi-head self-attention block (:class:`LastStageAttention`) is put on
its last feature map; its output is added to the map (zero-initialised, so it starts as the
identity and the ImageNet features are untouched), which the decoder and f_cls then read, and the
affinity loss trains its queries and keys as it trains the transformer's attention in AFA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..losses.cam import class_activation_maps

__all__ = ["AffinityHead", "ClassifierHead", "ImageLevelHeads", "LastStageAttention", "attach_image_level_heads"]


class LastStageAttention(nn.Module):
    """Multi-head self-attention over the positions of a CNN's last map ``[B, d, h, w]``:
    returns ``(x + W_o(softmax(QK^T / sqrt(k)) V), attention [B, heads, N, N])``."""

    def __init__(self, channels: int, heads: int = 8, key_dim: int = 32):
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.query = nn.Conv2d(channels, heads * key_dim, 1)
        self.key = nn.Conv2d(channels, heads * key_dim, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, d, h, w = x.shape
        q = self.query(x).view(B, self.heads, self.key_dim, h * w).transpose(2, 3)
        k = self.key(x).view(B, self.heads, self.key_dim, h * w)
        attn = (q @ k / self.key_dim ** 0.5).softmax(dim=-1)  # [B, heads, N, N]
        v = self.value(x).view(B, self.heads, d // self.heads, h * w).transpose(2, 3)
        mixed = (attn @ v).transpose(2, 3).reshape(B, d, h, w)
        return x + self.out(mixed), attn


class ClassifierHead(nn.Module):
    """f_cls: global pooling (``max``, AFA's choice, or ``avg``) + 1x1 conv without bias."""

    def __init__(self, channels: int, num_foreground: int, pooling: str = "max"):
        super().__init__()
        self.pooling = pooling
        self.conv = nn.Conv2d(channels, num_foreground, 1, bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits ``[B, C - 1]``, CAMs of Eq. 5 ``[B, C - 1, h, w]``)."""
        pooled = F.adaptive_max_pool2d(features, 1) if self.pooling == "max" else F.adaptive_avg_pool2d(features, 1)
        return self.conv(pooled).flatten(1), class_activation_maps(features, self.conv.weight)


class AffinityHead(nn.Module):
    """``sigmoid(conv1x1(A + A^T))``: attention maps ``[B, M, N, N]`` -> affinity ``[B, N, N]``."""

    def __init__(self, maps: int):
        super().__init__()
        self.proj = nn.Conv2d(maps, 1, 1)

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(attention + attention.transpose(-1, -2)))[:, 0]


class ImageLevelHeads(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str = "max", heads: int = 8):
        super().__init__()
        channels = encoder.channels[-1]
        maps = getattr(encoder, "attention_map_count", None)
        self.attention = LastStageAttention(channels, heads) if maps is None else None
        self.classifier = ClassifierHead(channels, num_classes - 1, pooling)
        self.affinity = AffinityHead(heads if maps is None else maps)

    def attend(self, features: list[torch.Tensor], encoder: nn.Module) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The encoder's maps (the last one through :class:`LastStageAttention` for a CNN) and
        the attention maps of the last stage."""
        if self.attention is None:
            return features, encoder.attention_maps()
        last, attn = self.attention(features[-1])
        return [*features[:-1], last], attn

    def forward(self, last: torch.Tensor, attention: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, cams = self.classifier(last)
        return {"cls_logits": logits, "cams": cams, "affinity": self.affinity(attention)}


def attach_image_level_heads(model: nn.Module, pooling: str = "max") -> nn.Module:
    """Give a Segmentor the weakly-supervised heads (once); returns the model."""
    if getattr(model, "image_level", None) is None:
        model.image_level = ImageLevelHeads(model.encoder, model.num_classes, pooling)
        if model.image_level.attention is None:  # a transformer's own attention maps: keep them
            model.encoder.tap_attention()
    return model
