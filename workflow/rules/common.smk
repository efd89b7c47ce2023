# Config loading, validation, names, paths and input functions shared by every rule file.
# Only functions live here (no rules); the logic that is worth testing is in workflow/lib/wflib.
import csv
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO / "workflow" / "lib"))

from wflib import pipeline_config as wfc  # noqa: E402
from wflib.codehash import code_hash  # noqa: E402
from wflib.rounds import decide  # noqa: E402

WORKDIR = Path.cwd()


def _config_error(err):
    return WorkflowError(f"Config error: {err}")


try:
    wfc.load_pairs(config, WORKDIR, REPO)
except wfc.ConfigError as err:
    raise _config_error(err)
validate(config, schema="../schemas/config.schema.yaml")
try:
    wfc.check_names(config)
    DATASETS = wfc.dataset_table(config)
    MINICITY = wfc.minicity_table(config)
except wfc.ConfigError as err:
    raise _config_error(err)

PYTHON = config["python"] or sys.executable
# (shell.prefix is formatted like a shell command: braces doubled)
SHELL_PREFIX = "set -euo pipefail; export PYTHONPATH={}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ".format(shlex.quote(str(REPO)))
RESUMABLE = str(REPO / "workflow" / "scripts" / "resumable.py")

# Hash of the package sources each stage runs (DESIGN.md section 3): a change in translators/
# reruns translator training, refinement and everything downstream, never data preparation.
CODE = {
    "data": code_hash(REPO, ["domains"]),
    "translate": code_hash(REPO, ["domains", "translators"]),
    "translate_feedback": code_hash(REPO, ["domains", "segmenters", "translators"]),
    "refine": code_hash(REPO, ["domains", "translators"]),
    "segment": code_hash(REPO, ["domains", "segmenters"]),
    "report": code_hash(REPO, ["workflow/lib/wflib", "domains/labels.py"]),
}

# Resume state the training CLIs leave in their run dir (see wflib.launch).
TRANSLATOR_STATE = wfc.join_quoted(["--state", "checkpoint.pt"])
SEGMENTER_STATE = wfc.join_quoted(["--state", "iter_*.pth", "--state", "last_checkpoint"])


def _alternatives(names):
    return "|".join(sorted((re.escape(n) for n in names), key=len, reverse=True))


WILDCARDS = {
    "pair": r"[A-Za-z0-9]+",
    "combo": r"[a-z0-9]+(?:_[a-z0-9]+)+",
    "uda": _alternatives(config["uda"]),
    "translator": _alternatives(config["translators"]),
    "k": r"0|[1-9][0-9]*",
    "dataset": r"[A-Za-z0-9_]+",
    "mc": r"[A-Za-z0-9_]+",
    "tag": r"[a-z0-9_]+",
}


# ---------------------------------------------------------------- config look-ups (clear errors)
def checked(fn, *args):
    """Call a wfc look-up; a ConfigError becomes a WorkflowError that stops DAG building."""
    try:
        return fn(*args)
    except wfc.ConfigError as err:
        raise _config_error(err)


def pair_cfg(pair):
    return checked(wfc.pair_spec, config, pair)


def uda_cfg(uda):
    return checked(wfc.method_spec, config, "uda", uda)


def translator_cfg(translator):
    return checked(wfc.method_spec, config, "translators", translator)


def combo_parts(combo):
    return checked(wfc.parse_combo, combo, config)


def has_translator(translator):
    return translator_cfg(translator)["method"] != "none"


def preset_of(pair):
    return pair_cfg(pair)["preset"]


def prepared_dir(name):
    """A prepared dataset is a directory output: `domains prepare` swaps it in atomically when complete."""
    return f"data/prepared/{name}"


def source_dir(pair):
    return prepared_dir(pair_cfg(pair)["source"]["name"])


def target_dir(pair):
    return prepared_dir(pair_cfg(pair)["target"]["name"])


