"""Loading and checking the workflow config beyond what the JSON schema can say.

The JSON schema (workflow/schemas/config.schema.yaml) checks types and keys. This module adds
the checks that need the whole config or the disk, each raising :class:`ConfigError` with a
message that names the config key (and, for data, the expected on-disk layout), so a bad name
stops the workflow while Snakemake builds the DAG, before any job runs:

* pairs: ``<pairs_dir>/<pair>.yaml`` files, deep-merged with ``pairs.<pair>`` overrides;
* target names ``results/<pair>_<uda>_<translator>.csv``: parsed against the configured names,
  planned-but-unimplemented methods rejected up front;
* datasets: one prepared name = one raw root; raw roots of real datasets must exist.

Defaults come from the schema alone (wflib/schema.py): the functions below take the config as
common.smk has it, validated with every schema default filled in, and index it; unit tests fill
theirs with ``wflib.schema.fill_defaults``. Only :func:`resolve_pairs_dir`, :func:`load_pairs`
and :func:`pair_file_names` run before validation (it needs the pairs).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from wflib import schema as wfschema

PAIR_NAME = re.compile(r"^[A-Za-z0-9]+$")
METHOD_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")

#: what ``python -m domains prepare`` expects under a raw root, per dataset format (see domains/*.py)
EXPECTED_LAYOUT = {
    "gta5": ("images", "labels"),
    "synthia": ("RGB", "GT/LABELS"),
    "cityscapes": ("leftImg8bit", "gtFine"),
}
#: sub-folder of a minicity root that holds each format
MINICITY_SUBDIR = {"gta5": "gta5", "synthia": "synthia", "cityscapes": "cityscapes"}


class ConfigError(ValueError):
    """The workflow config names something that does not exist; the message names the key."""

SOURCE_TO_TARGET = "source_to_target"
TARGET_TO_SOURCE = "target_to_source"


def deep_merge(base: dict, override: dict | None) -> dict:
    """``base`` updated recursively by ``override`` (both left unchanged)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_pairs_dir(config: dict, workdir: Path, repo: Path) -> Path | None:
    """``pairs_dir`` relative to the working directory, else to the repository (shipped pairs)."""
    raw = Path(config.get("pairs_dir", wfschema.default("pairs_dir")))  # before validation fills it
    for candidate in ([raw] if raw.is_absolute() else [workdir / raw, repo / raw]):
        if candidate.is_dir():
            return candidate
    return None


def load_pairs(config: dict, workdir: Path, repo: Path) -> dict:
    """Fill ``config["pairs"]`` with every ``<pairs_dir>/<name>.yaml`` merged with its overrides."""
    overrides = config.get("pairs") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"config key 'pairs' must be a mapping of pair name -> settings, got {type(overrides).__name__}")
    pairs: dict[str, Any] = {}
    folder = resolve_pairs_dir(config, workdir, repo)
    if folder is None and config.get("pairs_dir"):
        raise ConfigError(f"config key 'pairs_dir' = {config['pairs_dir']!r}: folder not found (relative to the "
                          f"working directory {workdir} or the repository {repo}); it should hold one <pair>.yaml per pair")
    for path in sorted(folder.glob("*.yaml")) if folder else []:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a mapping of settings for pair '{path.stem}'")
        pairs[path.stem] = data
    for name, over in overrides.items():
        pairs[name] = deep_merge(pairs.get(name, {}), over)
    config["pairs"] = pairs
    return pairs


def pair_file_names(config: dict, workdir: Path, repo: Path) -> list[str]:
    """Names of the pairs defined by files (``<pairs_dir>/<name>.yaml``), not by ``pairs`` overrides."""
    folder = resolve_pairs_dir(config, workdir, repo)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder else []


def job_interpreter(configured: str | None, executable: str) -> str:
    """The interpreter the jobs run (config key ``python``; None: ``executable``, the one running
    Snakemake), spelled the same however Snakemake was started.

    Every job records it in its params, and Snakemake reruns a job whose params changed: started as
    ``snakemake`` (the entry script's ``.../bin/python3``) and then as ``python -m snakemake``
    (``make bench``: ``.../bin/python``), a finished workflow reran from its data on. So a
    ``python`` beside ``executable`` that is the same file is used instead (a virtual environment's
    ``python``/``python3``); a configured interpreter is taken as written.
    """
    if configured:
        return configured
    exe = Path(executable)
    plain = exe.with_name("python")
    try:
        if plain != exe and plain.exists() and plain.samefile(exe):
            return str(plain)
    except OSError:
        pass
    return str(exe)


def debug_requested(env: dict | None = None) -> bool:
    """``SEMST_DEBUG`` set: config errors show Snakemake's full report, not one message (domains/errors.py)."""
    from domains.errors import debug_enabled

    return debug_enabled(env)


