# Config loading, validation, names, paths and input functions shared by every rule file.
# Only functions live here (no rules); the logic that is worth testing is in workflow/lib/wflib.
# Defaults: validation fills in every default of workflow/schemas/config.schema.yaml, the one
# source of them (wflib/schema.py); below, config keys are indexed, never `.get(key, default)`
# (tests/test_defaults.py). `.get` is left for keys whose absence means something.
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
sys.path.insert(1, str(REPO))  # domains (wflib imports its shared helpers)

from wflib import distributed as wfd  # noqa: E402
from wflib import pipeline_config as wfc  # noqa: E402
from wflib import rule_parts as wfr  # noqa: E402
from wflib import report_sections as wfrs  # noqa: E402
from wflib import stages as wfs  # noqa: E402
from wflib import validate as wfv  # noqa: E402
from wflib.codehash import code_hash  # noqa: E402
from wflib.rounds import decide  # noqa: E402
from translators.config import FEEDBACK_WEIGHT  # noqa: E402  (plain Python: no torch at plan time)

WORKDIR = Path.cwd()


def _config_error(err):
    return WorkflowError(f"Config error: {err}")


def _stop(err):
    """A config error found before the DAG is built: one message naming the key, exit code 2 (no
    Snakemake dump of the schema and config; docs/errors.md). SEMST_DEBUG=1: Snakemake's full report."""
    if wfc.debug_requested():
        raise _config_error(err)
    print(f"Config error: {err}", file=sys.stderr)
    raise SystemExit(2)


def _schema_error(err):
    """The jsonschema ValidationError behind snakemake.utils.validate's WorkflowError, if any."""
    import jsonschema

    return next((e for e in (*err.args, err.__context__, err.__cause__)
                 if isinstance(e, jsonschema.exceptions.ValidationError)), None)


try:
    PAIR_FILES = wfc.pair_file_names(config, WORKDIR, REPO)
    wfc.load_pairs(config, WORKDIR, REPO)
except wfc.ConfigError as err:
    _stop(err)
try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as err:
    invalid = _schema_error(err)
    if invalid is None or wfc.debug_requested():
        raise
    _stop(wfc.schema_error_message(invalid, PAIR_FILES))
try:
    wfd.check_resources(config["resources"])
except wfd.DistConfigError as err:
    _stop(err)
try:
    wfc.check_names(config)
    DATASETS = wfc.dataset_table(config)
    MINICITY = wfc.minicity_table(config)
    # every --cfg-options the jobs would get, through the CLIs' own config loaders
    wfv.check_overrides(config, REPO)
except wfc.ConfigError as err:
    _stop(err)

PYTHON = wfc.job_interpreter(config["python"], sys.executable)  # one spelling: python / python3
RESUMABLE = str(REPO / "workflow" / "scripts" / "resumable.py")
# Where the interpreter, the launcher and the repository live is this machine's business: it goes
# into the shell prefix as shell variables ($UDA_REPO, $UDA_PYTHON, $UDA_LAUNCHER; wflib.rule_parts),
# never into a job's params, inputs or shell template, which Snakemake records and compares, so a clone
# at another path, another spelling of the interpreter or another venv reruns nothing (docs/pipeline.md,
# "Reruns after code changes"). (shell.prefix is formatted like a shell command: braces doubled.)
SHELL_PREFIX = ("set -euo pipefail; export PYTHONPATH={0}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
                "UDA_REPO={0}; UDA_PYTHON={1}; UDA_LAUNCHER={2}; ").format(
                    *(shlex.quote(str(v)) for v in (REPO, PYTHON, RESUMABLE)))

# Hash of the package sources each stage runs (docs/design.md §3.9): a change in translators/
# reruns translator training, refinement and everything downstream, never data preparation.
# nets/ (the GAN blocks both stages import) counts for every translator and segmenter stage.
CODE = {
    "data": code_hash(REPO, ["domains"]),
    "translate": code_hash(REPO, ["domains", "nets", "translators"]),
    "translate_feedback": code_hash(REPO, ["domains", "nets", "segmenters", "translators"]),
    "refine": code_hash(REPO, ["domains", "nets", "translators"]),
    "segment": code_hash(REPO, ["domains", "nets", "segmenters"]),
    "report": code_hash(REPO, ["workflow/lib/wflib", "domains/labels.py"]),
}

