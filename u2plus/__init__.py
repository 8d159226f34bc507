"""u2plus: label-efficient semantic segmentation with unreliable pseudo-labels (U2PL+).

``U2PLPlusCriterion`` (with its ``CriterionConfig``) is the method's loss terms as one module for
any mean-teacher training loop; ``u2plus train`` is the whole training program.
"""

from .criterion import CriterionConfig, U2PLPlusCriterion

__version__ = "0.1.0"
__all__ = ["CriterionConfig", "U2PLPlusCriterion", "__version__"]
