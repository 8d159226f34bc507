"""Segmentor = encoder h -> decoder (F at stride 4) -> seg head f + representation head g; with the
weakly-supervised heads (u2plus.models.image_level) also f_cls, CAMs and the affinity on the
encoder's last map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .daformer import DAFormerDecoder
from .deeplabv3plus import DeepLabV3PlusDecoder
from .encoders import build_encoder
from .heads import RepresentationHead, SegmentationHead
from .segformer import SegFormerHead


class Segmentor(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, num_classes: int,
                 rep_dim: int | None = 256):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.seg_head = SegmentationHead(decoder.out_channels, num_classes)
        self.rep_head = RepresentationHead(decoder.out_channels, rep_dim) if rep_dim else None
        self.num_classes = num_classes
        self.mean, self.std = encoder.mean, encoder.std
        self.image_level = None  # weakly-supervised heads (models/image_level.py), attached by the WS recipes

    def forward(self, x: torch.Tensor, with_rep: bool = False, with_cam: bool = False,
                with_features: bool = False, detach_rep: bool = False) -> dict[str, torch.Tensor]:
        """``logits`` [B, C, H/4, W/4]; with ``with_rep``, ``rep`` [B, D, H/4, W/4], L2-normalised
        per pixel (as every similarity, prototype and memory-bank use needs; with ``detach_rep``
        computed from the decoder's features detached: its gradient trains the head alone); with ``with_cam``
        (weakly-supervised heads), ``cls_logits`` [B, C - 1], ``cams`` [B, C - 1, h, w] (Eq. 5)
        and ``affinity`` [B, h * w, h * w] on the encoder's last map; with ``with_features``,
        ``features``: the encoder's maps (e.g. for DAFormer's feature distance)."""
        features = self.encoder(x)
        attention = None
        if self.image_level is not None:
            features, attention = self.image_level.attend(features, self.encoder)
        fmap = self.decoder(features)
        out = {"logits": self.seg_head(fmap)}
        if with_cam:
            out.update(self.image_level(features[-1], attention))
        if with_features:
            out["features"] = features
        if with_rep:
            if self.rep_head is None:
                raise RuntimeError("this model was built without a representation head (model.rep_head=false)")
            out["rep"] = F.normalize(self.rep_head(fmap.detach() if detach_rep else fmap), dim=1)
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at stride 4 (evaluation's ``model_fn``)."""
        return self.forward(x)["logits"]

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(encoder parameters, decoder + head parameters): the latter train with lr x head_lr_mult."""
        enc = list(self.encoder.parameters())
        ids = {id(p) for p in enc}
        return enc, [p for p in self.parameters() if id(p) not in ids]


def build_segmentor(model_cfg, num_classes: int) -> Segmentor:
    encoder = build_encoder(model_cfg.encoder, model_cfg.pretrained, model_cfg.output_stride)
    if model_cfg.decoder == "segformer":
        decoder = SegFormerHead(encoder.channels, encoder.reductions, model_cfg.decoder_channels)
    elif model_cfg.decoder == "daformer":
        decoder = DAFormerDecoder(encoder.channels, encoder.reductions, model_cfg.decoder_channels,
                                  tuple(model_cfg.fusion_rates))
    else:
        decoder = DeepLabV3PlusDecoder(encoder.channels, encoder.reductions, model_cfg.decoder_channels,
                                       model_cfg.aspp_rates, model_cfg.aspp_separable, model_cfg.aspp_dropout,
                                       model_cfg.aspp_pooling_norm)
    model = Segmentor(encoder, decoder, num_classes, model_cfg.rep_dim if model_cfg.rep_head else None)
    if model_cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