# Resume state the training CLIs leave in their run dir (see wflib.launch).
TRANSLATOR_STATE = wfc.join_quoted(["--state", "checkpoint.pt"])
SEGMENTER_STATE = wfc.join_quoted(["--state", "iter_*.pth", "--state", "last_checkpoint"])

#: values of the multi-stage methods (wflib/stages.py), read from the stage packages' sources without
#: torch: {"proda": {"threshold": ProDAConfig.threshold of segmenters/uda/proda_parts.py}}
STAGE_VALUES = {name: wfs.read_values(method, REPO) for name, method in wfs.METHODS.items()}


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
    "labelset": r"r(?:0|[1-9][0-9]*)(?:_warmup)?",
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


def is_target_to_source(translator):
    """Translators trained target -> source refine the target train split (LDR's T->S CycleGAN)."""
    return wfc.translator_direction(translator_cfg(translator)) == wfc.TARGET_TO_SOURCE


def translation_domains(pair, translator):
    """(from, to) prepared datasets of a translator: its `--source`/`--target`, and what `refine` reads."""
    src, tgt = source_dir(pair), target_dir(pair)
    return (tgt, src) if is_target_to_source(translator) else (src, tgt)


def refined_origin_dir(pair, tag):
    """Prepared dataset a refined set data/refined/<pair>/<tag>/r<k> was translated from."""
    translator = tag if tag in config["translators"] else combo_parts(tag)[1]
    return translation_domains(pair, translator)[0]


def guide_segmenter(pair, translator):
    """Round-0 segmenter that guides round-0 training of a guided translator (SPADE), else None."""
    guide = translator_cfg(translator)["guide"]
    if not guide:
        return None
    uda, guide_translator = combo_parts(guide)
    return segmenter_ckpt(pair, uda, guide_translator, 0)


def translator_config_file(pair, translator):
    """Param `config`: translators/configs/<method>_<preset>.yaml relative to the repository (checked at
    DAG build, not mid-run); the job reads it as "$UDA_REPO"/<it>. Not an input: an input holds its
    path, which differs in every clone, and the file's content is already in the translator's code hash."""
    t = translator_cfg(translator)
    path = wfv.translator_config_path(REPO, t["method"], preset_of(pair))
    if not path.is_file():
        raise WorkflowError(f"Config error: translator '{translator}' (config key 'translators.{translator}.method' = "
                            f"{t['method']!r}) at preset {preset_of(pair)!r} (config key 'pairs.{pair}.preset') needs "
                            f"{path}, which does not exist")
    return path.relative_to(REPO).as_posix()


# ---------------------------------------------------------------- resources
def _res(group, preset):
    """resources.<preset>.<group>, every key filled in (a group left out: the schema's defaults)."""
    return dict(config["resources"][preset][group])


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
    g = pair_cfg(pair)["gpu"]
    return int(preset_of(pair) == "paper" if g is None else g)


def training_gpu(wc):
    return gpu_for(wc.pair)


def _processes(wc, group):
    """(gpus, nodes) of a training job: config keys resources.<preset>.<group>.gpus / .nodes."""
    preset = _preset_of_wildcards(wc)
    try:
        return wfd.processes(_res(group, preset), f"resources.{preset}.{group}")
    except wfd.DistConfigError as err:
        raise _config_error(err)


def train_command(group, package):
    """Param: `<python> -m <package> train`, or its torchrun / srun form for gpus x nodes > 1 (wflib.distributed)."""

    def command(wc):
        gpus, nodes = _processes(wc, group)
        plugin = workflow.executor_plugin
        mode = wfd.launch_mode(plugin.name if plugin is not None else None, gpus, nodes, os.environ)
        try:
            return wfd.train_command(wfr.PYTHON_WORD, package, gpus, nodes, mode,
                                     cpus_per_task=_res(group, _preset_of_wildcards(wc))["threads"])
        except wfd.DistConfigError as err:
            raise _config_error(err)

    return command


