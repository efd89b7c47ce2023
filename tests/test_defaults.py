"""One source for every default (issue #15 point 2); each test fails when a default is repeated again.

* Workflow: the JSON schema (workflow/schemas/config.schema.yaml) is the only source of the
  workflow's defaults. Validation fills them in, so the rules and wflib index the config; a
  ``.get("<key>", <default>)`` for a key the schema has a default for repeats it.
* Translators: the defaults are translators/config.py's dataclass defaults (+ METHOD_DEFAULTS of a
  method); a translators/configs/*.yaml key must change what the file loads to, else it repeats them.
* config/config.yaml, config/pairs/*.yaml and config/experiments/*.yaml set only what differs from the
  schema's defaults (a few paper values are listed on purpose: SHIPPED_ON_PURPOSE).
* Translator variants (the SemST Table 3 ablations) are ``cfg_options:`` entries of config/config.yaml, the form
  the workflow runs; translators/configs holds one file per method and preset.
* Values shared across components have one definition that the others read: ``--feedback-weight``
  (translators.config.FEEDBACK_WEIGHT), ProDA's pseudo-label threshold (ProDAConfig.threshold), the
  pseudo-label rule's numbers (segmenters.pseudolabel.PseudoLabelRule: functions, CLI flags, the
  schema's ``pseudo_rule``), the flags the inference CLIs share (segmenters.io.add_*_flags).
* Name lists that cannot import each other agree: translator methods (translators.config.METHODS,
  the method registry, the schema enum), segmenter architectures and presets (the CLI's choices,
  segmenters/configs, the schema enums).
"""
from __future__ import annotations

import argparse
import ast
import copy
import fnmatch
import inspect
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow" / "lib"))  # appended: a mutation run puts its mutated wflib first

from translators import config as tconfig  # noqa: E402
from wflib import pipeline_config as wfc  # noqa: E402
from wflib import schema as wfschema  # noqa: E402
from wflib import stage_defaults  # noqa: E402

SCHEMA = wfschema.load_schema()
CONFIGS = REPO / "translators" / "configs"
#: the workflow code that reads the config: the rules and wflib (and the scripts the rules run)
WORKFLOW_CODE = sorted([REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk"),
                        *(REPO / "workflow" / "lib" / "wflib").glob("*.py"), *(REPO / "workflow" / "scripts").glob("*.py")])


