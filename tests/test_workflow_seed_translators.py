"""SPADE-guided translation and LDR in the DAG: guide segmenter, direction of translation, and flags.

Dry-runs check the plan (which job feeds which); the pure checks of `wflib.pipeline_config` check
that nonsensical combinations are refused before any job runs.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow" / "lib"))  # appended: a mutation run puts its mutated wflib first

from wflib import pipeline_config as wfc  # noqa: E402
from wflib.schema import fill_defaults  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from paper_plan import job_blocks, job_counts  # noqa: E402  (the dry-run parsers, shared)


def snakemake(workdir: Path, *args: str, configfile: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile or REPO / "config/config.yaml"), "--workflow-profile", "none",
           "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def config() -> dict:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    wfc.load_pairs(cfg, REPO, REPO)
    return fill_defaults(cfg)  # as common.smk has it


def test_ldr_pairs_with_target_to_source_translators_only(config):
    wfc.check_combination(config, "minicity", "ldr", "ldr")
    wfc.check_combination(config, "minicity", "ldr", "none")  # the paper's "T->S off" ablation
    with pytest.raises(wfc.ConfigError, match=r"uda.ldr.translator_direction.*choose one of: none, ldr"):
        wfc.check_combination(config, "minicity", "ldr", "semst")
    with pytest.raises(wfc.ConfigError, match=r"translators.ldr.direction"):
        wfc.check_combination(config, "minicity", "bdl", "ldr")


def test_guide_must_be_a_valid_unguided_combination(config):
    wfc.check_combination(config, "minicity", "bdl", "spade")
    bad = yaml.safe_load(yaml.safe_dump(config))
    bad["translators"]["spade"]["guide"] = "oracle_semst"
    with pytest.raises(wfc.ConfigError, match="uses_source"):
        wfc.check_combination(bad, "minicity", "bdl", "spade")
    bad["translators"]["spade"]["guide"] = "bdl_spade"
    with pytest.raises(wfc.ConfigError, match=r"translators.spade.guide.*needs a guide itself"):
        wfc.check_combination(bad, "minicity", "bdl", "spade")


def test_plan_of_spade_and_ldr(tmp_path):
    """SPADE round 0 is guided by the source-only segmenter; LDR's CycleGAN runs target -> source,
    refines the target train split, and the LDR segmenter reads it with --target-images."""
    result = snakemake(tmp_path, "-n", "-p", "results/minicity_bdl_spade.csv", "results/minicity_ldr_ldr.csv")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    counts = job_counts(out)
    assert counts["translator_train"] == 2 and counts["refine"] == 2
    assert counts["segmenter_train"] == 3  # source_only_none (guide), bdl_spade r0, ldr_ldr r0
    blocks = job_blocks(out)
    spade = next(b for b in blocks["translator_train"] if "spade/r0/final.pt" in b)
    assert "--feedback-segmenter results/runs/minicity/source_only_none/r0/final.pth" in spade
    assert "--source data/prepared/minicity_gta5 --target data/prepared/minicity_cityscapes" in spade
    cyc = next(b for b in blocks["translator_train"] if "ldr/r0/final.pt" in b)
    assert "cyclegan_tiny.yaml" in cyc and "--feedback-segmenter" not in cyc
    assert "--source data/prepared/minicity_cityscapes --target data/prepared/minicity_gta5" in cyc
    refine_ldr = next(b for b in blocks["refine"] if "data/refined/minicity/ldr/r0" in b)
    assert "--source data/prepared/minicity_cityscapes --split train" in refine_ldr
    seg_ldr = next(b for b in blocks["segmenter_train"] if "--uda ldr" in b)
    assert "--target-images data/refined/minicity/ldr/r0" in seg_ldr and "--source-images" not in seg_ldr
    seg_spade = next(b for b in blocks["segmenter_train"] if "bdl_spade/r0" in b)
    assert "--source-images data/refined/minicity/spade/r0" in seg_spade


def test_plan_of_later_rounds_feeds_back_the_segmenter(tmp_path):
    """With rounds done up to r0 faked as complete, a round-1 SPADE fine-tune uses segmenter r0."""
    result = snakemake(tmp_path, "-n", "-p", "results/runs/minicity/bdl_spade/r1/translator/final.pt",
                       "data/refined/minicity/ldr_ldr/r1/manifest.json")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    blocks = job_blocks(out)
    fine = {re.search(r"--out (\S+)", b).group(1): b for b in blocks["translator_finetune"]}
    spade = fine["results/runs/minicity/bdl_spade/r1/translator"]
    assert "--init results/runs/minicity/spade/r0/final.pt" in spade
    assert "--feedback-segmenter results/runs/minicity/bdl_spade/r0/final.pth" in spade
    ldr = fine["results/runs/minicity/ldr_ldr/r1/translator"]
    assert "--source data/prepared/minicity_cityscapes --target data/prepared/minicity_gta5" in ldr
    refine = next(b for b in blocks["refine_round"] if "ldr_ldr/r1" in b)
    assert "--source data/prepared/minicity_cityscapes" in refine


def test_a_method_can_fix_its_own_number_of_rounds(tmp_path):
    """uda.proda.rounds.max = 3 overrides minicity's rounds.max = 2 (ProDA's four stages always run)."""
    ok = snakemake(tmp_path, "-n", "results/minicity/proda_none/r3.csv")
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-3000:]
    refused = snakemake(tmp_path, "-n", "results/minicity/bdl_none/r3.csv")
    assert refused.returncode != 0
    assert "exceeds config key 'pairs.minicity.rounds.max' = 2" in refused.stdout + refused.stderr