def _short(value: Any, limit: int = 60) -> str:
    import reprlib

    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxdict, short.maxlist, short.maxlevel = limit, limit, 4, 4, 2
    return short.repr(value)


def _close(name: str, options: Iterable[str]) -> str:
    import difflib

    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f"; did you mean '{match[0]}'?" if match else ""


#: config keys that were renamed: old -> new name, where the new name is a key of the same section
#: (``translators.<t>.set`` and ``pairs.<pair>.translator.set`` became ``cfg_options``, the
#: ``--cfg-options`` of both stage CLIs); :func:`schema_error_message` names the new key
RENAMED_KEYS = {"set": "cfg_options"}


def schema_error_message(error: Any, file_pairs: Iterable[str] = ()) -> str:
    """One short message (the config key and what is wrong with it) for a ``jsonschema.ValidationError``
    of the workflow config, instead of the schema and config dump Snakemake prints.

    ``file_pairs``: pairs defined by ``<pairs_dir>/<name>.yaml`` (:func:`pair_file_names`), so an
    override ``pairs.<name>`` of a pair that does not exist is reported as such (with the pairs that
    do), not as a missing ``source``.
    """
    path = [str(p) for p in error.absolute_path]
    key = ".".join(path)
    where = f"config key '{key}'" if key else "the config (top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "required" and len(path) == 2 and path[0] == "pairs":
        name, defined = path[1], sorted(file_pairs)
        required = list(error.validator_value)
        missing = [k for k in required if k not in (error.instance or {})]
        if name not in defined:
            return (f"pair '{name}' is not defined (defined: {', '.join(defined) or 'none'}{_close(name, defined)}): "
                    f"config key 'pairs.{name}' overrides no pairs_dir file {name}.yaml. Fix the name, or define a "
                    f"new pair: it needs keys {', '.join(required)} (missing: {', '.join(missing)}) under 'pairs.{name}'"
                    f" or in <pairs_dir>/{name}.yaml")
        return f"pair '{name}' lacks {', '.join(missing)} (config key 'pairs.{name}'; a pair needs {', '.join(required)})"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        renamed = [k for k in extra if RENAMED_KEYS.get(k) in allowed]
        if renamed:
            old, new = renamed[0], RENAMED_KEYS[renamed[0]]
            return (f"config key '{'.'.join([*path, old])}' was renamed to '{new}': write "
                    f"'{'.'.join([*path, new])}' (the same entries)")
        unknown = extra[0] if extra else "?"
        full = ".".join([*path, str(unknown)])
        return (f"unknown config key '{full}' ('{unknown}' was unexpected{_close(unknown, allowed)}); allowed "
                f"under {where}: {', '.join(allowed) or 'none'}")
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in (error.instance or {})]
        return f"{where} lacks {', '.join(missing)} (required: {', '.join(error.validator_value)})"
    if error.validator == "enum":
        options = ", ".join(str(v) for v in error.validator_value)
        return f"{where} = {_short(error.instance)}: must be one of {options}"
    if error.validator == "type":
        return f"{where} = {_short(error.instance)}: must be of type {error.validator_value}"
    reason = " ".join(str(error.message).split())
    if len(reason) > 200:
        reason = reason[:200] + " ..."
    return f"{where} = {_short(error.instance)}: {reason}"


def check_names(config: dict) -> None:
    """Pair/UDA/translator names are well formed and every ``<uda>_<translator>`` splits one way."""
    for name in config.get("pairs", {}):
        if not PAIR_NAME.match(str(name)):
            raise ConfigError(f"config key 'pairs.{name}': pair names are letters and digits only "
                              "(no '_', which separates <pair>_<uda>_<translator> in target names)")
    for section in ("uda", "translators"):
        for name in config.get(section, {}):
            if not METHOD_NAME.match(str(name)):
                raise ConfigError(f"config key '{section}.{name}': names are lower-case words joined by '_'")
    for uda in config["uda"]:
        for translator in config["translators"]:
            splits = _splits(f"{uda}_{translator}", config)
            if len(splits) > 1:
                raise ConfigError(f"names 'uda.{uda}' and 'translators.{translator}' are ambiguous: "
                                  f"'{uda}_{translator}' splits as {splits}; rename one")


def _splits(combo: str, config: dict) -> list[tuple[str, str]]:
    return [(u, combo[len(u) + 1:]) for u in config["uda"]
            if combo.startswith(u + "_") and combo[len(u) + 1:] in config["translators"]]