# ---------------------------------------------------------------- workflow: the schema alone
def _schema_nodes(node, path=()):
    """Every (path, dict) of the schema."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _schema_nodes(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schema_nodes(value, (*path, i))


def schema_defaults() -> dict[str, list[str]]:
    """Property name -> schema paths where it has a default."""
    out: dict[str, list[str]] = {}
    for path, node in _schema_nodes(SCHEMA):
        properties = node.get("properties")
        if not isinstance(properties, dict):
            continue
        for name, prop in properties.items():
            if isinstance(prop, dict) and "default" in prop:
                out.setdefault(name, []).append("/".join(map(str, (*path, "properties", name))))
    return out


#: ``.get("key", <second argument>)``; the second argument up to the closing parenthesis
GET_WITH_DEFAULT = re.compile(r"""\.get\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*,\s*([^()]*(?:\([^()]*\)[^()]*)*)\)""")
#: ``.get("key") or <fallback>`` and a bare ``.get("key")``
GET_OR = re.compile(r"""\.get\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\)\s*or\b""")
GET_BARE = re.compile(r"""\.get\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*\)""")
#: (file, key) of the bare ``.get("key")`` calls whose absence means something, though a schema key of
#: that name has a default elsewhere
BARE_GET_ALLOWED = {
    ("pipeline_config.py", "pairs_dir"): "before validation: was a pairs_dir given at all?",
    ("pipeline_config.py", "minicity"): "pairs.<pair>.minicity is optional (the default is resources.<preset>.minicity's)",
    ("tables.py", "tables"): "pairs.<pair>.tables is optional (the default is the top-level tables')",
}


def test_workflow_code_repeats_no_schema_default():
    """No ``.get("<key>", <default>)`` in the rules, wflib or the scripts for a key the schema gives a
    default: validation has filled it in (index it), and a second default could disagree. The one
    exception reads the schema's own default before validation (``pairs_dir``, to load the pairs)."""
    keys = schema_defaults()
    assert {"feedback", "feedback_weight", "multi_round", "status", "gpus", "translators", "pairs_dir"} <= set(keys)
    found = []
    for path in WORKFLOW_CODE:
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for m in GET_WITH_DEFAULT.finditer(line):
                key, fallback = m.group(1), m.group(2).strip()
                if key in keys and "default(" not in fallback:  # wflib.schema.default(...): the schema itself
                    found.append(f"{path.relative_to(REPO)}:{lineno}: .get({key!r}, {fallback}) repeats the "
                                 f"schema default at {keys[key][0]}")
            for m in GET_OR.finditer(line):
                if m.group(1) in keys:
                    found.append(f"{path.relative_to(REPO)}:{lineno}: .get({m.group(1)!r}) or ... repeats the "
                                 f"schema default at {keys[m.group(1)][0]}")
            for m in GET_BARE.finditer(line):
                if m.group(1) in keys and (path.name, m.group(1)) not in BARE_GET_ALLOWED:
                    found.append(f"{path.relative_to(REPO)}:{lineno}: .get({m.group(1)!r}) of a key filled in by "
                                 f"validation ({keys[m.group(1)][0]}): index it")
    assert not found, "\n".join(found)


def test_schema_defaults_sit_where_validation_fills_them():
    """snakemake.utils.validate fills a property's ``default`` but does not follow ``$ref`` for it: a
    default inside a referenced ``$defs`` entry would never be filled (and the code would need its own)."""
    defs = SCHEMA["$defs"]
    missed = []
    for path, node in _schema_nodes(SCHEMA):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = defs[ref.split("/")[-1]]
            if "default" in target and "default" not in node:
                missed.append(f"{'/'.join(map(str, path))} -> {ref} (default {target['default']!r})")
    assert not missed, missed


