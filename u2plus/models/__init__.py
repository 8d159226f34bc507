"""Models: encoders (timm), decoders, heads and the Segmentor that joins them."""

from .encoders import build_encoder
from .segmentor import Segmentor, build_segmentor

__all__ = ["Segmentor", "build_encoder", "build_segmentor"]
