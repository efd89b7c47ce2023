"""What the workflow overrides in the stage CLIs' configs, checked at plan time by the CLIs' own loaders.

Both stage CLIs take ``--cfg-options key=value ...`` (domains/cfg_options.py). A translator job gets
them from config keys ``pairs.<pair>.translator.cfg_options`` and, on top,
``translators.<translator>.cfg_options`` (:func:`translator_overrides`); a segmenter job from
``pairs.<pair>.segmenter.cfg_options`` and, on top, ``uda.<uda>.cfg_options``
(:func:`segmenter_overrides`). The rules build their flags from these functions and
:func:`cfg_option_items`, and :func:`check_overrides` hands the same ``key=value`` strings to the
loaders the jobs use, ``translators.config.load_config`` and ``segmenters.configs.load_config``, for
every pair x translator and pair x UDA method of the config. An unknown or ill-typed key therefore
stops ``snakemake -n`` with one message naming the config key it came from (``ConfigError``), before
any job runs; the loaders own the rules (unknown keys, types), nothing is repeated here. (Where the
Snakemake interpreter lacks mmengine, the stage CLIs running in their own environment, config key
``python``, the overrides are left to the jobs.)

Plan time stays cheap: the translator loader is plain Python and mmengine's config reader;
``segmenters/configs`` is read on its own (:func:`segmenter_configs`), without the ``segmenters``
package whose import loads torch and mmseg (seconds), and only where a combination has options at all.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from wflib.pipeline_config import ConfigError, format_cfg_options

#: module name of segmenters/configs when read without its package (see segmenter_configs)
_STANDALONE = "_wflib_segmenters_configs"


class Override(NamedTuple):
    """One ``key=value`` a job gets, and the config key that gives it (``translators.semst.cfg_options``)."""

    key: str
    value: Any
    origin: str


def _merged(*sources: tuple[str, dict | None]) -> list[Override]:
    """Overrides of ``(origin, mapping)`` sources, later ones on top (``{**a, **b}``: a key keeps its
    first position and takes its last value)."""
    out: dict[str, Override] = {}
    for origin, values in sources:
        for key, value in (values or {}).items():
            out[str(key)] = Override(str(key), value, origin)
    return list(out.values())


def translator_overrides(config: dict, pair: str, translator: str) -> list[Override]:
    """``--cfg-options`` of ``translator``'s jobs for ``pair`` (rounds 0 and up alike)."""
    return _merged((f"pairs.{pair}.translator.cfg_options", config["pairs"][pair]["translator"]["cfg_options"]),
                   (f"translators.{translator}.cfg_options", config["translators"][translator]["cfg_options"]))


def segmenter_overrides(config: dict, pair: str, uda: str) -> list[Override]:
    """``--cfg-options`` of ``uda``'s segmenter jobs for ``pair`` (rounds 0 and up alike)."""
    return _merged((f"pairs.{pair}.segmenter.cfg_options", config["pairs"][pair]["segmenter"]["cfg_options"]),
                   (f"uda.{uda}.cfg_options", config["uda"][uda]["cfg_options"]))


def cfg_option_items(overrides: Iterable[Override]) -> list[str]:
    """``key=value`` strings of ``--cfg-options`` (either stage), read back by mmengine's DictAction."""
    return format_cfg_options({o.key: o.value for o in overrides})


def translator_config_path(repo: Path, method: str, preset: str) -> Path:
    """``translators/configs/<method>_<preset>.yaml``: the ``--config`` of a translator's jobs."""
    return Path(repo) / "translators" / "configs" / f"{method}_{preset}.yaml"


def segmenter_configs(repo: Path) -> Any:
    """The ``segmenters.configs`` module (``load_config``); when the ``segmenters`` package is not
    imported yet, its file is read on its own, so plan time imports mmengine's config, not torch."""
    loaded = sys.modules.get("segmenters.configs") or sys.modules.get(_STANDALONE)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(_STANDALONE, Path(repo) / "segmenters" / "configs" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_STANDALONE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_STANDALONE]
        raise
    return module


