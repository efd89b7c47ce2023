"""Multi-stage methods as data (workflow/lib/wflib/stages.py), the training rules' shared pieces
(wflib/rule_parts.py) and the report's sections (wflib/report_sections.py): pure functions, no Snakemake.

The expanded rules' file names and shell templates are pinned to what workflow/rules/proda.smk,
segment.smk and translate.smk wrote by hand before: a shell template's text is Snakemake's `code`
rerun trigger, so a change would rerun every training job.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow" / "lib"))  # appended: a mutation run puts its mutated wflib first

from wflib import report_sections as wfrs  # noqa: E402
from wflib import rule_parts as wfr  # noqa: E402
from wflib import stage_defaults  # noqa: E402
from wflib import stages as wfs  # noqa: E402
from wflib.stages import MethodStages, PseudoStage, Rounds, StageError, TrainStage  # noqa: E402

# the rules' templates, pinned: a change reruns every such job of an existing working dir. Written once
# from the rules' earlier text (proda.smk, segment.smk, translate.smk); since session 18 the interpreter
# and the launcher are the shell prefix's variables, not params (no path of the machine in a template)
LAUNCH = ('"$UDA_PYTHON" "$UDA_LAUNCHER" --run-dir {params.out} {params.state} --key {params.code}'
          " --key-input {input} --")
SEGMENTER_TRAIN = (LAUNCH + " {params.train} --arch {params.arch} --preset {params.preset} --uda {wildcards.uda}"
                   " --source {input.src} --target {input.tgt} --work-dir {params.out} {params.flags} > {log} 2>&1")
PRODA_TRAIN = SEGMENTER_TRAIN.replace("--uda {wildcards.uda}", "--uda {params.uda}")
TRANSLATOR_R0 = (LAUNCH + ' {params.train} --config "$UDA_REPO"/{params.config} --source {input.src} --target {input.tgt}'
                 " --out {params.out} --no-progress {params.guide} {params.flags} > {log} 2>&1")
TRANSLATOR_FINETUNE = (LAUNCH + ' {params.train} --config "$UDA_REPO"/{params.config} --source {input.src} --target {input.tgt}'
                       " --out {params.out} --init {input.prev} --feedback-segmenter {input.segmenter} --no-progress"
                       " {params.flags} > {log} 2>&1")
PROTOTYPES = ('"$UDA_PYTHON" -m segmenters prototypes --checkpoint {input.segmenter} --target {input.tgt}'
              " --split {params.split} --out {params.out} > {log} 2>&1")
PSEUDOLABEL = ('"$UDA_PYTHON" -m segmenters pseudolabel --checkpoint {input.segmenter} --target {input.tgt}'
               " --split {params.split} --rule fixed --threshold {params.threshold} --out {params.out} > {log} 2>&1")


# ---------------------------------------------------------------- rule_parts: the training rules' pieces
def test_training_shell_templates_are_the_rules_former_text():
    assert wfr.segmenter_train_shell() == wfr.segmenter_train_shell("{wildcards.uda}") == SEGMENTER_TRAIN
    assert wfr.segmenter_train_shell("{params.uda}") == PRODA_TRAIN
    assert wfr.translator_train_shell("--no-progress {params.guide} {params.flags}") == TRANSLATOR_R0
    assert wfr.translator_train_shell(
        "--init {input.prev} --feedback-segmenter {input.segmenter} --no-progress {params.flags}") == TRANSLATOR_FINETUNE
    assert wfr.resumable_shell("cmd {x}") == LAUNCH + " cmd {x} > {log} 2>&1"


def test_job_files():
    assert wfr.log_file("segment", "{uda}_{translator}_r{k}") == "logs/{pair}/segment/{uda}_{translator}_r{k}.log"
    assert wfr.benchmark_file("translate", "{translator}_r0") == "results/benchmarks/{pair}/translate/{translator}_r0.tsv"


# ---------------------------------------------------------------- stages: ProDA as data
def test_proda_expands_to_its_former_rules():
    proda = wfs.METHODS["proda"]
    assert proda is wfs.PRODA and proda.uda == "proda" and proda.teacher_option == "uda.proda.teacher"
    order = wfs.rule_order(proda)
    assert [s.rule for s in order] == ["proda_warmup", "proda_prototypes", "proda_stage1", "proda_pseudolabel",
                                       "proda_distill"]
    got = {s.rule: (s.kind, wfs.GENERIC_RULE[s.kind],
                    (wfs.segmenter_path if s.kind == "train" else wfs.pseudo_path)(proda, s.rounds),
                    wfs.job_name(proda, s.rounds), s.rounds.constraints) for s in order}
    assert got == {
        "proda_warmup": ("train", "segmenter_train", "results/runs/{pair}/proda_{translator}/r0/final.pth",
                         "proda_{translator}_r0", {}),
        "proda_prototypes": ("pseudo", "pseudolabel", "data/pseudo/{pair}/proda_{translator}/r0/meta.json",
                             "proda_{translator}_r0", {}),
        "proda_stage1": ("train", "segmenter_train", "results/runs/{pair}/proda_{translator}/r1/final.pth",
                         "proda_{translator}_r1", {}),
        "proda_pseudolabel": ("pseudo", "pseudolabel", "data/pseudo/{pair}/proda_{translator}/r{k}/meta.json",
                              "proda_{translator}_r{k}", {"k": r"[1-9][0-9]*"}),
        "proda_distill": ("train", "segmenter_train", "results/runs/{pair}/proda_{translator}/r{k}/final.pth",
                          "proda_{translator}_r{k}", {"k": r"[2-9]|[1-9][0-9]+"}),
    }
    assert {s.rule: s.uda for s in proda.train} == {"proda_warmup": "proda_warmup", "proda_stage1": "proda_stage1",
                                                    "proda_distill": "proda_distill"}
    assert {s.rule: s.teacher for s in proda.train} == {"proda_warmup": False, "proda_stage1": True,
                                                        "proda_distill": True}
    shells = {s.rule: wfs.pseudo_shell(s) for s in proda.pseudo}
    assert shells == {"proda_prototypes": PROTOTYPES, "proda_pseudolabel": PSEUDOLABEL}


def test_generic_paths_are_the_rules_outputs():
    assert wfs.SEGMENTER == "results/runs/{pair}/{uda}_{translator}/r{k}/final.pth"
    assert wfs.PSEUDO == "data/pseudo/{pair}/{uda}_{translator}/r{k}/meta.json"
    assert wfs.fill(wfs.SEGMENTER, uda="x", k=3) == "results/runs/{pair}/x_{translator}/r3/final.pth"
    with pytest.raises(KeyError, match="no wildcard"):
        wfs.fill(wfs.SEGMENTER, combo="x")


def test_proda_values_are_read_from_its_package_source():
    values = wfs.read_values(wfs.PRODA, REPO)
    assert values == {"threshold": stage_defaults.proda_threshold(REPO)}
    assert isinstance(values["threshold"], float)
    stage = wfs.stage_of(wfs.PRODA.pseudo, 2)
    assert wfs.stage_values(wfs.PRODA, stage, values) == values
    assert wfs.stage_values(wfs.PRODA, wfs.stage_of(wfs.PRODA.pseudo, 0), values) == {}


def test_stage_titles_are_the_final_tables_former_text():
    values = {"threshold": 0.95}
    assert wfs.stage_title(wfs.PRODA, 0, values) == "ProDA warm-up (source CE + LS-GAN output-space adversarial)"
    assert wfs.stage_title(wfs.PRODA, 1, values) == "ProDA stage 1 (prototype-rectified soft pseudo-labels, EMA teacher)"
    for k in (2, 3, 7):
        assert wfs.stage_title(wfs.PRODA, k, values) == (
            f"ProDA stage {k} (self-distillation from r{k - 1}, hard pseudo-labels > 0.95)")


@pytest.mark.parametrize("first", range(10))
def test_integers_from(first):
    regex = re.compile(wfs.integers_from(first))
    for n in range(0, 250):
        assert bool(regex.fullmatch(str(n))) == (n >= first), (first, n)
    assert not regex.fullmatch("0" + str(max(first, 1)))  # no leading zeros
    assert not regex.fullmatch("")


def test_integers_from_refuses_late_or_negative_rounds():
    for bad in (-1, 10):
        with pytest.raises(StageError):
            wfs.integers_from(bad)


def test_rounds_and_stage_of():
    assert 0 in Rounds(0, 0) and 1 not in Rounds(0, 0) and 5 in Rounds(2) and 1 not in Rounds(2)
    assert Rounds(3, 3).pattern == "r3" and Rounds(3).pattern == "r{k}"
    assert [wfs.stage_of(wfs.PRODA.train, k).rule for k in range(5)] == [
        "proda_warmup", "proda_stage1", "proda_distill", "proda_distill", "proda_distill"]
    assert wfs.stage_round(wfs.stage_of(wfs.PRODA.train, 1), None) == 1
    assert wfs.stage_round(wfs.stage_of(wfs.PRODA.train, 4), "4") == 4
    with pytest.raises(StageError, match="needs the"):
        wfs.stage_round(wfs.stage_of(wfs.PRODA.train, 4), None)
    with pytest.raises(StageError, match="no stage covers round 0"):
        wfs.stage_of([TrainStage("a", Rounds(1), "a", "t")], 0)
    with pytest.raises(StageError, match="open-ended"):
        Rounds(1, 3).constraints


def test_append_cfg_option():
    assert wfs.append_cfg_option("--seed 0", "a=1") == "--seed 0 --cfg-options a=1"
    assert wfs.append_cfg_option("--seed 0 --cfg-options x=2", "a=1") == "--seed 0 --cfg-options x=2 a=1"
    assert wfs.append_cfg_option("--cfg-options x=2", "a=1") == "--cfg-options x=2 a=1"
    assert wfs.append_cfg_option("--my-cfg-options x", "a=1") == "--my-cfg-options x --cfg-options a=1"


def _method(train=None, pseudo=None, **kw):
    train = train if train is not None else (TrainStage("m_a", Rounds(0, 0), "a", "A"),
                                             TrainStage("m_b", Rounds(1), "b", "B {k}", teacher=True))
    pseudo = pseudo if pseudo is not None else (PseudoStage("m_p", Rounds(0), "pseudolabel"),)
    return MethodStages("m", tuple(train), tuple(pseudo), **{"teacher_option": "uda.m.teacher", **kw})


def test_check_method_accepts_proda_and_a_minimal_method():
    wfs.check_method(wfs.PRODA)
    wfs.check_method(_method())


@pytest.mark.parametrize("method, match", [
    (lambda: _method(train=(TrainStage("m_a", Rounds(0, 0), "a", "A"), TrainStage("m_b", Rounds(2), "b", "B"))),
     "starts at round 2, expected 1"),
    (lambda: _method(train=(TrainStage("m_a", Rounds(0), "a", "A"), TrainStage("m_b", Rounds(1), "b", "B"))),
     "every round from 0 on, but later stages follow"),
    (lambda: _method(train=(TrainStage("m_a", Rounds(0, 0), "a", "A"),)), "no training stage takes the rounds from 1"),
    (lambda: _method(pseudo=(PseudoStage("m_p", Rounds(1), "pseudolabel"),)), "starts at round 1, expected 0"),
    (lambda: _method(train=(TrainStage("m_a", Rounds(0, 1), "a", "A"), TrainStage("m_b", Rounds(2), "b", "B"))),
     "a stage takes one round or every round"),
    (lambda: _method(train=(TrainStage("m_a", Rounds(0), "a", "A", teacher=True),)), "teacher at round 0"),
    (lambda: _method(teacher_option=None), "names no teacher_option"),
    (lambda: _method(train=(TrainStage("m_a", Rounds(0), "a", "A {nope}"),)), r"unknown \['nope'\]"),
    (lambda: _method(pseudo=(PseudoStage("m_p", Rounds(0), "pseudolabel", args=("--t", "{params.t}")),)),
     r"only \{params.<value>\}"),
    (lambda: _method(pseudo=(PseudoStage("m_p", Rounds(0), "pseudolabel", values=("t",)),)), r"unknown values \['t'\]"),
    (lambda: _method(pseudo=(PseudoStage("m_a", Rounds(0), "pseudolabel"),)), "rule names repeat"),
    (lambda: _method(pseudo=(PseudoStage("pseudolabel", Rounds(0), "pseudolabel"),)), "cannot be a rule name"),
])
def test_check_method_refuses_inconsistent_stages(method, match):
    with pytest.raises(StageError, match=match):
        wfs.check_method(method())


def test_placeholders():
    assert wfs.placeholders("a {k} {params.threshold} {{x}}") == {"k", "params.threshold"}


# ---------------------------------------------------------------- report sections
BDL = {"multi_round": True, "pseudo_labels": True}
SEPICO = {"multi_round": True, "pseudo_labels": False}
SOURCE_ONLY = {"multi_round": False, "pseudo_labels": False}


def test_final_table_sections_follow_the_config():
    full = wfrs.final_table_sections("bdl", BDL, "semst", {"method": "semst"}, 2)
    assert list(full) == [wfrs.RESULTS, wfrs.SAMPLES, wfrs.PSEUDO]
    assert "translators.semst.method" in full[wfrs.SAMPLES] and "uda.bdl.pseudo_labels" in full[wfrs.PSEUDO]
    assert list(wfrs.final_table_sections("bdl", BDL, "none", {"method": "none"}, 0)) == [wfrs.RESULTS]
    assert list(wfrs.final_table_sections("sepico", SEPICO, "none", {"method": "none"}, 3)) == [wfrs.RESULTS]
    assert list(wfrs.final_table_sections("source_only", SOURCE_ONLY, "cut", {"method": "cut"}, 2)) == [
        wfrs.RESULTS, wfrs.SAMPLES]
    assert list(wfrs.final_table_sections("bdl", {**BDL, "multi_round": False}, "none", {"method": "none"}, 2)) == [
        wfrs.RESULTS]


def test_missing_sections_in_report_order():
    expected = {wfrs.PSEUDO: "p", wfrs.RESULTS: "r", wfrs.SAMPLES: "s"}
    assert wfrs.missing_sections(expected, [wfrs.RESULTS]) == [wfrs.SAMPLES, wfrs.PSEUDO]
    assert wfrs.missing_sections(expected, wfrs.SECTIONS) == []
    assert wfrs.missing_sections({"Other": "o"}, []) == ["Other"]


def test_message_is_one_line_naming_section_target_and_reasons():
    expected = wfrs.final_table_sections("bdl", BDL, "none", {"method": "none"}, 2)[wfrs.PSEUDO]
    text = wfrs.message("results/minicity_bdl_none.csv", wfrs.PSEUDO, expected,
                        wfrs.why_missing(wfrs.PSEUDO, 1, "score is NaN"))
    assert "\n" not in text and text.startswith("Report error: section 'Pseudo-labels' of results/minicity_bdl_none.csv")
    assert "rounds.max = 2" in text and "stopped after round 0 (score is NaN)" in text
    assert "no job in the graph" in wfrs.why_missing(wfrs.SAMPLES, 3, None)
    assert "no job in the graph" in wfrs.why_missing(wfrs.PSEUDO, 3, "reached rounds.max=2")


def test_stage_rules_shell_does_not_read_the_loop_variables():
    """Snakemake evaluates a rule's ``shell:`` expression again when the job runs, after stages.smk's loop
    has ended: one built from ``_stage``/``_method`` would run the last stage's command (it did: ProDA's
    prototypes job ran as ``proda_pseudolabel`` and failed). Every other directive is read at parse time."""
    import re

    text = (REPO / "workflow/rules/stages.smk").read_text()
    shells = re.findall(r"^\s*shell:\s*\n\s*(.+)$", text, flags=re.M)
    assert len(shells) == 2, shells
    for expr in (line.split("#")[0] for line in shells):
        assert "_stage" not in expr and "_method" not in expr, expr


def test_pseudo_params_fill_the_shared_template_to_each_stage_command():
    values = wfs.read_values(wfs.PRODA, REPO)
    for stage in wfs.PRODA.pseudo:
        params = wfs.pseudo_params(stage, wfs.stage_values(wfs.PRODA, stage, values))
        filled = wfs.PSEUDO_SHELL.replace("{params.command}", params["command"]).replace(
            "{params.stage_args}", params["stage_args"])
        assert filled == wfs.pseudo_shell(stage).replace("{params.threshold}", str(values.get("threshold")))
    pseudo = wfs.stage_of(wfs.PRODA.pseudo, 1)
    assert wfs.pseudo_params(pseudo, {"threshold": 0.95}) == {
        "command": "pseudolabel", "stage_args": " --rule fixed --threshold 0.95"}