def parse_combo(combo: str, config: dict) -> tuple[str, str]:
    """``'<uda>_<translator>'`` -> (uda, translator); a clear error for unknown names."""
    splits = _splits(combo, config)
    if len(splits) == 1:
        return splits[0]
    udas = ", ".join(config["uda"])
    translators = ", ".join(config["translators"])
    raise ConfigError(f"'{combo}' is not <uda>_<translator> with uda one of [{udas}] (config key 'uda') and "
                      f"translator one of [{translators}] (config key 'translators'); targets are "
                      "results/<pair>_<uda>_<translator>.csv, e.g. results/minicity_bdl_semst.csv")


def parse_target(target: str, config: dict) -> tuple[str, str, str]:
    """``'minicity_bdl_semst'`` or ``'results/minicity_bdl_semst.csv'`` -> (pair, uda, translator)."""
    stem = Path(target).name
    stem = stem[:-4] if stem.endswith(".csv") else stem
    pair, _, combo = stem.partition("_")
    pair_spec(config, pair)
    uda, translator = parse_combo(combo, config)
    return pair, uda, translator


def pair_spec(config: dict, pair: str) -> dict:
    """The merged settings of ``pair``; a clear error naming where pairs are defined."""
    try:
        return config["pairs"][pair]
    except KeyError:
        known = ", ".join(sorted(config["pairs"])) or "none"
        raise ConfigError(f"pair '{pair}' is not defined (defined: {known}): add "
                          f"{config['pairs_dir']}/{pair}.yaml (config key 'pairs_dir') or "
                          f"config key 'pairs.{pair}'") from None


def method_spec(config: dict, section: str, name: str) -> dict:
    """Settings of ``uda.<name>`` / ``translators.<name>``; planned methods are refused up front."""
    try:
        spec = config[section][name]
    except KeyError:
        raise ConfigError(f"{section} '{name}' is unknown (config key '{section}': {', '.join(config[section])})") from None
    if spec["status"] != "implemented":
        raise ConfigError(f"{section} '{name}' is planned but not implemented yet (config key "
                          f"'{section}.{name}.status' = {spec['status']!r}); choose one of: "
                          + ", ".join(n for n, s in config[section].items() if s["status"] == "implemented"))
    return spec


def check_combination(config: dict, pair: str, uda: str, translator: str) -> None:
    """Refuse combinations that make no sense before any job runs."""
    pair_spec(config, pair)
    u = method_spec(config, "uda", uda)
    t = method_spec(config, "translators", translator)
    if not u["uses_source"] and t["method"] != "none":
        raise ConfigError(f"uda '{uda}' trains on target labels only (config key 'uda.{uda}.uses_source' is false), "
                          f"so a translator is pointless: request results/{pair}_{uda}_none.csv")
    wanted = u["translator_direction"]
    if t["method"] != "none" and translator_direction(t) != wanted:
        fitting = [n for n, s in config["translators"].items() if s["method"] == "none"
                   or (translator_direction(s) == wanted and s["status"] == "implemented")]
        raise ConfigError(f"uda '{uda}' consumes {wanted} translations (config key 'uda.{uda}.translator_direction') "
                          f"but translator '{translator}' is {translator_direction(t)} (config key "
                          f"'translators.{translator}.direction'); choose one of: {', '.join(fitting)}")
    if u["round_labels"] == "warmup":
        from wflib.stages import METHODS  # here: stages is not needed by most of this module's users

        if not (u["pseudo_labels"] and u["multi_round"]):
            raise ConfigError(f"config key 'uda.{uda}.round_labels' is 'warmup' but uda '{uda}' trains on no offline "
                              f"pseudo-labels in later rounds ('uda.{uda}.pseudo_labels' and 'uda.{uda}.multi_round' "
                              f"must both be true); remove the key or use 'previous'")
        if uda in METHODS:
            raise ConfigError(f"config key 'uda.{uda}.round_labels' is 'warmup' but '{uda}' is a multi-stage method "
                              f"whose stages set their own inputs (workflow/lib/wflib/stages.py); use 'previous'")
    guide = t["guide"]
    if guide:
        g_uda, g_translator = parse_combo(guide, config)
        if method_spec(config, "translators", g_translator)["guide"]:
            raise ConfigError(f"config key 'translators.{translator}.guide' = {guide!r}: the guide's translator "
                              f"'{g_translator}' needs a guide itself; use an unguided one, e.g. source_only_none")
        check_combination(config, pair, g_uda, g_translator)


def translator_direction(spec: dict) -> str:
    """``source_to_target`` (refines the source set) or ``target_to_source`` (refines the target set)."""
    return spec["direction"]


