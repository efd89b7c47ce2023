"""Multi-stage UDA methods as data (docs/design.md §3.2): methods whose rounds are different training stages.

Most UDA methods train every round with the same ``segmenters train --uda <name>`` (rule
``segmenter_train``) and take their pseudo-labels from ``segmenters pseudolabel`` (rule
``pseudolabel``). A *multi-stage* method (ProDA) runs another ``--uda`` per round and may make the
labels between rounds with another CLI. Its stages are described here, as data, and the generic
rule file ``workflow/rules/stages.smk`` expands every entry of :data:`METHODS` into one Snakemake
rule per stage (named :attr:`TrainStage.rule` / :attr:`PseudoStage.rule`), which takes precedence
over the generic rule for that method's paths. No rule file names a method.

What a stage takes from the previous round is the generic part of the DAG: the previous round's
pseudo-labels (``uda.<name>.pseudo_labels``) and segmenter as ``--init``
(``pairs.<pair>.segmenter.init_from_previous``), plus, for a stage with ``teacher=True``, the previous
round's segmenter as ``--cfg-options <teacher_option>=<final.pth>``. A pseudo-label stage reads the
segmenter of its own round and writes ``data/pseudo/<pair>/<uda>_<translator>/r<k>/meta.json``.

Adding a multi-stage method: its ``uda.<name>`` entry in config/config.yaml (``multi_round``,
``pseudo_labels``, ``rounds``) and one :class:`MethodStages` in :data:`METHODS`; every round from 0 on
must belong to exactly one training stage and one pseudo-label stage (:func:`check_method`).
Everything here is pure (no Snakemake); tests/test_workflow_stages.py covers it.
"""
from __future__ import annotations

import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any, Mapping, Sequence

from wflib.stage_defaults import PRODA_PARTS, literal_default

#: paths of one round of a (uda, translator) combination (the generic rules' outputs)
SEGMENTER = "results/runs/{pair}/{uda}_{translator}/r{k}/final.pth"
PSEUDO = "data/pseudo/{pair}/{uda}_{translator}/r{k}/meta.json"
#: round k's warm-up segmenter and its pseudo-labels (``uda.<uda>.round_labels: warmup``, BDL's order)
WARMUP_SEGMENTER = "results/runs/{pair}/{uda}_{translator}/r{k}_warmup/final.pth"
WARMUP_PSEUDO = "data/pseudo/{pair}/{uda}_{translator}/r{k}_warmup/meta.json"
#: the generic rules a training / pseudo-label stage replaces for its method's paths (ruleorder)
GENERIC_RULE = {"train": "segmenter_train", "pseudo": "pseudolabel"}


class StageError(ValueError):
    """A multi-stage method's description is inconsistent (names the method and the stage)."""


@dataclass(frozen=True)
class Rounds:
    """Rounds ``first..last`` of a stage; ``last=None``: every round from ``first`` on."""

    first: int
    last: int | None = None

    @property
    def single(self) -> bool:
        return self.last == self.first

    def __contains__(self, k: int) -> bool:
        return k >= self.first and (self.last is None or k <= self.last)

    @property
    def pattern(self) -> str:
        """The round part of a path: ``r0`` for a single round, else ``r{k}`` (a wildcard)."""
        return f"r{self.first}" if self.single else "r{k}"

    @property
    def constraints(self) -> dict[str, str]:
        """``wildcard_constraints`` of ``{k}``: the rounds from ``first`` on ({} for a single round)."""
        if self.single:
            return {}
        if self.last is not None:
            raise StageError(f"rounds {self.first}..{self.last}: a stage of several rounds must be open-ended")
        return {"k": integers_from(self.first)}


def integers_from(first: int) -> str:
    """Regex of the decimal integers >= ``first`` (no leading zeros); a stage starts at round 0..9."""
    if not 0 <= first <= 9:
        raise StageError(f"a stage starting at round {first}: only rounds 0..9 can start a stage")
    if first == 0:
        return r"0|[1-9][0-9]*"
    if first == 1:
        return r"[1-9][0-9]*"
    return rf"[{first}-9]|[1-9][0-9]+"


