"""Training methods, each a thin composition of the shared parts. ``METHODS`` maps
``method.name`` to its class."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method, StepContext
from .suponly import SupOnly

METHODS = {
    "suponly": SupOnly,
}


def build_method(cfg, student) -> Method:
    try:
        cls = METHODS[cfg.method.name]
    except KeyError:
        raise ConfigError(f"method.name={cfg.method.name!r} is not one of {', '.join(sorted(METHODS))}") from None
    return cls(cfg, student)


def method_class(cfg):
    try:
        return METHODS[cfg.method.name]
    except KeyError:
        raise ConfigError(f"method.name={cfg.method.name!r} is not one of {', '.join(sorted(METHODS))}") from None


__all__ = ["METHODS", "Method", "StepContext", "build_method", "method_class"]