def dataset_table(config: dict) -> dict[str, dict]:
    """Prepared dataset name -> {format, raw, minicity (root or None), presets}; one raw root per name."""
    table: dict[str, dict] = {}
    for pair, spec in config["pairs"].items():
        minicity = spec.get("minicity")
        for role in ("source", "target"):
            ds = spec[role]
            fmt = ds["format"]
            raw = ds.get("raw")
            if raw is None:
                if not minicity:
                    raise ConfigError(f"config key 'pairs.{pair}.{role}.raw' is missing: give the dataset root "
                                      f"(layout <raw>/{{{', '.join(EXPECTED_LAYOUT[fmt])}}}) or generate it with 'pairs.{pair}.minicity'")
                raw = f"{minicity['root']}/{MINICITY_SUBDIR[fmt]}"
            generated = bool(minicity) and Path(raw).parent == Path(minicity["root"])
            entry = {"format": fmt, "raw": str(raw), "minicity": minicity["root"] if generated else None,
                     "presets": {spec["preset"]}, "pairs": [pair], "keys": [f"pairs.{pair}.{role}.raw"]}
            old = table.get(ds["name"])
            if old is None:
                table[ds["name"]] = entry
            elif (old["format"], old["raw"]) != (entry["format"], entry["raw"]):
                raise ConfigError(f"prepared dataset '{ds['name']}' is defined twice differently: pairs "
                                  f"{old['pairs']} use format={old['format']} raw={old['raw']}, config key "
                                  f"'pairs.{pair}.{role}' uses format={fmt} raw={raw}; give one of them another 'name'")
            else:
                old["presets"] |= entry["presets"]
                old["pairs"].append(pair)
                old["keys"] += entry["keys"]
    return table


def minicity_table(config: dict) -> dict[str, dict]:
    """minicity root -> generator arguments; pairs sharing a root must agree."""
    roots: dict[str, dict] = {}
    for pair, spec in config["pairs"].items():
        mc = spec.get("minicity")
        if not mc:
            continue
        root = str(mc["root"])
        if not root.startswith("data/raw/") or "/" in root[len("data/raw/"):]:
            raise ConfigError(f"config key 'pairs.{pair}.minicity.root' = {root!r}: must be data/raw/<name>")
        args = mc["args"]
        if root in roots and roots[root]["args"] != args:
            raise ConfigError(f"minicity root {root} is generated with different arguments by pairs "
                              f"{roots[root]['pairs']} and '{pair}' (config key 'pairs.{pair}.minicity.args')")
        roots.setdefault(root, {"args": args, "pairs": []})["pairs"].append(pair)
    return roots


def check_raw_root(name: str, entry: dict, workdir: Path) -> None:
    """A real (not generated) raw root must exist with the dataset's top-level folders."""
    if entry["minicity"]:
        return
    raw = Path(entry["raw"])
    raw = raw if raw.is_absolute() else workdir / raw
    expected = EXPECTED_LAYOUT[entry["format"]]
    missing = [sub for sub in expected if not (raw / sub).is_dir()]
    if missing:
        keys = ", ".join(entry["keys"])
        raise ConfigError(
            f"dataset '{name}' ({entry['format']}): raw root {raw} {'does not exist' if not raw.is_dir() else 'lacks ' + ', '.join(missing)}"
            f" (config key {keys}). Expected layout: {_layout_text(entry['format'])}. Put or symlink the dataset "
            "there as it ships, or point the key at it.")


def _layout_text(fmt: str) -> str:
    try:  # the dataset readers document their layout; fall back to the folder list
        import importlib

        module = importlib.import_module(f"domains.{fmt}")
        cls = {"gta5": "GTA5", "synthia": "Synthia", "cityscapes": "Cityscapes"}[fmt]
        return getattr(module, cls).layout
    except Exception:  # noqa: BLE001 - message only
        return "<raw>/" + " and <raw>/".join(EXPECTED_LAYOUT[fmt])


def format_cfg_options(values: dict | None) -> list[str]:
    """``{'loss.lambda_TS': 0, 'semst.multiscale': False, 'init_from': None}`` ->
    ``['loss.lambda_TS=0', 'semst.multiscale=false', 'init_from=None']``: the ``--cfg-options`` items of
    both stage CLIs, which read them back with mmengine's DictAction (domains/cfg_options.py; it knows
    ``None``, not YAML's ``null``)."""
    out = []
    for key, value in (values or {}).items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif value is None:
            text = "None"
        elif isinstance(value, (list, dict)):
            text = yaml.safe_dump(value, default_flow_style=True).strip()
        else:
            text = str(value)
        out.append(f"{key}={text}")
    return out


def cli_flags(values: dict | None) -> list[str]:
    """``{'n_source': 40, 'source_size': '1914x1052'}`` -> ``['--n-source', '40', '--source-size', '1914x1052']``."""
    out: list[str] = []
    for key, value in (values or {}).items():
        flag = "--" + str(key).replace("_", "-")
        if isinstance(value, bool):
            if value:
                out.append(flag)
            continue
        out += [flag, str(value)]
    return out


def join_quoted(items: Iterable[str]) -> str:
    import shlex

    return " ".join(shlex.quote(str(i)) for i in items)