def _first_refused(load: Callable[[list[str]], None], items: Callable[[list[Override]], list[str]],
                   overrides: list[Override], errors: tuple[type[BaseException], ...],
                   cache: dict | None, cache_key: tuple) -> tuple[Override, str] | None:
    """None when ``load(items(overrides))`` accepts them all, else the override whose addition makes
    the loader refuse (the shortest refused prefix) and the loader's message for that prefix.
    ``cache``: verdicts by ``cache_key`` and argument list (pairs share presets and overrides)."""
    cache = {} if cache is None else cache

    def refusal(part: list[Override]) -> BaseException | None:
        args = items(part)
        key = (*cache_key, tuple(args))
        if key not in cache:
            try:
                load(args)
                cache[key] = None
            except errors as err:
                cache[key] = err
        return cache[key]

    if refusal(overrides) is None:
        return None
    for n in range(1, len(overrides) + 1):
        err = refusal(overrides[:n])
        if err is not None:
            return overrides[n - 1], str(err.args[0] if err.args else err)
    raise AssertionError("unreachable: the full list was refused")  # pragma: no cover


def _message(bad: Override, text: str, reason: str, context: str) -> str:
    return f"{bad.origin}: {text}: {reason} ({context})"


def check_translator(config: dict, pair: str, translator: str, repo: Path, cache: dict | None = None) -> None:
    """``translators train --config <method>_<preset>.yaml --cfg-options ...`` of ``translator`` for
    ``pair`` accepts its overrides (nothing to check for method none, no overrides, or no such config
    file: the DAG names a missing file when a target needs it; nor without mmengine, see above)."""
    overrides = translator_overrides(config, pair, translator)
    method = config["translators"][translator]["method"]
    path = translator_config_path(repo, method, config["pairs"][pair]["preset"])
    if method == "none" or not overrides or not path.is_file():
        return
    from translators.config import ConfigError as TranslatorConfigError, load_config

    try:
        refused = _first_refused(lambda args: load_config(path, args), cfg_option_items, overrides,
                                 (TranslatorConfigError,), cache, ("translators", str(path)))
    except ImportError:  # Snakemake runs without mmengine (the CLIs' own env: config key 'python'): the job checks
        return
    if refused:
        bad, reason = refused
        shown = path.relative_to(repo) if path.is_relative_to(repo) else path
        raise ConfigError(_message(bad, cfg_option_items([bad])[0], reason,
                                   f"--cfg-options of translator '{translator}' of pair '{pair}' over {shown}"))


def check_segmenter(config: dict, pair: str, uda: str, repo: Path, cache: dict | None = None) -> None:
    """``segmenters train --arch A --preset P --cfg-options ...`` of ``uda`` for ``pair`` accepts its options."""
    overrides = segmenter_overrides(config, pair, uda)
    if not overrides:
        return
    arch, preset = config["pairs"][pair]["segmenter"]["arch"], config["pairs"][pair]["preset"]
    try:
        loader = segmenter_configs(repo)
    except ImportError:  # Snakemake runs without mmengine (the CLIs' own env: config key 'python'): the job checks
        return
    refused = _first_refused(lambda args: loader.load_config(arch, preset, args), cfg_option_items, overrides,
                             (KeyError, ValueError), cache, ("segmenters", arch, preset))
    if refused:
        bad, reason = refused
        raise ConfigError(_message(bad, cfg_option_items([bad])[0], reason, f"--cfg-options of uda '{uda}' of "
                                   f"pair '{pair}', segmenter {arch} at preset {preset}"))


def _implemented(specs: dict) -> list[str]:
    return [name for name, spec in specs.items() if spec["status"] == "implemented"]


def check_overrides(config: dict, repo: Path, pairs: Iterable[str] | None = None) -> None:
    """Every translator's and every UDA method's ``--cfg-options``, for each pair of ``pairs``
    (default: all), as the jobs would get them; the first refused one raises ``ConfigError``. Each
    distinct config file + argument list is loaded once."""
    cache: dict = {}
    for pair in config["pairs"] if pairs is None else pairs:
        for translator in _implemented(config["translators"]):
            check_translator(config, pair, translator, repo, cache)
        for uda in _implemented(config["uda"]):
            check_segmenter(config, pair, uda, repo, cache)