def translator_config_file(pair, translator):
    """translators/configs/<method>_<preset>.yaml (checked at DAG build, not mid-run)."""
    t = translator_cfg(translator)
    path = REPO / "translators" / "configs" / f"{t['method']}_{preset_of(pair)}.yaml"
    if not path.is_file():
        raise WorkflowError(f"Config error: translator '{translator}' (config key 'translators.{translator}.method' = "
                            f"{t['method']!r}) at preset {preset_of(pair)!r} (config key 'pairs.{pair}.preset') needs "
                            f"{path}, which does not exist")
    return str(path)


# ---------------------------------------------------------------- resources
def _res(group, preset):
    spec = {"threads": 1, "mem_mb": 2000, "runtime": 60}
    spec.update(config["resources"][preset].get(group, {}))
    return spec


def _preset_of_wildcards(wc):
    if "pair" in wc.keys():
        return preset_of(wc.pair)
    name = wc.get("dataset") or None
    if name is not None and name in DATASETS:
        return "paper" if "paper" in DATASETS[name]["presets"] else "tiny"
    if "mc" in wc.keys():
        return "tiny"
    return "tiny"


def threads_for(group):
    return lambda wc: _res(group, _preset_of_wildcards(wc))["threads"]


def resource(group, key):
    return lambda wc: _res(group, _preset_of_wildcards(wc))[key]


def gpu_for(pair):
    g = pair_cfg(pair).get("gpu")
    return int(preset_of(pair) == "paper" if g is None else g)


def training_gpu(wc):
    return gpu_for(wc.pair)


# ---------------------------------------------------------------- paths of each round
def translator_ckpt(pair, uda, translator, k):
    """Translator of round k: round 0 is shared by all UDA methods; later rounds are per method."""
    k = int(k)
    if k == 0 or not translator_cfg(translator).get("feedback", False):
        return f"results/runs/{pair}/{translator}/r0/final.pt"
    return f"results/runs/{pair}/{uda}_{translator}/r{k}/translator/final.pt"


def refined_manifest(pair, uda, translator, k):
    """Refined source set that round k trains on (None: raw source images)."""
    if not has_translator(translator):
        return None
    k = int(k)
    if k == 0 or not translator_cfg(translator).get("feedback", False):
        return f"data/refined/{pair}/{translator}/r0/manifest.json"
    return f"data/refined/{pair}/{uda}_{translator}/r{k}/manifest.json"


def segmenter_ckpt(pair, uda, translator, k):
    return f"results/runs/{pair}/{uda}_{translator}/r{k}/final.pth"


def pseudo_meta(pair, uda, translator, j):
    """Pseudo-labels predicted by segmenter j (consumed by round j + 1)."""
    return f"data/pseudo/{pair}/{uda}_{translator}/r{j}/meta.json"


def round_csv(pair, uda, translator, k):
    return f"results/{pair}/{uda}_{translator}/r{k}.csv"


def check_round(pair, uda, translator, k):
    checked(wfc.check_combination, config, pair, uda, translator)
    k = int(k)
    if k > 0 and not uda_cfg(uda).get("multi_round", False):
        raise WorkflowError(f"Config error: uda '{uda}' has a single round (config key 'uda.{uda}.multi_round' is "
                            f"false); round r{k} does not exist")
    if k > pair_cfg(pair)["rounds"]["max"]:
        raise WorkflowError(f"Config error: round r{k} exceeds config key 'pairs.{pair}.rounds.max' = "
                            f"{pair_cfg(pair)['rounds']['max']}")
    return k


def dirname_of(path):
    return os.path.dirname(path) if path else ""


# ---------------------------------------------------------------- input functions
def minicity_args(wc):
    root = f"data/raw/{wc.mc}"
    if root not in MINICITY:
        raise WorkflowError(f"Config error: {root} is not the 'minicity.root' of any pair")
    return wfc.join_quoted(wfc.cli_flags(MINICITY[root]["args"]))


def prepare_input(wc):
    entry = DATASETS.get(wc.dataset)
    if entry is None:
        raise WorkflowError(f"Config error: prepared dataset '{wc.dataset}' is not the source/target 'name' of any pair "
                            f"(known: {', '.join(DATASETS)})")
    checked(wfc.check_raw_root, wc.dataset, entry, WORKDIR)
    return [entry["minicity"]] if entry["minicity"] else []