EXPERIMENTS = sorted((REPO / "config" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("overlay", [None, *EXPERIMENTS], ids=lambda p: p.name if p else "config.yaml")
def test_fill_defaults_fills_as_snakemake_does(overlay):
    """wflib.schema.fill_defaults (unit tests, scripts) == snakemake.utils.validate (common.smk)."""
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    if overlay:
        update_config(config, yaml.safe_load(overlay.read_text()))
    wfc.load_pairs(config, REPO, REPO)
    theirs, ours = copy.deepcopy(config), copy.deepcopy(config)
    validate(theirs, str(wfschema.SCHEMA_PATH))
    assert wfschema.fill_defaults(ours) == theirs
    # every method, resource group and tables setting is filled: the code indexes them
    assert all("status" in spec for section in ("uda", "translators") for spec in ours[section].values())
    assert all(set(ours["resources"][p]) == set(SCHEMA["$defs"]["resource_groups"]["properties"]) for p in ("tiny", "paper"))
    assert set(ours["tables"]) == {"per_pair", "translation", "uda", "published"}


#: keys of the shipped configs that equal the schema's default (or, in an experiment, config.yaml's value)
#: but are listed on purpose: (file pattern, dotted key prefix) -> why
SHIPPED_ON_PURPOSE = {
    ("config.yaml", "resources."): "a table of the measured sizes of every rule group, each cell listed",
    ("experiments/paper_*.yaml", "resources.paper."): "threads per process stated beside gpus (multi-GPU layout)",
    ("pairs/gta2cs.yaml", "segmenter.arch"): "the paper's segmenter (DeepLab-V2)",
    ("pairs/gta2cs.yaml", "evaluate.class_set"): "the paper's protocol: 19 classes (beside syn2cs' 16)",
    ("pairs/gta2cs.yaml", "rounds.metric"): "the paper's protocol: mIoU over 19 classes (syn2cs: mIoU16)",
    ("pairs/syn2cs.yaml", "segmenter.arch"): "the paper's segmenter (DeepLab-V2)",
    ("pairs/minicity.yaml", "segmenter.arch"): "the pair's segmenter, named in every pair file",
    ("pairs/minibench.yaml", "segmenter.arch"): "the pair's segmenter, named in every pair file",
}


def _resolved(config: dict, pairs_dir: Path | None = None, overlay: dict | None = None) -> dict:
    """``config`` (+ ``overlay``) with the pairs of ``pairs_dir`` loaded and the schema's defaults filled."""
    from snakemake.utils import update_config

    config = copy.deepcopy(config)
    if overlay:
        update_config(config, copy.deepcopy(overlay))
    if pairs_dir is not None:
        config["pairs_dir"] = str(pairs_dir)
    wfc.load_pairs(config, REPO, REPO)
    config = wfschema.fill_defaults(config)
    config.pop("pairs_dir")
    return config


def _shipped_files():
    root = REPO / "config"
    return [root / "config.yaml", *sorted((root / "pairs").glob("*.yaml")), *EXPERIMENTS]


@pytest.mark.parametrize("path", _shipped_files(), ids=lambda p: str(p.relative_to(REPO / "config")))
def test_shipped_configs_repeat_no_schema_default(path, tmp_path):
    """A key of config/config.yaml, a pair file or an experiment file that can be deleted without
    changing the resolved config (as the Snakefile loads it) repeats the schema's default: delete it
    (or, for a paper value listed on purpose, add it to SHIPPED_ON_PURPOSE)."""
    name = str(path.relative_to(REPO / "config"))
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    own = yaml.safe_load(path.read_text()) or {}
    pairs_dir = tmp_path / "pairs"

    def resolve(data: dict) -> dict:
        if name == "config.yaml":
            return _resolved(data)
        if name.startswith("pairs/"):
            shutil.copytree(REPO / "config" / "pairs", pairs_dir, dirs_exist_ok=True)
            (pairs_dir / path.name).write_text(yaml.safe_dump(data))
            return _resolved(base, pairs_dir)
        return _resolved(base, overlay=data)

    full = resolve(own)
    repeated = []
    for key in _leaves(own):
        if any(fnmatch.fnmatch(name, n) and key.startswith(prefix) for n, prefix in SHIPPED_ON_PURPOSE):
            continue
        try:
            same = resolve(_without(own, key)) == full
        except Exception:  # noqa: BLE001 - a required key (invalid without it) is not a repeat
            same = False
        if same:
            repeated.append(key)
    assert not repeated, f"config/{name} repeats schema defaults: {repeated}; delete them"


def test_shipped_on_purpose_keys_exist():
    """Each exception of SHIPPED_ON_PURPOSE still names a key of its files."""
    for pattern, prefix in SHIPPED_ON_PURPOSE:
        paths = sorted((REPO / "config").glob(pattern))
        assert paths, pattern
        for path in paths:
            assert any(k.startswith(prefix) for k in _leaves(yaml.safe_load(path.read_text()))), (path.name, prefix)


def test_fill_defaults_of_a_part_and_the_defaults_it_reads():
    assert wfschema.fill_defaults({"gpus": 2}, "#/$defs/resource") == {"gpus": 2, "threads": 1, "mem_mb": 2000,
                                                                       "runtime": 60, "nodes": 1}
    spec = wfschema.fill_defaults({"method": "semst"}, "#/$defs/translator")
    assert spec["feedback"] is False and spec["feedback_weight"] is None and spec["status"] == "implemented"
    assert wfschema.default("pairs_dir") == "config/pairs"
    with pytest.raises(KeyError):
        wfschema.default("pairs")  # no default: absence is meaningful
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):
        wfschema.fill_defaults({"gpus": 0}, "#/$defs/resource")


# ---------------------------------------------------------------- translators: dataclass + METHOD_DEFAULTS
def _leaves(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _without(data: dict, key: str) -> dict:
    out = copy.deepcopy(data)
    node = out
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    return out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_translator_yaml_lists_only_what_differs(path, tmp_path):
    """Every key of a translator YAML changes what it loads to: a key equal to the dataclass default
    (with the method's METHOD_DEFAULTS) or, for a ``_base_`` file, to the base's value repeats it.
    Each variant without one key is written beside a copy of the configs and loaded as the file is
    (mmengine's reader, ``_base_`` chain included)."""
    own = yaml.safe_load(path.read_text())
    shutil.copytree(CONFIGS, tmp_path, dirs_exist_ok=True)  # the _base_ files, by their relative names
    full = tconfig.load_config(path).to_dict()
    repeated = []
    for key in _leaves(own):
        if key in ("method", "_base_"):
            continue
        data = _without(own, key)
        data.setdefault("method", full["method"])
        variant = tmp_path / f"without_{key}_{path.name}"
        variant.write_text(yaml.safe_dump(data))
        if tconfig.load_config(variant).to_dict() == full:
            repeated.append(key)
    assert not repeated, (f"{path.name} repeats defaults (translators/config.py or its _base_): {repeated}; "
                          "delete them from the YAML")


def test_method_defaults_differ_from_the_dataclass_defaults():
    plain = tconfig.TranslatorConfig()
    for method, values in tconfig.METHOD_DEFAULTS.items():
        assert method in tconfig.METHODS
        for key, value in values.items():
            assert plain.get(key) != value, f"METHOD_DEFAULTS[{method!r}][{key!r}] repeats the dataclass default"


def test_feedback_weight_has_one_source():
    """translators train --feedback-weight defaults to translators.config.FEEDBACK_WEIGHT; the workflow's
    key defaults to null (= that value, written into the command) and common.smk holds no number."""
    from translators.__main__ import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["train"]._actions if a.dest == "feedback_weight")
    assert action.default == tconfig.FEEDBACK_WEIGHT
    assert SCHEMA["$defs"]["translator"]["properties"]["feedback_weight"]["default"] is None
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert "FEEDBACK_WEIGHT if weight is None else weight" in common
    assert not re.search(r"feedback.weight\D{0,40}0\.1\b", common)


def test_proda_threshold_has_one_source():
    """ProDAConfig.threshold; the workflow reads it from the source (no torch at plan time)."""
    from segmenters.uda.proda_parts import ProDAConfig, hard_pseudo_labels

    assert stage_defaults.proda_threshold(REPO) == ProDAConfig.threshold
    assert inspect.signature(hard_pseudo_labels).parameters["threshold"].default == ProDAConfig.threshold
    from wflib import stages as wfs  # ProDA's stages as data: the threshold is a value read from the source

    assert wfs.read_values(wfs.PRODA, REPO) == {"threshold": ProDAConfig.threshold}
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert "wfs.read_values(method, REPO)" in common
    for path in [*(REPO / "workflow" / "rules").glob("*.smk"), REPO / "workflow" / "lib" / "wflib" / "stages.py"]:
        assert str(ProDAConfig.threshold) not in path.read_text(), f"{path.name} repeats ProDA's threshold"


#: the pseudo-label settings (PseudoLabelRule's fields) and their flags
PSEUDO_FIELDS = ("rule", "threshold", "percentile", "cap", "flip")


def _literal_defaults(path: Path, names: tuple[str, ...], flags: tuple[str, ...]) -> list[str]:
    """Where ``path`` gives a parameter in ``names`` a literal default (``def f(cap=0.9)``) or an
    ``add_argument`` of ``flags`` a literal ``default=``: a second definition of the number."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            found += [f"{path.name}:{d.lineno}: {node.name}({a.arg}={ast.unparse(d)})" for a, d in pairs
                      if a.arg in names and isinstance(d, ast.Constant)]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in flags):
            flag = node.args[0].value
            found += [f"{path.name}:{k.value.lineno}: add_argument({flag!r}, default={ast.unparse(k.value)})"
                      for k in node.keywords if k.arg == "default" and isinstance(k.value, ast.Constant)]
    return found


def test_pseudolabel_rule_has_one_source():
    """BDL's numbers (median, cap 0.9) and the fixed threshold are PseudoLabelRule's defaults; the
    functions, the CLI flags and the workflow schema's ``pseudo_rule`` take them from there, and the
    segmenter configs hold no unused copy (``uda.pseudo_threshold``)."""
    from segmenters import pseudolabel as pl

    rule = pl.PseudoLabelRule()
    args = pl.build_parser().parse_args(["--checkpoint", "c", "--target", "t", "--out", "o"])
    assert {f: getattr(args, f) for f in PSEUDO_FIELDS} == {f: getattr(rule, f) for f in PSEUDO_FIELDS}
    assert (rule.rule, rule.percentile, rule.cap) == ("bdl", 50.0, 0.9)       # BDL SSL.py
    action = next(a for a in pl.build_parser()._actions if a.dest == "rule")
    assert tuple(action.choices) == pl.RULES
    assert rule.flip is False                                                  # SSL.py: no test-time flip
    for fn, names in ((pl.class_thresholds, PSEUDO_FIELDS[:4]), (pl.generate, PSEUDO_FIELDS), (pl.predict_pass, ("flip",))):
        params = inspect.signature(fn).parameters
        assert {f: params[f].default for f in names} == {f: getattr(rule, f) for f in names}, fn
    assert not _literal_defaults(REPO / "segmenters" / "pseudolabel.py", PSEUDO_FIELDS,
                                 tuple(f"--{f}" for f in PSEUDO_FIELDS))
    schema_rule = SCHEMA["$defs"]["uda"]["properties"]["pseudo_rule"]
    assert schema_rule["default"] == rule.rule and tuple(schema_rule["enum"]) == pl.RULES
    for path in (REPO / "segmenters" / "configs").glob("*.py"):
        assert "pseudo_threshold" not in path.read_text(), f"{path.name}: pseudo-label settings are PseudoLabelRule's"
    for path in (REPO / "workflow" / "rules").glob("*.smk"):   # the rules pass --rule only
        text = path.read_text()
        assert "--percentile" not in text and "--cap" not in text, path.name


#: the flags of the inference CLIs defined once in segmenters/io.py (add_input_flags, add_runtime_flags)
SHARED_FLAGS = ("--checkpoint", "--target", "--split", "--out", "--batch-size", "--workers", "--device", "--no-amp")


def test_inference_clis_share_their_flags():
    """evaluate, pseudolabel and prototypes take their common flags from segmenters.io; none adds one itself."""
    import importlib

    runtime = {}
    for name in ("evaluate", "pseudolabel", "prototypes"):
        path = REPO / "segmenters" / f"{name}.py"
        tree = ast.parse(path.read_text())
        own = [c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
               and c.func.attr == "add_argument" and c.args and isinstance(c.args[0], ast.Constant)]
        assert not set(own) & set(SHARED_FLAGS), f"{path.name} adds {sorted(set(own) & set(SHARED_FLAGS))} itself"
        actions = {a.option_strings[0]: a for a in importlib.import_module(f"segmenters.{name}").build_parser()._actions
                   if a.option_strings}
        assert set(SHARED_FLAGS) <= set(actions), name
        assert all(actions[f].required for f in ("--checkpoint", "--target", "--out"))
        runtime[name] = [(actions[f].default, actions[f].help) for f in SHARED_FLAGS[4:]]
    assert runtime["evaluate"] == runtime["pseudolabel"] == runtime["prototypes"]
    from segmenters import prototypes

    params = inspect.signature(prototypes.generate).parameters
    args = prototypes.build_parser().parse_args(["--checkpoint", "c", "--target", "t", "--out", "o"])
    assert (args.soft_scale, args.min_pixels) == (params["soft_scale"].default, params["min_pixels"].default)
    assert not _literal_defaults(REPO / "segmenters" / "prototypes.py", ("soft_scale", "min_pixels"),
                                 ("--soft-scale", "--min-pixels"))


def test_literal_default_reads_only_literals(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("class C:\n    a: float = 0.5\n    b: int = len('x')\n")
    assert stage_defaults.literal_default(src, "C", "a") == 0.5
    with pytest.raises(ValueError, match="literal"):
        stage_defaults.literal_default(src, "C", "b")
    with pytest.raises(LookupError):
        stage_defaults.literal_default(src, "C", "c")


# ---------------------------------------------------------------- names that must agree
def test_translator_variants_are_config_entries_only():
    """translators/configs holds one config per method and preset (the --config of the workflow's jobs);
    variants such as the SemST Table 3 ablations are ``translators.<name>.cfg_options`` entries of
    config/config.yaml (what the DAG runs), never a second YAML."""
    presets = SCHEMA["$defs"]["pair"]["properties"]["preset"]["enum"]
    expected = {f"{method}_{preset}.yaml" for method in tconfig.METHODS for preset in presets}
    assert {p.name for p in CONFIGS.glob("*.yaml")} == expected
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    ablations = {name for name, spec in config["translators"].items() if spec.get("cfg_options")}
    assert {"semst_noms", "semst_nohdce", "semst_ts0", "semst_ts1", "semst_ts2"} <= ablations


def test_translator_method_names_agree():
    from translators.methods import LAZY_METHODS, METHODS

    schema_enum = SCHEMA["$defs"]["translator"]["properties"]["method"]["enum"]
    assert set(tconfig.METHODS) == set(METHODS) | set(LAZY_METHODS) == set(schema_enum) - {"none"}
    presets = SCHEMA["$defs"]["pair"]["properties"]["preset"]["enum"]
    for method in tconfig.METHODS:  # every method has a config at every preset the workflow may ask for
        for preset in presets:
            assert (CONFIGS / f"{method}_{preset}.yaml").is_file(), f"{method}_{preset}.yaml"
            assert tconfig.load_config(CONFIGS / f"{method}_{preset}.yaml").method == method


def test_segmenter_arch_and_preset_choices_agree():
    from wflib.validate import segmenter_configs

    configs = segmenter_configs(REPO)  # segmenters/configs (no torch)
    schema_arch = SCHEMA["$defs"]["pair"]["properties"]["segmenter"]["properties"]["arch"]["enum"]
    schema_presets = SCHEMA["$defs"]["pair"]["properties"]["preset"]["enum"]
    assert list(configs.ARCH_FILES) == schema_arch and set(configs.PRESETS) == set(schema_presets)
    for arch in configs.ARCH_FILES:
        for preset in configs.PRESETS:
            assert configs.config_path(arch, preset).is_file()
    from segmenters.train import build_parser

    actions = {a.dest: a for a in build_parser()._actions}
    assert list(actions["arch"].choices) == schema_arch
    assert list(actions["preset"].choices) == list(configs.PRESETS)


#: the same --cfg-options text, one per kind of value, at a segmenter key and a translator key of that kind
SAME_TEXT = [("7", 7, "max_iters", "train.iters"), ("1e-4", 1e-4, "optim_wrapper.optimizer.lr", "train.lr"),
             ("0.5", 0.5, "uda.lambda_pseudo", "loss.lambda_TS"), ("false", False, "amp", "data.flip"),
             ("True", True, "amp", "data.flip"), ("None", None, "init_from", "refine.tile"),
             ("[64,128]", [64, 128], "crop_size", "loss.nce_layers"),
             ("[0, 4]", [0, 4], "crop_size", "loss.nce_layers"),
             ("cpu", "cpu", "init_from", "train.device"), ("'cpu'", "cpu", "init_from", "train.device")]


def test_both_stage_clis_read_cfg_options_alike():
    """One override syntax: `segmenters train` and `translators train|config` declare --cfg-options alike
    (KEY=VALUE ..., repeatable) and type each value alike (domains/cfg_options.py, mmengine's DictAction):
    int, float, bool, None, list and string give the same Python value in both configs."""
    from domains import cfg_options
    from segmenters.configs import load_config as load_segmenter_config
    from segmenters.train import build_parser
    from translators.__main__ import _parser

    seg_argv = ["--arch", "fcn8s", "--uda", "bdl", "--source", "s", "--target", "t", "--work-dir", "w"]
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    items = [f"{seg}={text}" for text, _, seg, _ in SAME_TEXT]
    for parser, argv in ((build_parser(), seg_argv), (sub.choices["train"], ["--config", "c", "--out", "o"]),
                         (sub.choices["config"], ["--config", "c"])):
        action = next(a for a in parser._actions if "--cfg-options" in a.option_strings)
        assert (action.dest, action.nargs, action.metavar) == ("cfg_options", "+", "KEY=VALUE")
        args = parser.parse_args([*argv, "--cfg-options", *items[:2], "--cfg-options", *items[2:]])
        assert args.cfg_options == items  # repeated flags add up, in order
        assert parser.parse_args(argv).cfg_options is None
    for text, want, seg_key, tr_key in SAME_TEXT:
        assert cfg_options.parse_cfg_options([f"k={text}"]) == {"k": want}
        seg = load_segmenter_config("deeplabv2", "tiny", [f"{seg_key}={text}"]).to_dict()
        for part in seg_key.split("."):
            seg = seg[part]
        tr = tconfig.load_config(CONFIGS / "cut_tiny.yaml", [f"{tr_key}={text}"]).get(tr_key)
        assert seg == want and type(seg) is type(want), (text, seg_key, seg)
        assert tr == want and type(tr) is type(want), (text, tr_key, tr)


def test_translators_set_is_a_deprecated_alias_of_cfg_options(capsys, caplog):
    """Old command lines keep working: --set KEY=VALUE (hidden from --help) joins --cfg-options, with one warning."""
    from translators.__main__ import _parser, main

    path = str(REPO / "translators/configs/semst_paper.yaml")
    assert main(["config", "--config", path, "--cfg-options", "train.iters=7", "semst.multiscale=false"]) == 0
    new = capsys.readouterr().out
    with caplog.at_level("WARNING"):
        assert main(["config", "--config", path, "--set", "train.iters=7", "--set", "semst.multiscale=false"]) == 0
    assert capsys.readouterr().out == new
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "--set is deprecated, use --cfg-options" in warnings[0], warnings
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, required in (("train", ["--config", "c", "--out", "o"]), ("config", ["--config", "c"])):
        parser = sub.choices[name]
        assert "--set" not in parser.format_help() and "--cfg-options" in parser.format_help()
        args = parser.parse_args([*required, "--set", "a=1", "--cfg-options", "b=2", "c=3", "--set", "d=4"])
        assert args.cfg_options == ["a=1", "b=2", "c=3", "d=4"] and args.deprecated_set  # in command-line order


def test_translators_config_prints_the_resolved_config(capsys):
    """The YAMLs list only differences; `python -m translators config` shows everything a run uses."""
    from translators.__main__ import main
    from translators.config import load_config

    path = str(REPO / "translators/configs/semst_paper.yaml")
    assert main(["config", "--config", path, "--cfg-options", "train.iters=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == load_config(path, ["train.iters=7"]).to_dict()
    assert (shown["loss"]["lambda_TS"], shown["loss"]["contrastive"], shown["data"]["global_crop"],
            shown["train"]["iters"]) == (2.0, "hdce", 512, 7)          # SemST's paper settings + the override
    assert main(["config", "--config", path, "--cfg-options", "loss.lambda_TZ=1"]) == 2
