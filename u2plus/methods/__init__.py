"""Training methods, each a thin composition of the shared parts. ``METHODS`` maps
``method.name`` to its class."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method, StepContext
from .domain_adaptive import DomainAdaptive, SourceOnly
from .mean_teacher import MeanTeacher
from .semi_supervised import SemiSupervised
from .suponly import SupOnly
from .weakly_supervised import WeaklySupervised

# selftrain, u2pl and u2pl_plus are one recipe with different criterion switches (config presets);
# so are daformer and daformer_u2pl_plus (source -> target), and afa and afa_u2pl_plus (image-level tags)
METHODS = {
    "suponly": SupOnly,
    "selftrain": SemiSupervised,
    "u2pl": SemiSupervised,
    "u2pl_plus": SemiSupervised,
    "source_only": SourceOnly,
    "daformer": DomainAdaptive,
    "daformer_u2pl_plus": DomainAdaptive,
    "afa": WeaklySupervised,
    "afa_u2pl_plus": WeaklySupervised,
}


def method_class(cfg):
    """The method's class; a ConfigError when it does not train on what ``data.supervision`` gives."""
    try:
        cls = METHODS[cfg.method.name]
    except KeyError:
        raise ConfigError(f"method.name={cfg.method.name!r} is not one of {', '.join(sorted(METHODS))}") from None
    if cls.supervision != cfg.data.supervision:
        fitting = ", ".join(name for name, c in METHODS.items() if c.supervision == cfg.data.supervision)
        raise ConfigError(f"data.supervision={cfg.data.supervision} but method.name={cfg.method.name} trains on "
                          f"{cls.supervision}; with {cfg.data.supervision} use {fitting}")
    return cls


def build_method(cfg, student) -> Method:
    return method_class(cfg)(cfg, student)


__all__ = ["METHODS", "DomainAdaptive", "MeanTeacher", "Method", "SemiSupervised", "SourceOnly", "StepContext",
           "WeaklySupervised", "build_method", "method_class"]
