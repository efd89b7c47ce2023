"""Planning the paper-scale DAG (gta2cs, syn2cs) against a fake tree in the real datasets' layout.

minicity writes GTA5/SYNTHIA/Cityscapes trees at the real image sizes with a handful of images;
the real `domains prepare` converts them (the builder is benchmarks/paper_plan.py, shared with
benchmarks/paper_readiness.py), then dry-runs must show the rounds, rules and GPU
resources of the paper preset without running anything else.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from paper_plan import build_fake_tree, job_blocks, job_counts, run_snakemake  # noqa: E402

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str):
    return run_snakemake(workdir, *args)


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory) -> Path:
    """data/raw/{gta5,synthia,cityscapes} at the real sizes, prepared by the workflow (benchmarks/paper_plan.py)."""
    return build_fake_tree(tmp_path_factory.mktemp("paper_plan"))


def test_paper_plan_round_zero_and_checkpoint(real_layout):
    result = snakemake(real_layout, "-n", "-p", "results/gta2cs_bdl_semst.csv")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    counts = job_counts(out)
    assert counts["translator_train"] == 1 and counts["refine"] == 1 and counts["segmenter_train"] == 1
    assert counts["evaluate"] == 1 and counts["final_table"] == 1 and "prepare" not in counts
    assert "checkpoint" in out.lower()  # later rounds are decided after evaluation
    blocks = job_blocks(out)
    for rule in ("translator_train", "segmenter_train"):
        assert "gpu=1" in blocks[rule][0], blocks[rule][0]
        assert "runtime=" in blocks[rule][0] and "mem_mb=" in blocks[rule][0]
    assert "gpu=" not in blocks["refine"][0]  # only training rules ask for a GPU
    assert "--preset paper" in blocks["segmenter_train"][0]
    assert "semst_paper.yaml" in blocks["translator_train"][0]


def test_paper_plan_of_later_rounds(real_layout):
    result = snakemake(real_layout, "-n", "-p", "results/gta2cs/bdl_semst/r2.csv")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    counts = job_counts(out)
    assert counts == Counter({"translator_train": 1, "refine": 1, "translator_finetune": 2, "refine_round": 2,
                              "segmenter_train": 3, "pseudolabel": 2, "evaluate": 1})
    blocks = job_blocks(out)
    finetune = "\n".join(blocks["translator_finetune"])
    assert "--feedback-segmenter results/runs/gta2cs/bdl_semst/r0/final.pth" in finetune
    assert "--init results/runs/gta2cs/semst/r0/final.pt" in finetune
    seg = "\n".join(blocks["segmenter_train"])
    assert "--pseudo data/pseudo/gta2cs/bdl_semst/r1 " in seg and "--source-images data/refined/gta2cs/bdl_semst/r2" in seg
    assert "--init results/runs/gta2cs/bdl_semst/r1/final.pth" in seg


def test_synthia_plan_uses_16_classes_and_non_feedback_translator_reuses_round0(real_layout):
    result = snakemake(real_layout, "-n", "-p", "results/syn2cs/bdl_cut/r1.csv")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    counts = job_counts(out)
    assert "translator_finetune" not in counts and counts["translator_train"] == 1 and counts["refine"] == 1
    assert "--class-set 16" in "\n".join(job_blocks(out)["evaluate"])
    assert "--source-images data/refined/syn2cs/cut/r0" in "\n".join(job_blocks(out)["segmenter_train"])


def test_paper_plan_of_the_sepico_target(real_layout):
    """The users' first command: `snakemake -n results/gta2cs_sepico_semst.csv` plans SemST + SePiCo."""
    result = snakemake(real_layout, "-n", "-p", "results/gta2cs_sepico_semst.csv")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    counts = job_counts(out)
    assert counts["translator_train"] == 1 and counts["refine"] == 1 and counts["segmenter_train"] == 1
    seg = job_blocks(out)["segmenter_train"][0]
    assert "--uda sepico" in seg and "--preset paper" in seg and "gpu=1" in seg
    assert "--pseudo" not in seg  # SePiCo's teacher makes its pseudo-labels online