@dataclass(frozen=True)
class TrainStage:
    """A training stage: ``segmenters train --uda <uda>`` for the rounds ``rounds``."""

    rule: str  #: Snakemake rule name (also the job name in logs and `-n` output)
    rounds: Rounds
    uda: str  #: ``--uda`` of ``segmenters train`` (segmenters/uda registry)
    title: str  #: the final table's 'stage' text; may use {k}, {prev} and the method's values
    doc: str = ""  #: the rule's docstring
    teacher: bool = False  #: the previous round's segmenter as ``--cfg-options <teacher_option>=...``

    kind = "train"


@dataclass(frozen=True)
class PseudoStage:
    """A pseudo-label stage: ``segmenters <command>`` on the round's segmenter (target train split)."""

    rule: str
    rounds: Rounds
    command: str  #: sub-command of ``python -m segmenters`` (pseudolabel, prototypes)
    args: tuple[str, ...] = ()  #: after ``--split``: may use ``{params.<value>}`` of ``values``
    values: tuple[str, ...] = ()  #: names of the method's values passed to the rule as params
    doc: str = ""

    kind = "pseudo"


@dataclass(frozen=True)
class SourceDefault:
    """A value defined once in a stage package: the literal default of a dataclass field, read with
    :func:`wflib.stage_defaults.literal_default` (no torch at plan time)."""

    path: str  #: relative to the repository
    cls: str
    name: str
    kind: type = float

    def read(self, repo: str | Path) -> Any:
        return self.kind(literal_default(Path(repo) / self.path, self.cls, self.name))


@dataclass(frozen=True)
class MethodStages:
    """Every stage of one multi-stage UDA method (config key ``uda.<uda>``)."""

    uda: str
    train: tuple[TrainStage, ...]
    pseudo: tuple[PseudoStage, ...]
    teacher_option: str | None = None  #: --cfg-options key of a teacher stage's previous segmenter
    values: Mapping[str, SourceDefault] = field(default_factory=dict)  #: settings read from the packages


PRODA = MethodStages(
    uda="proda",
    teacher_option="uda.proda.teacher",
    values={"threshold": SourceDefault(PRODA_PARTS.as_posix(), "ProDAConfig", "threshold")},
    train=(
        TrainStage("proda_warmup", Rounds(0, 0), "proda_warmup",
                   title="ProDA warm-up (source CE + LS-GAN output-space adversarial)",
                   doc="ProDA stage 0 (round 0): source CE + LS-GAN output-space adversarial."),
        TrainStage("proda_stage1", Rounds(1, 1), "proda_stage1", teacher=True,
                   title="ProDA stage 1 (prototype-rectified soft pseudo-labels, EMA teacher)",
                   doc="ProDA stage 1 (round 1): rectified soft pseudo-labels with prototypes, EMA teacher = warm-up model."),
        TrainStage("proda_distill", Rounds(2), "proda_distill", teacher=True,
                   title="ProDA stage {k} (self-distillation from r{prev}, hard pseudo-labels > {threshold})",
                   doc="ProDA stages 2, 3 (rounds k >= 2): hard pseudo-labels + KL self-distillation from segmenter k-1."),
    ),
    pseudo=(
        PseudoStage("proda_prototypes", Rounds(0, 0), "prototypes",
                    doc="Soft pseudo-labels (confidences.h5 soft/<stem>) and initial prototypes (prototypes.h5) "
                        "of the warm-up model."),
        PseudoStage("proda_pseudolabel", Rounds(1), "pseudolabel",
                    args=("--rule", "fixed", "--threshold", "{params.threshold}"), values=("threshold",),
                    doc="Hard pseudo-labels of ProDA segmenter k >= 1 (stage k+1's targets): argmax, confidence "
                        "below ProDA's threshold ignored."),
    ),
)

#: config key ``uda.<name>`` -> its stages (every multi-stage method of the workflow)
METHODS: dict[str, MethodStages] = {m.uda: m for m in (PRODA,)}