def training_resources(group):
    """Resources of a training rule: `gpu` (as before for one process) and, for gpus x nodes > 1, the
    SLURM task geometry (wflib.distributed.job_resources); use as `**training_resources("segment")`."""

    def one(key):
        return lambda wc: wfd.job_resources(*_processes(wc, group), bool(training_gpu(wc)))[key]

    return {key: one(key) for key in wfd.RESOURCE_KEYS}


def job_resources(group, training=False):
    """`resources` of the group's jobs: mem_mb and runtime of resources.<preset>.<group>, and for
    training jobs their GPU / task geometry (training_resources); use as `**job_resources("segment", True)`."""
    out = {"mem_mb": resource(group, "mem_mb"), "runtime": resource(group, "runtime")}
    return {**out, **training_resources(group)} if training else out


# ---------------------------------------------------------------- training rules' shared params
def run_dir(wc, output):
    """Param `out`: the folder of the rule's (first) output, the job's run folder."""
    return os.path.dirname(output[0])


def training_params(group, package, state):
    """The `params` every training job gives the resumable launcher (wflib.rule_parts.resumable_shell),
    that is the training command (or its torchrun / srun form), the resume state files and the run
    folder; each training job adds its own (`code`, `flags`, ...) after them. The interpreter and the
    launcher are the shell prefix's variables, not params (SHELL_PREFIX)."""
    return {"train": train_command(group, package), "state": state, "out": run_dir}


def segmenter_params():
    """`segmenters train --arch/--preset` of the pair (params of every segmenter training rule)."""
    return {"arch": lambda wc: pair_cfg(wc.pair)["segmenter"]["arch"], "preset": lambda wc: preset_of(wc.pair)}


# ---------------------------------------------------------------- paths of each round
def translator_ckpt(pair, uda, translator, k):
    """Translator of round k: round 0 is shared by all UDA methods; later rounds are per method."""
    k = int(k)
    if k == 0 or not translator_cfg(translator)["feedback"]:
        return f"results/runs/{pair}/{translator}/r0/final.pt"
    return f"results/runs/{pair}/{uda}_{translator}/r{k}/translator/final.pt"


def refined_manifest(pair, uda, translator, k):
    """Refined source set that round k trains on (None: raw source images)."""
    if not has_translator(translator):
        return None
    k = int(k)
    if k == 0 or not translator_cfg(translator)["feedback"]:
        return f"data/refined/{pair}/{translator}/r0/manifest.json"
    return f"data/refined/{pair}/{uda}_{translator}/r{k}/manifest.json"


def segmenter_ckpt(pair, uda, translator, k):
    return wfs.SEGMENTER.format(pair=pair, uda=uda, translator=translator, k=k)


def pseudo_meta(pair, uda, translator, j):
    """Pseudo-labels predicted by segmenter j (consumed by round j + 1 in the `previous` order)."""
    return wfs.PSEUDO.format(pair=pair, uda=uda, translator=translator, k=j)


def warmup_order(uda):
    """True when round k >= 1 first trains a warm-up segmenter without labels and self-trains on its
    labels (`uda.<uda>.round_labels: warmup`, BDL's Algorithm 1 with one self-training step)."""
    return uda_cfg(uda)["round_labels"] == "warmup"


def warmup_ckpt(pair, uda, translator, k):
    return wfs.WARMUP_SEGMENTER.format(pair=pair, uda=uda, translator=translator, k=k)


def round_labels(pair, uda, translator, k):
    """meta.json of the pseudo-labels round k >= 1 trains on: round k - 1's segmenter's, or in the
    warm-up order the warm-up segmenter's of round k itself."""
    if warmup_order(uda):
        return wfs.WARMUP_PSEUDO.format(pair=pair, uda=uda, translator=translator, k=k)
    return pseudo_meta(pair, uda, translator, int(k) - 1)


