"""ProDA's rules (its stages are data in workflow/lib/wflib/stages.py, expanded by workflow/rules/stages.smk):
the stages are rounds of results/<pair>_proda_<tr>.csv, planned by dry-runs (minicity: no data needed; syn2cs:
paper scale on the fake real-layout tree of test_workflow_plan)."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_workflow_plan import job_blocks, job_counts, real_layout, snakemake  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def _plan(workdir: Path, target: str, *extra: str) -> str:
    result = snakemake(workdir, "-n", "-p", target, *extra)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    return out


def test_minicity_plan_runs_every_stage_through_its_own_rule(tmp_path):
    extra = tmp_path / "rounds.yaml"
    extra.write_text("pairs:\n  minicity:\n    rounds: {max: 3}\n")
    out = _plan(tmp_path, "results/minicity/proda_none/r3.csv", "--configfile", str(REPO / "config/config.yaml"),
                str(extra))
    counts = job_counts(out)
    assert {k: counts[k] for k in ("proda_warmup", "proda_prototypes", "proda_stage1", "proda_pseudolabel",
                                   "proda_distill")} == {"proda_warmup": 1, "proda_prototypes": 1, "proda_stage1": 1,
                                                         "proda_pseudolabel": 2, "proda_distill": 2}
    assert "segmenter_train" not in counts and "pseudolabel" not in counts  # generic rules never match proda
    blocks = job_blocks(out)
    assert "--preset tiny --uda proda_warmup" in blocks["proda_warmup"][0]
    assert "segmenters prototypes --checkpoint results/runs/minicity/proda_none/r0/final.pth" in blocks["proda_prototypes"][0]
    stage1 = blocks["proda_stage1"][0]
    assert "--uda proda_stage1" in stage1 and "--pseudo data/pseudo/minicity/proda_none/r0" in stage1
    assert "uda.proda.teacher=results/runs/minicity/proda_none/r0/final.pth" in stage1
    distill = "\n".join(blocks["proda_distill"])
    assert "--uda proda_distill" in distill and "--pseudo data/pseudo/minicity/proda_none/r2" in distill
    assert "uda.proda.teacher=results/runs/minicity/proda_none/r2/final.pth" in distill
    assert "--rule fixed --threshold 0.95" in "\n".join(blocks["proda_pseudolabel"])


@pytest.mark.slow
def test_paper_plan_of_the_syn2cs_proda_target(real_layout):  # noqa: F811
    out = _plan(real_layout, "results/syn2cs_proda_semst.csv")
    counts = job_counts(out)
    assert counts["translator_train"] == 1 and counts["refine"] == 1 and counts["proda_warmup"] == 1
    assert "segmenter_train" not in counts and counts["final_table"] == 1
    warm = job_blocks(out)["proda_warmup"][0]
    assert "--uda proda_warmup" in warm and "--preset paper" in warm and "gpu=1" in warm
    assert "--source-images data/refined/syn2cs/semst/r0" in warm
    out = _plan(real_layout, "results/syn2cs/proda_semst/r3.csv")
    counts = job_counts(out)
    assert counts["proda_stage1"] == 1 and counts["proda_distill"] == 2 and counts["proda_prototypes"] == 1
    assert "--class-set 16" in "\n".join(job_blocks(out)["evaluate"])
