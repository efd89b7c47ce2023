"""Pieces the training rules share, written once (pure strings; no Snakemake).

Every training rule (``translator_train``, ``translator_finetune``, ``segmenter_train`` and the
training stages of multi-stage methods, workflow/rules/stages.smk) runs its CLI through the
resume-or-restart launcher ``workflow/scripts/resumable.py`` with the same arguments, and writes its
log and benchmark under the same scheme. The rules build their ``shell``, ``log`` and ``benchmark``
from these functions; the config-bound pieces (``params``, ``threads``, ``resources``) are
``training_params``/``job_resources`` in workflow/rules/common.smk.

The shell templates are Snakemake's (``{params.x}``, ``{input}``, ``{log}``), and their text is part of
Snakemake's ``code`` rerun trigger: a change here reruns every training job. tests/test_workflow_stages.py
pins them.
"""
from __future__ import annotations

#: the job's interpreter and the launcher as shell words: variables that the workflow's shell prefix
#: sets (workflow/rules/common.smk, SHELL_PREFIX), so that no template or param holds a path of this
#: machine (Snakemake reruns a job whose params or template changed; a moved clone must not)
PYTHON_WORD = '"$UDA_PYTHON"'
LAUNCHER_WORD = '"$UDA_LAUNCHER"'
#: the launcher part of every training command: run folder, resume state files, run key (code hash and
#: the job's inputs), then the training command after ``--``
RESUMABLE_LAUNCH = (f"{PYTHON_WORD} {LAUNCHER_WORD} --run-dir {{params.out}} {{params.state}} --key {{params.code}}"
                    " --key-input {input} --")
#: ``segmenters train`` of one round; ``{uda}`` is the field that holds the --uda name
SEGMENTER_TRAIN = ("{params.train} --arch {params.arch} --preset {params.preset} --uda {uda}"
                   " --source {input.src} --target {input.tgt} --work-dir {params.out} {params.flags}")
#: ``translators train`` (the options both rounds share)
TRANSLATOR_TRAIN = ('{params.train} --config "$UDA_REPO"/{params.config} --source {input.src} --target {input.tgt}'
                    " --out {params.out}")


def resumable_shell(command: str) -> str:
    """Shell template of a training rule: ``command`` run by the resumable launcher, output to ``{log}``."""
    return f"{RESUMABLE_LAUNCH} {command} > {{log}} 2>&1"


def segmenter_train_shell(uda_field: str = "{wildcards.uda}") -> str:
    """``segmenters train`` through the launcher; ``uda_field``: ``{wildcards.uda}`` (generic rule) or
    ``{params.uda}`` (a stage of a multi-stage method)."""
    return resumable_shell(SEGMENTER_TRAIN.replace("{uda}", uda_field))


def translator_train_shell(extra: str) -> str:
    """``translators train`` through the launcher, with the round's own options ``extra``."""
    return resumable_shell(f"{TRANSLATOR_TRAIN} {extra}")


def log_file(group: str, name: str) -> str:
    """``logs/{pair}/<group>/<name>.log`` (a job of one pair; ``name`` holds the job's wildcards)."""
    return f"logs/{{pair}}/{group}/{name}.log"


def benchmark_file(group: str, name: str) -> str:
    """``results/benchmarks/{pair}/<group>/<name>.tsv``: the job's time and memory."""
    return f"results/benchmarks/{{pair}}/{group}/{name}.tsv"


__all__ = ["LAUNCHER_WORD", "PYTHON_WORD", "RESUMABLE_LAUNCH", "SEGMENTER_TRAIN", "TRANSLATOR_TRAIN", "benchmark_file",
           "log_file", "resumable_shell", "segmenter_train_shell", "translator_train_shell"]