def round_csv(pair, uda, translator, k):
    return f"results/{pair}/{uda}_{translator}/r{k}.csv"


def check_round(pair, uda, translator, k):
    checked(wfc.check_combination, config, pair, uda, translator)
    k = int(k)
    if k > 0 and not uda_cfg(uda)["multi_round"]:
        raise WorkflowError(f"Config error: uda '{uda}' has a single round (config key 'uda.{uda}.multi_round' is "
                            f"false); round r{k} does not exist")
    if k > rounds_of(pair, uda)["max"]:
        key = f"uda.{uda}.rounds.max" if "max" in uda_cfg(uda)["rounds"] else f"pairs.{pair}.rounds.max"
        raise WorkflowError(f"Config error: round r{k} exceeds config key '{key}' = {rounds_of(pair, uda)['max']}")
    return k


def rounds_of(pair, uda):
    """The pair's `rounds` with the method's own `uda.<uda>.rounds` on top (ProDA: a fixed stage schedule)."""
    return {**pair_cfg(pair)["rounds"], **uda_cfg(uda)["rounds"]}


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
    src, tgt = translation_domains(wc.pair, wc.translator)
    inputs = {"src": src, "tgt": tgt}
    guide = guide_segmenter(wc.pair, wc.translator)
    if guide:
        inputs["guide"] = guide
    return inputs


def translator_guide_flags(wc, input):
    """`--feedback-segmenter <guide>` for guided translators' round 0 (SPADE's M is a source-only model)."""
    return wfc.join_quoted(["--feedback-segmenter", input.guide]) if "guide" in input.keys() else ""


def translator_r0_code(wc):
    """Guided translators also depend on the segmenters package (the guide is loaded through it)."""
    return CODE["translate_feedback"] if translator_cfg(wc.translator)["guide"] else CODE["translate"]


def translator_round_input(wc):
    k = check_round(wc.pair, wc.uda, wc.translator, wc.k)
    if not translator_cfg(wc.translator)["feedback"]:
        raise WorkflowError(f"translator '{wc.translator}' takes no feedback: its rounds reuse round 0")
    prev = (f"results/runs/{wc.pair}/{wc.translator}/r0/final.pt" if k == 1
            else f"results/runs/{wc.pair}/{wc.uda}_{wc.translator}/r{k - 1}/translator/final.pt")
    src, tgt = translation_domains(wc.pair, wc.translator)
    return {"prev": prev, "segmenter": segmenter_ckpt(wc.pair, wc.uda, wc.translator, k - 1),
            "src": src, "tgt": tgt}


def segmenter_input(wc, warmup=False):
    """Inputs of round k's segmenter, or with `warmup` of round k's warm-up segmenter (no labels; in the
    warm-up order round k then starts from it when init_from_previous, and trains on its labels)."""
    k = check_round(wc.pair, wc.uda, wc.translator, wc.k)
    u = uda_cfg(wc.uda)
    inputs = {"src": source_dir(wc.pair), "tgt": target_dir(wc.pair)}
    refined = refined_manifest(wc.pair, wc.uda, wc.translator, k)
    if refined:
        inputs["refined"] = refined
    if k > 0 and u["pseudo_labels"] and not warmup:
        inputs["pseudo"] = round_labels(wc.pair, wc.uda, wc.translator, k)
    if k > 0 and pair_cfg(wc.pair)["segmenter"]["init_from_previous"]:
        # warmup with pseudo_labels false is refused by check_round (wflib check_combination)
        inputs["init"] = (warmup_ckpt(wc.pair, wc.uda, wc.translator, k) if warmup_order(wc.uda) and not warmup
                          else segmenter_ckpt(wc.pair, wc.uda, wc.translator, k - 1))
    return inputs


def warmup_input(wc):
    """Round k's warm-up segmenter: only in the warm-up order and from round 1 on."""
    k = check_round(wc.pair, wc.uda, wc.translator, wc.k)
    if k == 0 or not warmup_order(wc.uda):
        raise WorkflowError(f"no warm-up segmenter for round r{k} of '{wc.uda}': one exists from round 1 on when "
                            f"config key 'uda.{wc.uda}.round_labels' is 'warmup'")
    return segmenter_input(wc, warmup=True)


