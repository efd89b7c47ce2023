"""Segmenter configs (mmengine Python configs) and helpers to locate / load them.

``{arch}_{preset}``: ``deeplabv2_r101_{paper,tiny}.py`` (DeepLab-V2 ResNet-101) and
``fcn8s_vgg16_{paper,tiny}.py`` (FCN-8s VGG16). Every config defines ``model`` (EncoderDecoder),
``crop_size`` (h, w), ``train_scale``/``target_scale``/``test_scale`` (w, h), ``optim_wrapper``,
``param_scheduler``, ``max_iters``, ``uda``, ``num_classes``, ``batch_size``, ``init_from``,
``init_strict`` (see docs/design.md §8.2).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from domains.cfg_options import parse_cfg_options  # the one KEY=VALUE reader of both stages

ARCH_FILES = {"deeplabv2": "deeplabv2_r101", "fcn8s": "fcn8s_vgg16"}
PRESETS = ("tiny", "paper")
CONFIG_DIR = Path(__file__).resolve().parent


def config_path(arch: str, preset: str) -> Path:
    """Path of the config for ``arch`` in {'deeplabv2', 'fcn8s'} and ``preset`` in {'tiny', 'paper'}."""
    if arch not in ARCH_FILES:
        raise ValueError(f"unknown segmenter arch {arch!r}; choose one of {sorted(ARCH_FILES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown segmenter preset {preset!r}; choose one of {list(PRESETS)}")
    return CONFIG_DIR / f"{ARCH_FILES[arch]}_{preset}.py"


def _check_key_path(cfg: Any, full_key: str, source: str) -> Any:
    """The value at ``full_key`` in ``cfg``; a ``KeyError`` naming the key when the path does not exist."""
    node = cfg
    walked: list[str] = []
    for part in full_key.split("."):
        if isinstance(node, Mapping):
            if part not in node:
                import difflib

                known = sorted(str(k) for k in node.keys())
                where = ".".join(walked) or "<top level>"
                close = difflib.get_close_matches(part, known, n=1)
                hint = f"; did you mean {'.'.join([*walked, close[0]])!r}?" if close else ""
                raise KeyError(f"--cfg-options key {full_key!r}: {part!r} is not a key of {where} in {source} "
                               f"(known keys: {', '.join(known)}){hint}")
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(node) <= index < len(node):
                raise KeyError(f"--cfg-options key {full_key!r}: index {index} out of range for "
                               f"{'.'.join(walked)} (length {len(node)}) in {source}")
            node = node[index]
        else:
            raise KeyError(f"--cfg-options key {full_key!r}: {'.'.join(walked)} in {source} is a "
                           f"{type(node).__name__}, it has no key {part!r}")
        walked.append(part)
    return node


def _kind(value: Any) -> str | None:
    """What a config value is, for the type rule of ``--cfg-options`` (None: anything goes)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list/tuple"
    if isinstance(value, Mapping):
        return "a dict"
    return None


def _check_value(old: Any, new: Any, full_key: str, source: str) -> None:
    """An override keeps the kind of the value it replaces (number, true/false, string, list/tuple, dict);
    None on either side is allowed (an unset optional, or switching one off: ``init_from=None``)."""
    want, got = _kind(old), _kind(new)
    if want is not None and got is not None and want != got:
        hint = " (write dotted keys, e.g. 'a.b=1': a dict value is not parsed)" if want == "a dict" else ""
        import reprlib

        raise ValueError(f"--cfg-options key {full_key!r} must be {want} like its value {reprlib.repr(old)} in "
                         f"{source}, got {new!r}{hint}")


def load_config(arch: str, preset: str, cfg_options: Iterable[str] | Mapping[str, Any] | None = None):
    """Load ``config_path(arch, preset)`` as an ``mmengine.Config`` and apply ``cfg_options``.

    ``cfg_options``: a ``{"dotted.key": value}`` mapping or ``["dotted.key=value", ...]`` strings.
    Every key path must already exist in the config (list indices allowed, e.g.
    ``param_scheduler.0.end``); an unknown one raises ``KeyError`` naming the key, so a typo never
    silently adds an unused setting. A value must be of the kind it replaces (:func:`_check_value`:
    a number for a number, true/false for a bool, ...; None always), else ``ValueError`` naming the key.
    The workflow asks this function at plan time (workflow/lib/wflib/validate.py). Note that derived
    values are resolved when the file is read: overriding ``crop_size`` does not change
    ``model.data_preprocessor.size``; set both.
    """
    from mmengine.config import Config

    path = config_path(arch, preset)
    cfg = Config.fromfile(str(path))
    options = parse_cfg_options(cfg_options)
    plain = cfg.to_dict() if options else {}
    for key, value in options.items():
        _check_value(_check_key_path(plain, key, path.name), value, key, path.name)
    if options:
        cfg.merge_from_dict(options)
    return cfg


__all__ = ["ARCH_FILES", "PRESETS", "CONFIG_DIR", "config_path", "load_config", "parse_cfg_options"]
