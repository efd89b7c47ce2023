"""Unit tests of the workflow's pure helpers (workflow/lib/wflib): rounds, names, hashing, resume."""
from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow" / "lib"))  # appended: a mutation run puts its mutated wflib first

from wflib import launch  # noqa: E402
from wflib import pipeline_config as wfc  # noqa: E402
from wflib.schema import fill_defaults  # noqa: E402
from wflib.codehash import code_hash  # noqa: E402
from wflib.rounds import RoundDecision, best_round, decide  # noqa: E402
from wflib.table import final_table  # noqa: E402


def default_config() -> dict:
    """config/config.yaml with its pairs, validated and filled with the schema's defaults, as common.smk has it."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    wfc.load_pairs(config, REPO, REPO)
    return fill_defaults(config)


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


def _rounds_run(history: list[float], max_round: int = 5, min_delta: float = 0.5) -> tuple[int, str]:
    """Drive the rule as the DAG does: round k+1 runs only when decide(k) says so; returns the last
    round run and the reason it stopped."""
    k = 0
    while True:
        d = decide(k, history[:k + 1], max_round=max_round, min_delta=min_delta, multi_round=True)
        if not d.next_round:
            return k, d.reason
        k += 1


@pytest.mark.parametrize("history, last, why", [
    ([40.0, 41.0, 42.0, 43.0, 44.0, 45.0], 5, "rounds.max=5"),    # rises every round: stops by the cap
    ([40.0, 39.0, 45.0], 1, "< rounds.min_delta"),                  # falls at once: never sees round 2
    ([40.0, 40.5, 41.0, 41.25], 3, "+0.250 < rounds.min_delta"),   # gains of exactly min_delta go on
    ([40.0, 42.0, 38.0, 41.5], 2, "-4.000 < rounds.min_delta"),    # a dip stops the rounds
    ([40.0, 42.0, 41.0, 42.25], 2, "-1.000"),                        # recovery is measured from the best
])
def test_rounds_rule_on_whole_histories(history, last, why):
    ran, reason = _rounds_run(history)
    assert (ran, why in reason) == (last, True), reason


def test_rounds_rule_measures_from_the_best_round_not_the_previous_one():
    # round 2 recovers by +1.5 over round 1 but is 0.5 below round 0: it must stop
    d = decide(2, [40.0, 38.0, 39.5], 5, 0.5, True)
    assert d.best_before == 40.0 and d.delta == pytest.approx(-0.5) and not d.next_round
    # exactly min_delta above the best goes on; a hair below does not
    assert decide(2, [40.0, 38.0, 40.5], 5, 0.5, True).next_round
    assert not decide(2, [40.0, 38.0, 40.4375], 5, 0.5, True).next_round
    assert decide(1, [40.0, math.nan], 5, 0.5, True).reason == "score is NaN"
    assert decide(2, [math.nan, 40.0, 40.25], 5, 0.5, True).best_before == 40.0  # NaN rounds are not a best


def test_round_decisions_are_recorded_in_full():
    """Every field of the record (it becomes the rounds CSV's decision columns), per branch."""
    assert decide(0, [40.0], 3, 0.5, False) == RoundDecision(0, 40.0, None, None, False, "single-round method")
    assert decide(1, [40.0, 41.0], 3, 0.5, False) == RoundDecision(1, 41.0, 40.0, 1.0, False, "single-round method")
    assert decide(2, [40.0, 41.0, 43.0], 2, 0.5, True) == RoundDecision(
        2, 43.0, 41.0, 2.0, False, "reached rounds.max=2")
    nan = decide(1, [40.0, math.nan], 3, 0.5, True)
    assert (nan.round, nan.best_before, nan.next_round, nan.reason) == (1, 40.0, False, "score is NaN")
    assert math.isnan(nan.score) and math.isnan(nan.delta)
    assert decide(1, [40.0, 40.25], 3, 0.5, True) == RoundDecision(
        1, 40.25, 40.0, 0.25, False, "improvement +0.250 < rounds.min_delta=0.5")
    assert decide(0, [40.0], 3, 0.5, True) == RoundDecision(0, 40.0, None, None, True, "first round")
    assert decide(1, [40.0, 41.5], 3, 0.5, True) == RoundDecision(
        1, 41.5, 40.0, 1.5, True, "improvement +1.500 >= rounds.min_delta=0.5")
    with pytest.raises(ValueError, match=r"need scores of rounds 0\.\.2, got 1"):
        decide(2, [1.0], 3, 0.0, True)


def test_best_round_first_on_ties_and_ignores_nan():
    assert best_round([1.0, 3.0, 3.0, 2.0]) == 1
    assert best_round([math.nan, 2.0]) == 1
    assert best_round([math.nan]) == best_round([]) == 0 and best_round([-5.0, -7.0]) == 0


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


def test_warmup_round_labels_only_for_methods_with_offline_pseudo_labels():
    config = default_config()
    assert config["uda"]["bdl"]["round_labels"] == "previous"  # the schema's default: the workflow's order
    for uda in ("bdl", "ldr"):
        config["uda"][uda]["round_labels"] = "warmup"
        wfc.check_combination(config, "minicity", uda, "none")
    config["uda"]["sepico"]["round_labels"] = "warmup"  # online pseudo-labels only
    with pytest.raises(wfc.ConfigError, match=r"uda\.sepico\.round_labels.*uda\.sepico\.pseudo_labels"):
        wfc.check_combination(config, "minicity", "sepico", "none")
    config["uda"]["proda"]["round_labels"] = "warmup"  # its stages set their own inputs
    with pytest.raises(wfc.ConfigError, match=r"uda\.proda\.round_labels.*multi-stage"):
        wfc.check_combination(config, "minicity", "proda", "none")


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
    assert wfc.format_cfg_options({"loss.lambda_TS": 0.0, "semst.multiscale": False, "init_from": None,
                                   "loss.nce_layers": [0, 4]}) == [
        "loss.lambda_TS=0.0", "semst.multiscale=false", "init_from=None", "loss.nce_layers=[0, 4]"]
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
    """Run a fake training CLI through the launcher's main() (in-process, so a mutation run sees it);
    ``crash`` makes the CLI leave state and die (the switch is an environment variable, so the
    command line -- part of the key -- is the same)."""
    script = ("import os, sys; print('ARGS', sys.argv[1:]); d = sys.argv[1]\n"
              "if os.environ.get('CRASH'):\n    open(os.path.join(d, 'checkpoint.pt'), 'w').write('s'); sys.exit(137)")
    argv = ["--run-dir", str(run_dir), "--state", "checkpoint.pt", "--key", code, "--key-input", str(inp), "--",
            sys.executable, "-c", script, str(run_dir)]
    out = io.StringIO()
    old = os.environ.get("CRASH")
    os.environ["CRASH"] = "1" if crash else ""
    try:
        with contextlib.redirect_stdout(out):
            rc = launch.main(argv)
    finally:
        os.environ["CRASH"] = old if old is not None else ""
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), "")