def warmup_pseudolabel_input(wc):
    warmup_input(wc)  # the same refusals
    return {"segmenter": warmup_ckpt(wc.pair, wc.uda, wc.translator, wc.k), "tgt": target_dir(wc.pair)}


def segmenter_flags(wc, input):
    """Optional flags of `segmenters train` for this round (recorded as a param: reruns on change)."""
    k = int(wc.k)
    seg = pair_cfg(wc.pair)["segmenter"]
    flags = []
    if "refined" in input.keys():
        which = "--target-images" if is_target_to_source(combo_parts(f"{wc.uda}_{wc.translator}")[1]) else "--source-images"
        flags += [which, dirname_of(input.refined)]
    if "pseudo" in input.keys():
        flags += ["--pseudo", dirname_of(input.pseudo)]
    if "init" in input.keys():
        flags += ["--init", input.init]
    iters = seg["max_iters"] if k == 0 else (seg["round_iters"] or seg["max_iters"])
    if iters:
        flags += ["--max-iters", str(iters)]
    if seg["val_interval"] is not None:
        flags += ["--val-interval", str(seg["val_interval"])]
    flags += ["--seed", str(seg["seed"] + k)]
    uda_cfg(wc.uda)  # a clear error for an unknown method
    options = wfv.segmenter_overrides(config, wc.pair, wc.uda)
    if options:
        flags += ["--cfg-options", *wfv.cfg_option_items(options)]
    return wfc.join_quoted(flags)


# Multi-stage methods (ProDA; data in wflib/stages.py, rules in workflow/rules/stages.smk): a stage's job
# is the generic round of its method (segmenter_input / segmenter_flags) plus what the stage adds.
def _stage_wc(wc, method, k):
    """Wildcards of round k of the method's combo, for the generic segmenter input/flag functions."""
    from types import SimpleNamespace

    return SimpleNamespace(pair=wc.pair, uda=method.uda, translator=wc.translator, k=str(k))


def _stage_k(stage, wc):
    return wfs.stage_round(stage, wc.get("k") or None)


def stage_train_input(method, stage):
    """segmenter_input of the round (+ the previous round's model as `teacher` for a teacher stage)."""

    def inputs(wc):
        k = _stage_k(stage, wc)
        out = segmenter_input(_stage_wc(wc, method, k))
        if stage.teacher:
            out["teacher"] = segmenter_ckpt(wc.pair, method.uda, wc.translator, k - 1)
        return out

    return inputs


def stage_train_flags(method, stage):
    """segmenter_flags of the round; a teacher stage appends `<teacher_option>=<teacher>` to --cfg-options
    (segmenter_flags puts --cfg-options, a multi-value option, last)."""

    def flags(wc, input):
        text = segmenter_flags(_stage_wc(wc, method, _stage_k(stage, wc)), input)
        if "teacher" in input.keys():
            text = wfs.append_cfg_option(text, shlex.quote(f"{method.teacher_option}={input.teacher}"))
        return text

    return flags


def translator_flags(wc, round_):
    """--iters/--seed/--cfg-options flags of `translators train` (round 0 or a fine-tuning round)."""
    tr = pair_cfg(wc.pair)["translator"]
    iters = tr["iters"] if round_ == 0 else (tr["round_iters"] or tr["iters"])
    flags = []
    if iters:
        flags += ["--iters", str(iters)]
    flags += ["--seed", str(tr["seed"] + round_)]
    if round_ > 0:  # written out also when it is the CLI's default (null), as the jobs always got it
        weight = translator_cfg(wc.translator)["feedback_weight"]
        flags += ["--feedback-weight", str(FEEDBACK_WEIGHT if weight is None else weight)]
    translator_cfg(wc.translator)  # a clear error for an unknown translator
    options = wfv.cfg_option_items(wfv.translator_overrides(config, wc.pair, wc.translator))
    if options:  # a multi-value option: last on the command line, as segmenter_flags puts it
        flags += ["--cfg-options", *options]
    return wfc.join_quoted(flags)


