"""Unit tests of the workflow's pure helpers (workflow/lib/wflib): rounds, names, hashing, resume."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "lib"))

from wflib import launch  # noqa: E402
from wflib import pipeline_config as wfc  # noqa: E402
from wflib.codehash import code_hash  # noqa: E402
from wflib.rounds import best_round, decide  # noqa: E402
from wflib.table import final_table  # noqa: E402


def default_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    wfc.load_pairs(config, REPO, REPO)
    return config


# ---------------------------------------------------------------- rounds
def test_round_zero_continues_and_stop_on_small_gain():
    assert decide(0, [40.0], max_round=3, min_delta=0.5, multi_round=True).next_round
    gain = decide(1, [40.0, 41.0], 3, 0.5, True)
    assert gain.next_round and gain.delta == pytest.approx(1.0)
    small = decide(2, [40.0, 41.0, 41.2], 3, 0.5, True)
    assert not small.next_round and "min_delta" in small.reason and small.best_before == 41.0
    worse = decide(1, [40.0, 39.0], 3, 0.5, True)
    assert not worse.next_round and worse.delta == pytest.approx(-1.0)


def test_round_limits():
    assert not decide(3, [1, 2, 3, 4], max_round=3, min_delta=0.0, multi_round=True).next_round
    assert not decide(0, [50.0], max_round=3, min_delta=0.0, multi_round=False).next_round
    assert not decide(0, [50.0], max_round=0, min_delta=0.0, multi_round=True).next_round
    assert not decide(0, [math.nan], 3, 0.0, True).next_round
    assert decide(1, [40.0, 30.0], 3, -100.0, True).next_round  # negative min_delta: always go on
    with pytest.raises(ValueError):
        decide(2, [1.0], 3, 0.0, True)


def test_best_round_first_on_ties_and_ignores_nan():
    assert best_round([1.0, 3.0, 3.0, 2.0]) == 1
    assert best_round([math.nan, 2.0]) == 1


# ---------------------------------------------------------------- names and config
def test_parse_combo_and_target_names():
    config = default_config()
    assert wfc.parse_combo("source_only_semst_ts0", config) == ("source_only", "semst_ts0")
    assert wfc.parse_combo("bdl_none", config) == ("bdl", "none")
    assert wfc.parse_target("results/minicity_bdl_semst.csv", config) == ("minicity", "bdl", "semst")
    with pytest.raises(wfc.ConfigError, match="config key 'uda'"):
        wfc.parse_combo("xyz_semst", config)
    with pytest.raises(wfc.ConfigError, match="pairs.nowhere"):
        wfc.parse_target("nowhere_bdl_semst", config)


def test_planned_methods_are_refused_with_the_key():
    config = default_config()
    config["uda"]["sepico"]["status"] = "planned"
    config["translators"]["cut"]["status"] = "planned"
    with pytest.raises(wfc.ConfigError, match=r"not implemented yet.*uda\.sepico\.status"):
        wfc.check_combination(config, "minicity", "sepico", "semst")
    with pytest.raises(wfc.ConfigError, match=r"translators\.cut\.status"):
        wfc.check_combination(config, "minicity", "bdl", "cut")
    with pytest.raises(wfc.ConfigError, match="uses_source"):
        wfc.check_combination(config, "minicity", "oracle", "semst")
    wfc.check_combination(config, "minicity", "oracle", "none")


def test_ambiguous_names_are_rejected():
    config = default_config()
    wfc.check_names(config)
    config["uda"]["bdl_semst"] = {}
    config["translators"]["semst_none"] = {"method": "semst"}  # bdl_semst_none: (bdl, semst_none) or (bdl_semst, none)
    with pytest.raises(wfc.ConfigError, match="ambiguous"):
        wfc.check_names(config)


def test_dataset_table_and_conflicts(tmp_path):
    config = default_config()
    table = wfc.dataset_table(config)
    assert table["minicity_gta5"] == {**table["minicity_gta5"], "format": "gta5", "raw": "data/raw/minicity/gta5",
                                      "minicity": "data/raw/minicity"}
    assert table["cityscapes"]["pairs"] == ["gta2cs", "syn2cs"] and table["cityscapes"]["minicity"] is None
    config["pairs"]["syn2cs"]["target"]["raw"] = "elsewhere/cityscapes"
    with pytest.raises(wfc.ConfigError, match="pairs.syn2cs.target"):
        wfc.dataset_table(config)


def test_missing_raw_root_names_key_and_layout(tmp_path):
    table = wfc.dataset_table(default_config())
    with pytest.raises(wfc.ConfigError) as err:
        wfc.check_raw_root("gta5", table["gta5"], tmp_path)
    assert "pairs.gta2cs.source.raw" in str(err.value) and "images" in str(err.value)
    (tmp_path / "data/raw/gta5/images").mkdir(parents=True)
    (tmp_path / "data/raw/gta5/labels").mkdir()
    wfc.check_raw_root("gta5", table["gta5"], tmp_path)


def test_pair_overrides_merge_over_files(tmp_path):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "p1.yaml").write_text("preset: tiny\nrounds: {max: 2, min_delta: 0.5}\n")
    config = {"pairs_dir": str(tmp_path / "pairs"), "pairs": {"p1": {"rounds": {"max": 4}}, "p2": {"preset": "paper"}}}
    pairs = wfc.load_pairs(config, tmp_path, REPO)
    assert pairs["p1"]["rounds"] == {"max": 4, "min_delta": 0.5}
    assert pairs["p2"] == {"preset": "paper"}
    with pytest.raises(wfc.ConfigError, match="pairs_dir"):
        wfc.load_pairs({"pairs_dir": "no/such/dir", "pairs": {}}, tmp_path, tmp_path)


def test_flag_formatting():
    assert wfc.format_sets({"loss.lambda_TS": 0.0, "semst.multiscale": False}) == ["loss.lambda_TS=0.0",
                                                                                   "semst.multiscale=false"]
    assert wfc.cli_flags({"n_source": 4, "source_size": "1914x1052", "fast": True, "slow": False}) == [
        "--n-source", "4", "--source-size", "1914x1052", "--fast"]


# ---------------------------------------------------------------- code hash
def test_code_hash_follows_sources_only(tmp_path):
    pkg = tmp_path / "translators"
    (pkg / "losses").mkdir(parents=True)
    (pkg / "tests").mkdir()
    (pkg / "losses" / "hdce.py").write_text("x = 1\n")
    (tmp_path / "domains").mkdir()
    (tmp_path / "domains" / "io.py").write_text("y = 1\n")
    before = code_hash(tmp_path, ["translators"]), code_hash(tmp_path, ["domains"])
    from wflib.codehash import _hash_one
    (pkg / "tests" / "test_x.py").write_text("ignored\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.pyc").write_bytes(b"\0")
    _hash_one.cache_clear()
    assert (code_hash(tmp_path, ["translators"]), code_hash(tmp_path, ["domains"])) == before
    (pkg / "losses" / "hdce.py").write_text("x = 2\n")
    _hash_one.cache_clear()
    assert code_hash(tmp_path, ["translators"]) != before[0]
    assert code_hash(tmp_path, ["domains"]) == before[1]


# ---------------------------------------------------------------- resumable launcher
def _launch(run_dir: Path, inp: Path, code: str = "c1", crash: bool = False) -> subprocess.CompletedProcess:
    """Run a fake training CLI through the launcher; ``crash`` makes it leave state and die (the
    behaviour switch is an environment variable, so the command line -- part of the key -- is the same)."""
    script = ("import os, sys; print('ARGS', sys.argv[1:]); d = sys.argv[1]\n"
              "if os.environ.get('CRASH'):\n    open(os.path.join(d, 'checkpoint.pt'), 'w').write('s'); sys.exit(137)")
    cmd = [sys.executable, str(REPO / "workflow/scripts/resumable.py"), "--run-dir", str(run_dir), "--state",
           "checkpoint.pt", "--key", code, "--key-input", str(inp), "--", sys.executable, "-c", script, str(run_dir)]
    env = {**os.environ, "CRASH": "1" if crash else ""}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def test_launcher_resumes_only_an_interrupted_identical_run(tmp_path):
    run, inp = tmp_path / "run", tmp_path / "in.txt"
    inp.write_text("data")
    first = _launch(run, inp, crash=True)  # an interrupted run leaves state behind
    assert first.returncode == 137 and (run / "checkpoint.pt").exists() and "fresh run" in first.stdout
    again = _launch(run, inp)
    assert again.returncode == 0 and "resuming interrupted run" in again.stdout and "'--resume'" in again.stdout
    assert not (run / "checkpoint.pt").exists() and not (run / launch.KEY_FILE).exists()  # success clears state
    # state from different code is removed, never resumed
    _launch(run, inp, crash=True)
    other = _launch(run, inp, code="c2")
    assert "removing stale state" in other.stdout and "'--resume'" not in other.stdout
    # ... and so is state whose inputs changed
    _launch(run, inp, crash=True)
    inp.write_text("new data!")
    changed = _launch(run, inp)
    assert "removing stale state" in changed.stdout and "'--resume'" not in changed.stdout


# ---------------------------------------------------------------- final table
def test_final_table_rows_best_and_decisions(tmp_path):
    paths = []
    for k, miou in enumerate([30.0, 34.0, 34.2]):
        row = {"road": 80.0 + k, "sidewalk": float("nan"), "mIoU": miou, "mIoU16": miou + 1, "mIoU13": miou + 2,
               "aAcc": 70.0, "mAcc": 40.0, "round": k, "checkpoint": f"r{k}/final.pth"}
        paths.append(tmp_path / f"r{k}.csv")
        pd.DataFrame([row]).to_csv(paths[-1], index=False)
    rounds = {"max": 3, "min_delta": 0.5, "metric": "mIoU", "multi_round": True, "class_set": 16}
    table = final_table([str(p) for p in paths], ["s0", "s1", "s2"], rounds, "minicity", "bdl", "semst")
    assert table["round"].tolist() == [0, 1, 2] and table["stage"].tolist() == ["s0", "s1", "s2"]
    assert table["best"].tolist() == [False, False, True]
    assert table["next_round"].tolist() == [True, True, False]
    assert {"road", "sidewalk", "mIoU", "mIoU16", "mIoU13", "aAcc", "mAcc"} <= set(table.columns)
    assert "checkpoint" not in table.columns
    rounds["class_set"] = 19
    table19 = final_table([str(p) for p in paths], [], rounds, "minicity", "bdl", "semst")
    assert "mIoU16" not in table19.columns
