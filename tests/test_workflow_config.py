"""The workflow refuses bad configs and unknown names before any job runs, and lints clean."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str, configfile: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in ``workdir`` (never in the repository), no profiles."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile or REPO / "config" / "config.yaml"), "--workflow-profile", "none",
           "--cores", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path: Path, **pairs) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["pairs"] = pairs
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


@pytest.mark.parametrize("override, key", [
    ({"minicity": {"rounds": {"max": -1}}}, "config key 'pairs.minicity.rounds.max' = -1: -1 is less than the minimum of 0"),
    ({"minicity": {"segmentr": {"max_iters": 5}}}, "'segmentr' was unexpected"),
])
def test_schema_errors_name_the_key(tmp_path, override, key):
    result = snakemake(tmp_path, "-n", configfile=write_config(tmp_path, **override))
    assert result.returncode != 0
    assert key in result.stdout + result.stderr


@pytest.mark.parametrize("target, message", [
    ("results/foo_bdl_semst.csv", "pair 'foo' is not defined"),
    ("results/minicity_xyz_semst.csv", "config key 'uda'"),
    ("results/minicity_bdl_ldr.csv", "config key 'translators.ldr.direction'"),
    ("results/minicity_ldr_semst.csv", "config key 'uda.ldr.translator_direction'"),
    ("results/gta2cs_bdl_none.csv", "config key pairs.gta2cs.target.raw"),
])
def test_bad_names_stop_before_any_job(tmp_path, target, message):
    result = snakemake(tmp_path, target)  # a real run: it must fail while building the DAG
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in out, out
    assert "Config error" in out and "rule minicity" not in out and "localrule minicity" not in out
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_missing_dataset_root_shows_the_expected_layout(tmp_path):
    (tmp_path / "data/raw/cityscapes/leftImg8bit").mkdir(parents=True)
    (tmp_path / "data/raw/cityscapes/gtFine").mkdir()
    result = snakemake(tmp_path, "-n", "results/gta2cs_source_only_none.csv")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "pairs.gta2cs.source.raw" in out and "images/00001.png" in out and "(GTA5 as it ships)" in out


def test_planned_methods_are_refused_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["uda"]["bdl"]["status"] = "planned"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "results/minicity_bdl_semst.csv", configfile=path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "planned but not implemented yet (config key 'uda.bdl.status'" in out, out
    assert not (tmp_path / "data").exists()


def test_two_pairs_defining_one_dataset_differently_are_refused(tmp_path):
    """A new pair that reuses the prepared dataset name minicity_gta5 for another folder would make
    the other pair's finished jobs out of date (and its report lose sections): refused at plan time,
    naming the dataset and both definitions (docs/errors.md)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["pairs"] = {"mine": {"source": {"name": "minicity_gta5", "format": "gta5", "raw": "data/raw/my_gta5"},
                                "target": {"name": "minicity_cityscapes", "format": "cityscapes",
                                           "raw": "data/raw/minicity/cityscapes"},
                                "preset": "tiny"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "results/minicity_bdl_semst.csv", configfile=path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "prepared dataset 'minicity_gta5' is defined twice differently" in out, out
    assert "data/raw/my_gta5" in out and "data/raw/minicity/gta5" in out and "'pairs.mine.source'" in out
    assert "Traceback" not in out and not (tmp_path / "data").exists()