# ---------------------------------------------------------------- checks
def _check_cover(method: MethodStages, stages: Sequence[TrainStage | PseudoStage], what: str) -> None:
    expected = 0
    for i, stage in enumerate(sorted(stages, key=lambda s: s.rounds.first)):
        where = f"multi-stage method '{method.uda}': {what} stage '{stage.rule}'"
        if stage.rounds.first != expected:
            raise StageError(f"{where} starts at round {stage.rounds.first}, expected {expected} (every round "
                             f"from 0 on belongs to exactly one {what} stage)")
        if stage.rounds.last is None:
            integers_from(stage.rounds.first)
            if i != len(stages) - 1:
                raise StageError(f"{where} takes every round from {stage.rounds.first} on, but later stages follow")
            return
        if not stage.rounds.single:
            raise StageError(f"{where}: rounds {stage.rounds.first}..{stage.rounds.last}: a stage takes one round "
                             "or every round from its first on")
        expected = stage.rounds.last + 1
    raise StageError(f"multi-stage method '{method.uda}': no {what} stage takes the rounds from {expected} on")


def placeholders(template: str) -> set[str]:
    """Field names of a ``str.format`` template ({params.threshold} -> 'params.threshold')."""
    return {name for _, name, _, _ in Formatter().parse(template) if name}


def check_method(method: MethodStages) -> None:
    """Refuse an inconsistent description (one message naming the method and the stage)."""
    names = [s.rule for s in (*method.train, *method.pseudo)]
    if len(set(names)) != len(names):
        raise StageError(f"multi-stage method '{method.uda}': rule names repeat: {names}")
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in GENERIC_RULE.values():
            raise StageError(f"multi-stage method '{method.uda}': '{name}' cannot be a rule name of its own")
    _check_cover(method, method.train, "training")
    _check_cover(method, method.pseudo, "pseudo-label")
    for stage in method.train:
        if stage.teacher and 0 in stage.rounds:
            raise StageError(f"multi-stage method '{method.uda}': stage '{stage.rule}' takes a teacher at round 0, "
                             "which has no previous round")
        if stage.teacher and not method.teacher_option:
            raise StageError(f"multi-stage method '{method.uda}': stage '{stage.rule}' takes a teacher but the "
                             "method names no teacher_option")
        unknown = placeholders(stage.title) - {"k", "prev", *method.values}
        if unknown:
            raise StageError(f"multi-stage method '{method.uda}': title of '{stage.rule}' uses unknown "
                             f"{sorted(unknown)} (known: k, prev, {', '.join(method.values) or '-'})")
    for stage in method.pseudo:
        missing = set(stage.values) - set(method.values)
        if missing:
            raise StageError(f"multi-stage method '{method.uda}': stage '{stage.rule}' passes unknown values "
                             f"{sorted(missing)}")
        used = {p for a in stage.args for p in placeholders(a)}
        if not used <= {f"params.{v}" for v in stage.values}:
            raise StageError(f"multi-stage method '{method.uda}': args of '{stage.rule}' use {sorted(used)}; only "
                             f"{{params.<value>}} of its values {list(stage.values)} are available")


# ---------------------------------------------------------------- expansion (what stages.smk writes)
def rule_order(method: MethodStages) -> list[TrainStage | PseudoStage]:
    """Every stage in round order, a round's training before its pseudo-labels (the rules' definition order)."""
    return sorted((*method.train, *method.pseudo), key=lambda s: (s.rounds.first, s.kind != "train"))


def fill(pattern: str, **values: Any) -> str:
    """``pattern`` with the named wildcards replaced and the others kept: fill(SEGMENTER, uda="proda", k=0)
    == "results/runs/{pair}/proda_{translator}/r0/final.pth"."""
    out = pattern
    for name, value in values.items():
        if "{" + name + "}" not in out:
            raise KeyError(f"{pattern!r} has no wildcard {{{name}}}")
        out = out.replace("{" + name + "}", str(value))
    return out


def _round(rounds: Rounds) -> str:
    return rounds.pattern[1:]  # "0" or "{k}"


def segmenter_path(method: MethodStages, rounds: Rounds) -> str:
    """Output of a training stage (and input of the same round's pseudo-label stage)."""
    return fill(SEGMENTER, uda=method.uda, k=_round(rounds))


def pseudo_path(method: MethodStages, rounds: Rounds) -> str:
    """Output of a pseudo-label stage."""
    return fill(PSEUDO, uda=method.uda, k=_round(rounds))