def pseudolabel_input(wc):
    check_round(wc.pair, wc.uda, wc.translator, wc.k)
    return {"segmenter": segmenter_ckpt(wc.pair, wc.uda, wc.translator, wc.k), "tgt": target_dir(wc.pair)}


def pseudolabel_flags(wc):
    spec = pair_cfg(wc.pair)["pseudolabel"]
    flags = ["--split", spec["split"], "--rule", uda_cfg(wc.uda)["pseudo_rule"]]
    flags += wfc.cli_flags(spec["args"])
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
    rounds = rounds_of(pair, uda)
    multi = uda_cfg(uda)["multi_round"]
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
    if uda_cfg(uda)["pseudo_labels"]:
        inputs["figures"] += [round_labels(wc.pair, uda, translator, k).replace("data/pseudo/", "results/plots/")
                              .replace("meta.json", "pseudo.png") for k in range(1, n)]
    return inputs


def uda_stage_name(uda, k):
    """Name of round k for methods whose rounds are different training stages (wflib/stages.py), else ''."""
    method = wfs.METHODS.get(uda)
    return wfs.stage_title(method, k, STAGE_VALUES[uda]) if method else ""


def stage_descriptions(wc, input):
    """One line per round: what the round trained on (becomes the table's 'stage' column)."""
    uda, translator = combo_parts(wc.combo)
    out = []
    n = len(input.rounds) if "rounds" in input.keys() else 0  # 0 while the rounds are still unknown
    for k in range(n):
        refined = refined_manifest(wc.pair, uda, translator, k)
        raw_source = prepared_dir(pair_cfg(wc.pair)["source"]["name"])
        parts = [f"segmenter {segmenter_ckpt(wc.pair, uda, translator, k)}"]
        if uda_stage_name(uda, k):
            parts.insert(0, uda_stage_name(uda, k))
        if refined and is_target_to_source(translator):
            parts += [f"source raw {raw_source}", f"target {dirname_of(refined)}"]
        else:
            parts.append(f"source {dirname_of(refined)}" if refined else f"source raw {raw_source}")
        if k > 0 and uda_cfg(uda)["pseudo_labels"]:
            parts.append(f"pseudo {dirname_of(round_labels(wc.pair, uda, translator, k))}")
        if refined:
            parts.append(f"translator {translator_ckpt(wc.pair, uda, translator, k)}")
            guide = guide_segmenter(wc.pair, translator) if k == 0 else None
            if guide:
                parts.append(f"guided by {guide}")
        out.append("; ".join(parts))
    return out


def _final_table_rounds(job, uda, translator):
    """The round CSVs a final_table job reads (its `rounds` input), in round order."""
    inputs, csvs = set(map(str, job.input)), []
    while round_csv(job.wildcards.pair, uda, translator, len(csvs)) in inputs:
        csvs.append(round_csv(job.wildcards.pair, uda, translator, len(csvs)))
    return csvs


def report_section_errors(dag):
    """One line per report section the configuration asks a final table for that has no file in the job
    graph (wflib/report_sections.py; run by report.smk before `snakemake --report` writes the report)."""
    from snakemake.io import get_flag_value, is_flagged

    category = {}
    for job in dag.jobs:
        for f in (*job.output, *job.input):
            if is_flagged(f, "report"):
                category[str(f)] = get_flag_value(f, "report").category
    errors = []
    for job in sorted(dag.jobs, key=lambda j: str(j.output[0]) if j.output else ""):
        if job.rule.name != "final_table":
            continue
        pair, combo = job.wildcards.pair, job.wildcards.combo
        uda, translator = combo_parts(combo)
        rounds = rounds_of(pair, uda)
        expected = wfrs.final_table_sections(uda, uda_cfg(uda), translator, translator_cfg(translator), rounds["max"])
        present = {category[str(f)] for f in (*job.input, *job.output) if str(f) in category}
        missing = wfrs.missing_sections(expected, present)
        if not missing:
            continue
        csvs = _final_table_rounds(job, uda, translator)
        reason = None
        if csvs:
            scores = [_read_metric(path, rounds["metric"]) for path in csvs]
            reason = decide(len(csvs) - 1, scores, rounds["max"], rounds["min_delta"], uda_cfg(uda)["multi_round"]).reason
        for section in missing:
            errors.append(wfrs.message(f"results/{pair}_{combo}.csv", section, expected[section],
                                       wfrs.why_missing(section, len(csvs), reason)))
    return errors


