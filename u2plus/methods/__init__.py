"""Training methods, each a thin composition of the shared parts. ``METHODS`` maps
``method.name`` to its class."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method, StepContext
from .domain_adaptive import DomainAdaptive, SourceOnly
from .mean_teacher import MeanTeacher
from .semi_supervised import SemiSupervised
from .suponly import SupOnly

# selftrain, u2pl and u2pl_plus are one recipe with different criterion switches (config
# presets); so are daformer and daformer_u2pl_plus
METHODS = {
    "suponly": SupOnly,
    "selftrain": SemiSupervised,
    "u2pl": SemiSupervised,
    "u2pl_plus": SemiSupervised,
    "source_only": SourceOnly,
    "daformer": DomainAdaptive,
    "daformer_u2pl_plus": DomainAdaptive,
}


def method_class(cfg):
    try:
        return METHODS[cfg.method.name]
    except KeyError:
        raise ConfigError(f"method.name={cfg.method.name!r} is not one of {', '.join(sorted(METHODS))}") from None


def build_method(cfg, student) -> Method:
    return method_class(cfg)(cfg, student)


__all__ = ["METHODS", "DomainAdaptive", "MeanTeacher", "Method", "SemiSupervised", "SourceOnly", "StepContext",
           "build_method", "method_class"]