def job_name(method: MethodStages, rounds: Rounds) -> str:
    """``<uda>_{translator}_r<k>``: the log and benchmark file name of a stage's job."""
    return f"{method.uda}_{{translator}}_{rounds.pattern}"


def stage_of(stages: Sequence[TrainStage | PseudoStage], k: int):
    """The stage that covers round ``k``."""
    for stage in stages:
        if k in stage.rounds:
            return stage
    raise StageError(f"no stage covers round {k}: {[s.rule for s in stages]}")


def stage_round(stage: TrainStage | PseudoStage, k: str | int | None) -> int:
    """The round of a job of ``stage``: its single round, else the ``{k}`` wildcard."""
    if stage.rounds.single:
        return stage.rounds.first
    if k is None:
        raise StageError(f"stage '{stage.rule}' takes several rounds: its job needs the {{k}} wildcard")
    return int(k)


def read_values(method: MethodStages, repo: str | Path) -> dict[str, Any]:
    """The method's values (e.g. ProDA's threshold), read from the stage packages' sources."""
    return {name: spec.read(repo) for name, spec in method.values.items()}


def stage_title(method: MethodStages, k: int, values: Mapping[str, Any]) -> str:
    """The final table's description of round ``k`` (the training stage's title)."""
    return stage_of(method.train, k).title.format(k=k, prev=k - 1, **values)


#: shell template of every pseudo-label stage. The stage's own parts reach it as params (``command``,
#: ``stage_args``: :func:`pseudo_params`) because Snakemake evaluates a rule's ``shell:`` expression
#: again when the job runs, after stages.smk's loop has moved on: a template built from the loop
#: variable would run the last stage's command (tests/test_workflow_stages.py guards this).
PSEUDO_SHELL = ('"$UDA_PYTHON" -m segmenters {params.command} --checkpoint {input.segmenter} --target {input.tgt}'
                " --split {params.split}{params.stage_args} --out {params.out} > {log} 2>&1")


def pseudo_params(stage: PseudoStage, values: Mapping[str, Any]) -> dict[str, str]:
    """The params that fill :data:`PSEUDO_SHELL` for ``stage``: its CLI and its arguments, with
    ``{params.<value>}`` replaced by the method's ``values`` (as Snakemake would format them)."""
    fill_in = types.SimpleNamespace(**values)
    return {"command": stage.command, "stage_args": "".join(" " + a.format(params=fill_in) for a in stage.args)}


def pseudo_shell(stage: PseudoStage) -> str:
    """:data:`PSEUDO_SHELL` with ``stage``'s command and arguments written in (``{params.<value>}`` of its
    arguments left to Snakemake): what a job of the stage runs, for docs and tests."""
    extra = "".join(" " + a for a in stage.args)
    return PSEUDO_SHELL.replace("{params.command}", stage.command).replace("{params.stage_args}", extra)


def append_cfg_option(flags: str, item: str) -> str:
    """``flags`` (a quoted command-line text) with one more ``--cfg-options`` item: appended to an
    existing ``--cfg-options`` (a multi-value option that segmenter flags always put last), else a new one."""
    if " --cfg-options " in f" {flags} ":
        return f"{flags} {item}"
    return f"{flags} --cfg-options {item}"


def stage_values(method: MethodStages, stage: TrainStage | PseudoStage, values: Mapping[str, Any]) -> dict[str, Any]:
    """The rule params a stage passes on from the method's values."""
    return {name: values[name] for name in getattr(stage, "values", ())}


for _method in METHODS.values():
    check_method(_method)

__all__ = ["GENERIC_RULE", "METHODS", "MethodStages", "PRODA", "PSEUDO", "PseudoStage", "Rounds", "SEGMENTER",
           "SourceDefault", "StageError", "TrainStage", "append_cfg_option", "check_method", "fill",
           "integers_from", "job_name", "placeholders", "PSEUDO_SHELL", "pseudo_params", "pseudo_path", "pseudo_shell", "read_values", "rule_order",
           "segmenter_path", "stage_of", "stage_round", "stage_title", "stage_values", "WARMUP_PSEUDO",
           "WARMUP_SEGMENTER"]