def translator_r0_input(wc):
    if not has_translator(wc.translator):
        raise WorkflowError("translator 'none' has no training job")
    return {"src": source_dir(wc.pair), "tgt": target_dir(wc.pair),
            "config": translator_config_file(wc.pair, wc.translator)}


def translator_round_input(wc):
    k = check_round(wc.pair, wc.uda, wc.translator, wc.k)
    if not translator_cfg(wc.translator).get("feedback", False):
        raise WorkflowError(f"translator '{wc.translator}' takes no feedback: its rounds reuse round 0")
    prev = (f"results/runs/{wc.pair}/{wc.translator}/r0/final.pt" if k == 1
            else f"results/runs/{wc.pair}/{wc.uda}_{wc.translator}/r{k - 1}/translator/final.pt")
    return {"prev": prev, "segmenter": segmenter_ckpt(wc.pair, wc.uda, wc.translator, k - 1),
            "src": source_dir(wc.pair), "tgt": target_dir(wc.pair),
            "config": translator_config_file(wc.pair, wc.translator)}


def segmenter_input(wc):
    k = check_round(wc.pair, wc.uda, wc.translator, wc.k)
    u = uda_cfg(wc.uda)
    inputs = {"src": source_dir(wc.pair), "tgt": target_dir(wc.pair)}
    refined = refined_manifest(wc.pair, wc.uda, wc.translator, k)
    if refined:
        inputs["refined"] = refined
    if k > 0 and u.get("pseudo_labels", False):
        inputs["pseudo"] = pseudo_meta(wc.pair, wc.uda, wc.translator, k - 1)
    if k > 0 and pair_cfg(wc.pair)["segmenter"]["init_from_previous"]:
        inputs["init"] = segmenter_ckpt(wc.pair, wc.uda, wc.translator, k - 1)
    return inputs


def segmenter_flags(wc, input):
    """Optional flags of `segmenters train` for this round (recorded as a param: reruns on change)."""
    k = int(wc.k)
    seg = pair_cfg(wc.pair)["segmenter"]
    flags = []
    if "refined" in input.keys():
        flags += ["--source-images", dirname_of(input.refined)]
    if "pseudo" in input.keys():
        flags += ["--pseudo", dirname_of(input.pseudo)]
    if "init" in input.keys():
        flags += ["--init", input.init]
    iters = seg["max_iters"] if k == 0 else (seg["round_iters"] or seg["max_iters"])
    if iters:
        flags += ["--max-iters", str(iters)]
    if seg.get("val_interval"):
        flags += ["--val-interval", str(seg["val_interval"])]
    flags += ["--seed", str(seg["seed"] + k)]
    options = {**seg.get("cfg_options", {}), **uda_cfg(wc.uda).get("cfg_options", {})}
    if options:
        flags += ["--cfg-options", *wfc.format_sets(options)]
    return wfc.join_quoted(flags)


def translator_flags(wc, round_):
    """--iters/--seed/--set flags of `translators train` (round 0 or a fine-tuning round)."""
    tr = pair_cfg(wc.pair)["translator"]
    iters = tr["iters"] if round_ == 0 else (tr["round_iters"] or tr["iters"])
    flags = []
    if iters:
        flags += ["--iters", str(iters)]
    flags += ["--seed", str(tr["seed"] + round_)]
    if round_ > 0:
        flags += ["--feedback-weight", str(translator_cfg(wc.translator).get("feedback_weight", 0.1))]
    sets = {**tr.get("set", {}), **translator_cfg(wc.translator).get("set", {})}
    for item in wfc.format_sets(sets):
        flags += ["--set", item]
    return wfc.join_quoted(flags)


def pseudolabel_input(wc):
    check_round(wc.pair, wc.uda, wc.translator, wc.k)
    return {"segmenter": segmenter_ckpt(wc.pair, wc.uda, wc.translator, wc.k), "tgt": target_dir(wc.pair)}


