"""u2plus: label-efficient semantic segmentation with unreliable pseudo-labels (U2PL+)."""

__version__ = "0.1.0"