def test_launcher_script_entry_point(tmp_path):
    """workflow/scripts/resumable.py (what the rules call) runs the same main()."""
    run, inp = tmp_path / "run", tmp_path / "in.txt"
    inp.write_text("data")
    cmd = [sys.executable, str(REPO / "workflow/scripts/resumable.py"), "--run-dir", str(run), "--state", "ckpt",
           "--key-input", str(inp), "--", sys.executable, "-c", "import sys; sys.exit(3)"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 3 and "fresh run" in done.stdout and (run / launch.KEY_FILE).is_file()
    assert subprocess.run(cmd[:2], capture_output=True, text=True).returncode == 2  # no "--": usage, exit 2


def test_launcher_resumes_only_an_interrupted_identical_run(tmp_path):
    run, inp = tmp_path / "run", tmp_path / "in.txt"
    inp.write_text("data")
    first = _launch(run, inp, crash=True)  # an interrupted run leaves state behind
    assert first.returncode == 137 and (run / "checkpoint.pt").exists() and "fresh run" in first.stdout
    again = _launch(run, inp)
    assert again.returncode == 0 and "resuming interrupted run" in again.stdout and again.stdout.rstrip().endswith(" --resume")
    assert not (run / "checkpoint.pt").exists() and not (run / launch.KEY_FILE).exists()  # success clears state
    # state from different code is removed, never resumed
    _launch(run, inp, crash=True)
    other = _launch(run, inp, code="c2")
    assert "removing stale state" in other.stdout and not other.stdout.rstrip().endswith(" --resume")
    # ... and so is state whose inputs changed
    _launch(run, inp, crash=True)
    inp.write_text("new data!")
    changed = _launch(run, inp)
    assert "removing stale state" in changed.stdout and not changed.stdout.rstrip().endswith(" --resume")


def test_launcher_restarts_when_an_input_is_replaced_by_same_size_same_mtime_bytes(tmp_path):
    """What ``cp -p`` / ``rsync -a`` of another checkpoint does: same size, same mtime, other bytes."""
    run, inp = tmp_path / "run", tmp_path / "ckpt.pth"
    inp.write_bytes(b"A" * 4096)
    before = os.stat(inp)
    _launch(run, inp, crash=True)
    inp.write_bytes(b"B" * 4096)
    os.utime(inp, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(inp).st_size == before.st_size and os.stat(inp).st_mtime_ns == before.st_mtime_ns
    again = _launch(run, inp)
    assert "removing stale state" in again.stdout and "inputs changed" in again.stdout
    assert not again.stdout.rstrip().endswith(" --resume") and again.returncode == 0


def test_launcher_never_resumes_state_without_a_key(tmp_path):
    run, inp = tmp_path / "run", tmp_path / "in.txt"
    inp.write_text("data")
    _launch(run, inp, crash=True)
    (run / launch.KEY_FILE).unlink()  # e.g. a state folder copied by hand, or a crash before the key was written
    again = _launch(run, inp)
    assert "removing stale state" in again.stdout and "no run key" in again.stdout and not again.stdout.rstrip().endswith(" --resume")
    _launch(run, inp, crash=True)
    (run / launch.KEY_FILE).write_text("{not json")  # a torn key file is no key either
    torn = _launch(run, inp)
    assert "no run key" in torn.stdout and not torn.stdout.rstrip().endswith(" --resume")


def test_launcher_key_hashes_content_with_a_stat_cache(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x" * 100)
    cache: dict = {}
    first = launch.file_digest(str(f), cache)
    assert first == "sha256:" + __import__("hashlib").sha256(b"x" * 100).hexdigest()
    cache[str(f)]["digest"] = "sha256:cached"  # an unchanged file is not read again ...
    assert launch.file_digest(str(f), cache) == "sha256:cached"
    st = os.stat(f)
    f.write_bytes(b"y" * 100)  # ... but new bytes behind the same size and mtime change ctime: rehashed
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert launch.file_digest(str(f), cache) == "sha256:" + __import__("hashlib").sha256(b"y" * 100).hexdigest()
    # folders (prepared datasets) are keyed by their listing: a new, resized or renamed file changes it
    d = tmp_path / "prepared"
    (d / "labels").mkdir(parents=True)
    (d / "labels" / "a.png").write_bytes(b"1")
    key = launch.run_key(["cmd"], "code", [str(d), str(f)], {})
    assert key["inputs"][str(d)].startswith("listing:") and key["inputs"][str(f)].startswith("sha256:")
    (d / "labels" / "b.png").write_bytes(b"2")
    assert launch.run_key(["cmd"], "code", [str(d), str(f)], {})["inputs"][str(d)] != key["inputs"][str(d)]
    assert launch.run_key(["cmd"], "code", [str(d), str(f)], {}) == launch.run_key(["cmd"], "code", [str(d), str(f)], {})


def test_launcher_key_difference_names_what_changed():
    key = {"command": ["a"], "code": "c1", "inputs": {"x": "sha256:1", "y": "sha256:2"}}
    assert launch.key_difference(key, {**key, "command": ["b"]}) == "arguments changed"
    assert launch.key_difference(key, {**key, "code": "c2"}) == "code changed"
    moved = {**key, "inputs": {"x": "sha256:1", "y": "sha256:3", "z": "sha256:4"}}
    assert launch.key_difference(key, moved) == "inputs changed: y, z"
    assert launch.key_difference({"command": ["a"], "code": "c1"}, key) == "inputs changed: x, y"
    assert launch.key_difference(moved, key) == "inputs changed: y, z"


def test_launcher_trusts_its_hash_cache_only_while_the_stat_signature_holds(tmp_path):
    """The cached digest is reused across launches (a multi-GB input is read once): shown by forging
    it in the key file -- the next launch then resumes, because it did not read the file again."""
    import json as _json

    run, inp = tmp_path / "a" / "b" / "run", tmp_path / "w.pth"  # run folder's parents are created too
    inp.write_bytes(b"weights")
    _launch(run, inp, crash=True)
    stored = _json.loads((run / launch.KEY_FILE).read_text())
    assert stored["hash_cache"][str(inp)]["digest"] == stored["key"]["inputs"][str(inp)]
    stored["hash_cache"][str(inp)]["digest"] = stored["key"]["inputs"][str(inp)] = "sha256:forged"
    (run / launch.KEY_FILE).write_text(_json.dumps(stored))
    assert _launch(run, inp).stdout.rstrip().endswith(" --resume")
    # without a cache entry (a key file written by hand or an older launcher) the file is hashed
    _launch(run, inp, crash=True)
    stored = _json.loads((run / launch.KEY_FILE).read_text())
    del stored["hash_cache"]
    (run / launch.KEY_FILE).write_text(_json.dumps(stored))
    assert _launch(run, inp).stdout.rstrip().endswith(" --resume")
    # the key file of the launcher before content keys (no "key" entry) is no key
    _launch(run, inp, crash=True)
    (run / launch.KEY_FILE).write_text(_json.dumps(stored["key"]))
    assert "(no run key)" in _launch(run, inp).stdout


def test_launcher_command_line(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["resumable.py", "--run-dir", str(run), "--", sys.executable, "-c", "pass"])
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert launch.main() == 0  # argv from sys.argv; no --state, --key or --key-input: all optional
    out = capsys.readouterr().out
    assert "resumable: SLURM_JOB_ID=4242\n" in out and "fresh run" in out
    assert not (run / launch.KEY_FILE).exists()  # success removes the key
    assert launch.main(["--run-dir", str(run)]) == 2 and "usage: resumable.py" in capsys.readouterr().err
    for argv, message in ((["--", "true"], "the following arguments are required: --run-dir"),
                          (["--run-dir", str(run), "--"], "resumable.py: error: no command after --")):
        with pytest.raises(SystemExit) as err:
            launch.main(argv)
        assert err.value.code == 2 and message in capsys.readouterr().err
    # --keep-state keeps state and key after success; --resume-flag names the CLI's own flag
    script = "import sys, pathlib; pathlib.Path(sys.argv[1], 'ckpt').write_text('s'); sys.exit(len(sys.argv) - 2)"
    argv = ["--run-dir", str(run), "--state", "ckpt", "--resume-flag=--continue", "--keep-state", "--",
            sys.executable, "-c", script, str(run)]
    assert launch.main(argv) == 0 and (run / "ckpt").exists() and (run / launch.KEY_FILE).exists()
    assert launch.main(argv) == 1 and capsys.readouterr().out.rstrip().endswith(" --continue")  # resumed


def test_launcher_forwards_sigterm_to_the_training_cli(tmp_path):
    """A scheduler's SIGTERM reaches the child (which then checkpoints and exits with its own status);
    the caller's handlers are back in place afterwards."""
    import signal

    marker = tmp_path / "got_sigterm"
    script = ("import os, signal, sys, time\n"
              "def stop(*_):\n    open(sys.argv[1], 'w').write('x'); sys.exit(143)\n"
              "signal.signal(signal.SIGTERM, stop)\n"
              "time.sleep(0.5); os.kill(os.getppid(), signal.SIGTERM)\n"
              "time.sleep(5); sys.exit(0)")
    seen = []

    def ours(signum, _frame):  # stands in for pytest's handler; a launcher that forwards nothing lands here
        seen.append(signum)

    before = signal.signal(signal.SIGTERM, ours)
    try:
        rc = launch.main(["--run-dir", str(tmp_path / "run"), "--", sys.executable, "-c", script, str(marker)])
        assert rc == 143 and marker.exists() and seen == []
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)


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


def test_job_interpreter_has_one_spelling_per_interpreter(tmp_path):
    """python / python3 of one environment give the same job interpreter (so `snakemake` after
    `python -m snakemake` reruns nothing); a configured one, or one without a plain `python`, is kept."""
    real = tmp_path / "bin" / "python3.11"
    real.parent.mkdir()
    real.write_text("")
    (tmp_path / "bin" / "python3").symlink_to("python3.11")
    (tmp_path / "bin" / "python").symlink_to("python3")
    plain = str(tmp_path / "bin" / "python")
    assert wfc.job_interpreter(None, str(tmp_path / "bin" / "python3")) == plain
    assert wfc.job_interpreter(None, str(real)) == plain
    assert wfc.job_interpreter(None, plain) == plain
    assert wfc.job_interpreter("/opt/env/bin/python3", plain) == "/opt/env/bin/python3"
    other = tmp_path / "other"
    other.mkdir()
    (other / "python").write_text("")  # another file: another interpreter
    (other / "python3").write_text("")
    assert wfc.job_interpreter(None, str(other / "python3")) == str(other / "python3")
    alone = tmp_path / "alone" / "python3"
    alone.parent.mkdir()
    alone.write_text("")
    assert wfc.job_interpreter(None, str(alone)) == str(alone)
