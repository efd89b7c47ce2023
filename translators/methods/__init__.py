"""Translator methods (one training iteration + full-resolution inference each): the registry.

:data:`METHODS` (imported with the package) and :data:`LAZY_METHODS` (imported on first use) list
every method; ``python -m translators --help`` lists them from here.
"""
from __future__ import annotations

import importlib

from translators.config import ConfigError, TranslatorConfig

from .base import NonFiniteLossError, TranslatorMethod, tiled_apply, tile_starts, tile_weight
from .cut import CUT
from .semst import SemST

METHODS: dict[str, type[TranslatorMethod]] = {"cut": CUT, "semst": SemST}
#: methods imported on first use (module, class), so a problem in one never blocks the others
LAZY_METHODS: dict[str, tuple[str, str]] = {"cyclegan": ("translators.methods.cyclegan", "CycleGAN"),
                                            "spade": ("translators.methods.spade_guided", "SpadeGuided")}


def method_class(name: str) -> type[TranslatorMethod]:
    if name in METHODS:
        return METHODS[name]
    if name in LAZY_METHODS:
        module, cls = LAZY_METHODS[name]
        return getattr(importlib.import_module(module), cls)
    raise ConfigError(f"unknown method '{name}' (known: {', '.join([*METHODS, *LAZY_METHODS])})")


def build_method(cfg: TranslatorConfig) -> TranslatorMethod:
    """Instantiate the method named by ``cfg.method`` (weights initialised from the global RNG)."""
    return method_class(cfg.method)(cfg)


__all__ = ["CUT", "LAZY_METHODS", "METHODS", "method_class", "NonFiniteLossError", "SemST", "TranslatorMethod", "build_method",
           "tiled_apply", "tile_starts", "tile_weight"]
