"""``--cfg-options KEY=VALUE [KEY=VALUE ...]``: the one override syntax of both stage CLIs.

``python -m segmenters train`` and ``python -m translators train|config`` declare the flag with
:func:`add_cfg_options_argument` and read it with :func:`parse_cfg_options`, so a value is typed the
same way in both stages, as mmengine's ``DictAction`` types it: ``7`` int, ``0.5`` / ``1e-4`` float,
``true`` / ``false`` (any case) bool, ``None`` None, ``[a,b]`` or ``a,b`` a list and ``(a,b)`` a tuple
(items typed the same way), anything else a string; quotes around a value are stripped and, as in
mmengine, every space is dropped. Each stage then checks the typed value against its config:
segmenters/configs keeps the kind of the value it replaces, translators/config.py converts it to the
type of the dataclass field (where ``on``/``off``/``yes``/``no`` are booleans too, and ``null``/``~``
None, the spellings of the translators' former ``--set``).

The workflow writes these strings from its config keys (``pairs.<pair>.segmenter.cfg_options``,
``uda.<u>.cfg_options``, ``pairs.<pair>.translator.cfg_options``, ``translators.<t>.cfg_options``)
with ``wflib.pipeline_config.format_cfg_options``. mmengine is imported only when a value is parsed.
"""
from __future__ import annotations

import argparse
from typing import Any, Iterable, Mapping

FLAG = "--cfg-options"


def add_cfg_options_argument(parser: argparse.ArgumentParser, help: str) -> argparse.Action:
    """``--cfg-options KEY=VALUE [KEY=VALUE ...]`` (dest ``cfg_options``, None when not given); the flag
    may be given more than once, its items add up in order."""
    return parser.add_argument(FLAG, dest="cfg_options", nargs="+", action="extend", default=None,
                               metavar="KEY=VALUE", help=help)


def parse_value(text: str) -> Any:
    """One value as mmengine's ``DictAction`` reads it (``"1e-4"`` -> 0.0001, ``"[0,4]"`` -> [0, 4]);
    ``ValueError`` for unbalanced brackets."""
    from mmengine.config import DictAction

    try:
        return DictAction._parse_iterable(text.strip())
    except AssertionError as err:  # DictAction asserts balanced brackets
        raise ValueError(str(err)) from None


def parse_cfg_options(options: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["a.b=1", "c=(1,2)"]`` -> ``{"a.b": 1, "c": (1, 2)}``; a mapping is taken as already typed.
    A later item with the same key wins. ``ValueError`` naming the item when one is not ``key=value``."""
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    parsed: dict[str, Any] = {}
    for item in options:
        if "=" not in item:
            raise ValueError(f"{FLAG} item {item!r} is not key=value")
        key, value = item.split("=", 1)
        try:
            parsed[key.strip()] = parse_value(value)
        except ValueError as err:
            raise ValueError(f"{FLAG} item {item!r}: {err}") from None
    return parsed


__all__ = ["FLAG", "add_cfg_options_argument", "parse_cfg_options", "parse_value"]