def report_with_section_check(create_report):
    """Workflow.create_report that first checks the report's sections on the graph it planned
    (report_section_errors; one line per missing section, exit 2). Snakemake has no hook between planning
    and writing a report: its auto_report, looked up when create_report runs, is wrapped for the duration
    of the call only."""

    def create(*args, **kwargs):
        import snakemake.report as smreport

        write = smreport.auto_report

        async def checked(dag, *a, **kw):
            errors = report_section_errors(dag)
            if errors:
                if wfc.debug_requested():
                    raise WorkflowError("\n".join(errors))
                print("\n".join(errors), file=sys.stderr)
                raise SystemExit(2)
            return await write(dag, *a, **kw)

        smreport.auto_report = checked
        try:
            return create_report(*args, **kwargs)
        finally:
            smreport.auto_report = write

    return create


def rounds_param(wc):
    uda, _ = combo_parts(wc.combo)
    r = dict(rounds_of(wc.pair, uda))
    r["multi_round"] = bool(uda_cfg(uda)["multi_round"])
    r["class_set"] = pair_cfg(wc.pair)["evaluate"]["class_set"]
    return r


def default_targets(wc):
    targets = []
    for name in config["targets"]:
        pair, uda, translator = checked(wfc.parse_target, name, config)
        checked(wfc.check_combination, config, pair, uda, translator)
        targets.append(f"results/{pair}_{uda}_{translator}.csv")
    return targets


# ---------------------------------------------------------------- summary tables (tables.smk)
from wflib import compare as wcmp  # noqa: E402
from wflib import tables as wft  # noqa: E402


def table_free_combo():
    """{combo} pattern without the table names (results/<pair>_translation_table.csv and
    results/<pair>_comparison_rounds.csv are no final tables)."""
    names = ("translation_table", "translation_published", "uda_table", "uda_published", *wcmp.COMBO_LIKE_NAMES)
    return r"(?!(?:{})(?![a-z0-9_])){}".format("|".join(names), WILDCARDS["combo"])


def metrics_code():
    """Hash of what the translation-metric rules run (translators.metrics + the segmenter loader)."""
    return code_hash(REPO, ["domains", "nets", "segmenters", "translators/metrics"])


def tables_checked(fn, *args):
    """A wft look-up; a TablesConfigError becomes a WorkflowError that stops DAG building."""
    try:
        return fn(*args)
    except wft.TablesConfigError as err:
        raise WorkflowError(f"Config error: {err}")


def tables_settings(pair):
    pair_cfg(pair)
    return wft.table_settings(config, pair)


def translation_rows(pair):
    return tables_checked(wft.translation_plan, config, pair)


def oracle_segmenter(pair):
    s = tables_settings(pair)["translation"]
    return segmenter_ckpt(pair, s["oracle"], s["reference"], 0)


def translation_fcn_input(wc):
    inputs = {"segmenter": oracle_segmenter(wc.pair), "src": source_dir(wc.pair)}
    if has_translator(wc.translator):
        inputs["refined"] = f"data/refined/{wc.pair}/{wc.translator}/r0/manifest.json"
    return inputs


def translation_fcn_flags(wc, input):
    s = tables_settings(wc.pair)["translation"]
    flags = ["--split", s["split"], "--class-set", str(pair_cfg(wc.pair)["evaluate"]["class_set"]),
             "--translator", wc.translator]
    if "refined" in input.keys():
        flags += ["--images", dirname_of(input.refined)]
    if s["limit"]:
        flags += ["--limit", str(s["limit"])]
    return wfc.join_quoted(flags)


