"""The sections of ``snakemake --report`` and what the configuration says each final table puts there.

Snakemake builds the report from the files marked ``report(..., category=<section>)`` among the jobs
of the graph it plans for the requested targets. A final table ``results/<pair>_<uda>_<translator>.csv``
(rule ``final_table``, workflow/rules/report.smk) brings its own section, *Results*, and, as its
inputs, the figures of two more: *Translated samples* (a grid per refined set it trained on) and
*Pseudo-labels* (a grid per pseudo-label set). When the configuration says a run has one of those
(a translator that refines, a method that trains on pseudo-labels in later rounds) but the graph
holds none, the report would silently lack it; the workflow stops instead with one line per missing
section naming the section, the target, why it is expected and why it is missing (docs/pipeline.md,
"Report"). *Tables* and *Comparison* are the requested table and comparison targets' own outputs.

Pure functions (no Snakemake); the Snakemake side is ``report_section_errors`` in
workflow/rules/common.smk, run by report.smk before Snakemake writes the report.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

RESULTS = "Results"
SAMPLES = "Translated samples"
PSEUDO = "Pseudo-labels"
TABLES = "Tables"
COMPARISON = "Comparison"
#: every section (the ``category`` of the rules' report() outputs), in the report's order
SECTIONS = (RESULTS, SAMPLES, PSEUDO, TABLES, COMPARISON)


def final_table_sections(uda: str, uda_spec: Mapping[str, Any], translator: str, translator_spec: Mapping[str, Any],
                         max_round: int) -> dict[str, str]:
    """Section -> why the configuration asks for it, for the report entries of one final table."""
    out = {RESULTS: "every final table shows its per-round table and mIoU plot"}
    if translator_spec["method"] != "none":
        out[SAMPLES] = (f"translator '{translator}' refines a set the segmenter trains on (config key "
                        f"translators.{translator}.method = {translator_spec['method']!r})")
    if uda_spec["pseudo_labels"] and uda_spec["multi_round"] and max_round >= 1:
        out[PSEUDO] = (f"uda '{uda}' trains on pseudo-labels from round 1 on (config key uda.{uda}.pseudo_labels "
                       f"= true, rounds.max = {max_round})")
    return out


def missing_sections(expected: Mapping[str, str], present: Iterable[str]) -> list[str]:
    """The expected sections without a file in the job graph, in the report's order."""
    have = set(present)
    return [s for s in SECTIONS if s in expected and s not in have] + \
        [s for s in expected if s not in SECTIONS and s not in have]


def why_missing(section: str, rounds: int, stop_reason: str | None) -> str:
    """Why a final table brought no file of ``section``: ``rounds`` is how many rounds the run has and
    ``stop_reason`` why it stopped after the last one (wflib.rounds.decide)."""
    if section == PSEUDO and rounds <= 1:
        after = f" ({stop_reason})" if stop_reason else ""
        return (f"the run stopped after round 0{after}, so no round used pseudo-labels and none was made; "
                "rerun it or leave the target out of the report")
    return "no job in the graph writes one for it (a rule's report() category or its inputs changed?)"


def message(target: str, section: str, expected_because: str, missing_because: str) -> str:
    """One line: the section, the target, why it is expected and why it is missing."""
    return (f"Report error: section '{section}' of {target} has no inputs in the job graph: {expected_because}, "
            f"but {missing_because}")


__all__ = ["COMPARISON", "PSEUDO", "RESULTS", "SAMPLES", "SECTIONS", "TABLES", "final_table_sections", "message",
           "missing_sections", "why_missing"]
