"""Planning the paper-scale DAG (gta2cs, syn2cs) against a fake tree in the real datasets' layout.

minicity writes GTA5/SYNTHIA/Cityscapes trees at the real image sizes with a handful of images;
the real `domains prepare` converts them, then dry-runs must show the rounds, rules and GPU
resources of the paper preset without running anything else.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "config/config.yaml"), "--workflow-profile", "none", "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def job_counts(output: str) -> Counter:
    """The 'Job stats' table of a dry-run as {rule: count}."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return Counter({m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)})


def job_blocks(output: str) -> dict[str, list[str]]:
    """Dry-run job descriptions grouped by rule name."""
    blocks: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?(?:rule|checkpoint) )", output):
        m = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        if m:
            blocks.setdefault(m.group(1), []).append(block)
    return blocks


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("paper_plan")
    fake = work / "fake_raw"
    gen = subprocess.run([sys.executable, "-m", "domains.minicity", "--out", str(fake), "--n-source", "2",
                          "--n-train", "2", "--n-val", "2", "--gta5-size", "1914x1052", "--synthia-size", "1280x760",
                          "--target-size", "2048x1024", "--workers", "2", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-3000:]
    raw = work / "data" / "raw"
    raw.mkdir(parents=True)
    for name in ("gta5", "synthia", "cityscapes"):  # data/raw/<dataset> as config/pairs/*.yaml expect
        (raw / name).symlink_to(fake / name)
    prep = snakemake(work, "data/prepared/gta5", "data/prepared/synthia", "data/prepared/cityscapes")
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    return work


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