def pseudolabel_flags(wc):
    spec = pair_cfg(wc.pair)["pseudolabel"]
    flags = ["--split", spec["split"], "--rule", uda_cfg(wc.uda).get("pseudo_rule", "bdl")]
    flags += wfc.cli_flags(spec.get("args", {}))
    return wfc.join_quoted(flags)


def evaluate_input(wc):
    check_round(wc.pair, wc.uda, wc.translator, wc.k)
    return {"segmenter": segmenter_ckpt(wc.pair, wc.uda, wc.translator, wc.k), "tgt": target_dir(wc.pair)}


# ---------------------------------------------------------------- rounds (checkpoint loop)
def _read_metric(path, metric):
    with open(path, newline="") as fh:
        row = next(csv.DictReader(fh))
    try:
        return float(row[metric])
    except (KeyError, ValueError):
        raise WorkflowError(f"{path}: no numeric column '{metric}' (config key rounds.metric)")


def completed_rounds(pair, uda, translator):
    """Rounds 0..K of a run: each round's CSV is read (checkpoint) before round k+1 is requested."""
    rounds = pair_cfg(pair)["rounds"]
    multi = uda_cfg(uda).get("multi_round", False)
    scores, k = [], 0
    while True:
        csv_path = checkpoints.evaluate.get(pair=pair, uda=uda, translator=translator, k=k).output.csv
        scores.append(_read_metric(csv_path, rounds["metric"]))
        if not decide(k, scores, rounds["max"], rounds["min_delta"], multi).next_round:
            return k + 1
        k += 1


def final_table_input(wc):
    uda, translator = combo_parts(wc.combo)
    checked(wfc.check_combination, config, wc.pair, uda, translator)
    n = completed_rounds(wc.pair, uda, translator)
    inputs = {"rounds": [round_csv(wc.pair, uda, translator, k) for k in range(n)], "figures": []}
    refined = [refined_manifest(wc.pair, uda, translator, k) for k in range(n)]
    for manifest in dict.fromkeys(r for r in refined if r):  # each refined set once
        inputs["figures"].append(manifest.replace("data/refined/", "results/plots/").replace("manifest.json", "samples.png"))
    if uda_cfg(uda).get("pseudo_labels", False):
        inputs["figures"] += [pseudo_meta(wc.pair, uda, translator, j).replace("data/pseudo/", "results/plots/")
                              .replace("meta.json", "pseudo.png") for j in range(n - 1)]
    return inputs


def stage_descriptions(wc, input):
    """One line per round: what the round trained on (becomes the table's 'stage' column)."""
    uda, translator = combo_parts(wc.combo)
    out = []
    n = len(input.rounds) if "rounds" in input.keys() else 0  # 0 while the rounds are still unknown
    for k in range(n):
        refined = refined_manifest(wc.pair, uda, translator, k)
        raw_source = prepared_dir(pair_cfg(wc.pair)["source"]["name"])
        images = dirname_of(refined) if refined else f"raw {raw_source}"
        parts = [f"segmenter {segmenter_ckpt(wc.pair, uda, translator, k)}", f"source {images}"]
        if k > 0 and uda_cfg(uda).get("pseudo_labels", False):
            parts.append(f"pseudo {dirname_of(pseudo_meta(wc.pair, uda, translator, k - 1))}")
        if refined:
            parts.append(f"translator {translator_ckpt(wc.pair, uda, translator, k)}")
        out.append("; ".join(parts))
    return out


def rounds_param(wc):
    uda, _ = combo_parts(wc.combo)
    r = dict(pair_cfg(wc.pair)["rounds"])
    r["multi_round"] = bool(uda_cfg(uda).get("multi_round", False))
    r["class_set"] = pair_cfg(wc.pair)["evaluate"]["class_set"]
    return r


def default_targets(wc):
    targets = []
    for name in config.get("targets", []):
        pair, uda, translator = checked(wfc.parse_target, name, config)
        checked(wfc.check_combination, config, pair, uda, translator)
        targets.append(f"results/{pair}_{uda}_{translator}.csv")
    return targets
