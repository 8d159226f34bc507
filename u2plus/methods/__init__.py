"""Training methods, each a thin composition of the shared parts. ``METHODS`` maps
``method.name`` to its class."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method, StepContext
from .suponly import SupOnly
from .u2pl import U2PLPlus

# selftrain, u2pl and u2pl_plus are one composition with different switches (config presets)
METHODS = {
    "suponly": SupOnly,
    "selftrain": U2PLPlus,
    "u2pl": U2PLPlus,
    "u2pl_plus": U2PLPlus,
}


def method_class(cfg):
    try:
        return METHODS[cfg.method.name]
    except KeyError:
        raise ConfigError(f"method.name={cfg.method.name!r} is not one of {', '.join(sorted(METHODS))}") from None


def build_method(cfg, student) -> Method:
    return method_class(cfg)(cfg, student)


__all__ = ["METHODS", "Method", "StepContext", "build_method", "method_class"]