def inception_weights(pair):
    """The configured FID weights file (None: no FID/KID); a missing file stops DAG building."""
    path = tables_settings(pair)["translation"]["inception_weights"]
    if path and not (Path(path) if Path(path).is_absolute() else WORKDIR / path).is_file():
        raise WorkflowError(f"Config error: config key 'tables.translation.inception_weights' = {path!r}: file not "
                            "found. Give pytorch-fid's pt_inception-2015-12-05-6726825d.pth (or torch-fidelity's "
                            "weights-inception-2015-12-05-6726825d.pth), or null to leave FID/KID out")
    return path or None


def translation_fid_input(wc):
    weights = inception_weights(wc.pair)
    if weights is None:
        raise WorkflowError(f"FID/KID of pair '{wc.pair}' need config key 'tables.translation.inception_weights'")
    inputs = {"weights": weights, "src": source_dir(wc.pair), "tgt": target_dir(wc.pair)}
    if has_translator(wc.translator):
        inputs["refined"] = f"data/refined/{wc.pair}/{wc.translator}/r0/manifest.json"
    return inputs


def translation_fid_flags(wc, input):
    s = tables_settings(wc.pair)["translation"]
    fid = s["fid"]
    flags = ["--real-prepared", input.tgt, "--real-split", fid["real_split"], "--kid-subsets", str(fid["kid_subsets"]),
             "--kid-subset-size", str(fid["kid_subset_size"]), "--translator", wc.translator]
    if "refined" in input.keys():
        flags += ["--fake-dir", dirname_of(input.refined)]
    else:
        flags += ["--fake-prepared", input.src, "--fake-split", s["split"]]
    if fid["limit"]:
        flags += ["--fake-limit", str(fid["limit"]), "--real-limit", str(fid["limit"])]
    return wfc.join_quoted(flags)


def translation_table_input(wc):
    names, _ = translation_rows(wc.pair)
    ref = names[0]
    base = f"results/{wc.pair}/translation"
    inputs = {"fcn": [f"{base}/{t}/fcn.csv" for t in names],
              "delta": [f"{base}/{t}/distortion.npy" for t in names if t != ref],
              "heatmaps": [f"results/plots/{wc.pair}/translation/{t}_distortion.png" for t in names if t != ref]}
    if inception_weights(wc.pair):
        inputs["fid"] = [f"{base}/{t}/fid.csv" for t in names]
    return inputs


def translation_table_notes(wc):
    _, notes = translation_rows(wc.pair)
    s = tables_settings(wc.pair)
    if not s["translation"]["inception_weights"]:
        notes = notes + ["FID/KID columns left out: config key 'tables.translation.inception_weights' is null "
                         "(the FID Inception-V3 weights cannot be downloaded here; give the file's path to add them)"]
    return notes


def uda_rows(pair):
    combos, notes = tables_checked(wft.uda_plan, config, pair)
    return combos, notes


def uda_table_input(wc):
    combos, _ = uda_rows(wc.pair)
    for uda, translator in combos:
        checked(wfc.check_combination, config, wc.pair, uda, translator)
    return {"finals": [f"results/{wc.pair}_{u}_{t}.csv" for u, t in combos]}


def published_params(wc, kind):
    p = tables_settings(wc.pair)["published"]
    return {"files": [str(f) for f in p[kind]], "task": p["task"], "same_dataset": bool(p["same_dataset"])}


# ---------------------------------------------------------------- method comparison (compare.smk)
def comparison_rows(pair):
    """(uda, translator) rows of the comparison page: every row of the UDA table plus source-only and
    oracle (the gap-closed references), which come first."""
    combos, _ = uda_rows(pair)
    rows = wcmp.order_rows([("source_only", "none"), ("oracle", "none"), *combos])
    for uda, translator in rows:
        checked(wfc.check_combination, config, pair, uda, translator)
    return rows


def comparison_input(wc):
    return {"finals": [f"results/{wc.pair}_{u}_{t}.csv" for u, t in comparison_rows(wc.pair)]}
