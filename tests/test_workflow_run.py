"""Real tiny runs of the DAG with the real stage CLIs (minicity, tiny preset, few iterations).

One workdir per module (a copy of the workflow and package sources, so the code-change test can
edit sources without touching the repository): the translator training is SIGKILLed mid-run
and resumed, the rounds loop stops when mIoU stops improving, and a source edit reruns exactly
the affected stage and what follows it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TARGET = "results/minicity_bdl_cut.csv"
TRANSLATOR_RUN = "results/runs/minicity/cut/r0"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("wf_run")
    copy = root / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tests")
    copy.mkdir()
    shutil.copy2(REPO / "Snakefile", copy / "Snakefile")
    for name in ("workflow", "config", "domains", "nets", "translators", "segmenters"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    if (REPO / "environment.yml").exists():
        shutil.copy2(REPO / "environment.yml", copy / "environment.yml")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["pairs"] = {"minicity": {
        "minicity": {"args": {"n_source": 8, "n_train": 6, "n_val": 4}},
        "translator": {"iters": 10, "cfg_options": {"train.save_every": 2, "train.log_every": 1}},
        "segmenter": {"max_iters": 6, "round_iters": 4, "val_interval": 1000},
        # min_delta 100 mIoU points: round 1 can never gain that much, so the loop must stop after it
        "rounds": {"max": 3, "min_delta": 100.0}}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    work = root / "work"
    work.mkdir()
    return {"copy": copy, "work": work, "config": root / "config.yaml"}


def command(env: dict, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(env["copy"] / "Snakefile"), "--directory",
            str(env["work"]), "--configfile", str(env["config"]), "--workflow-profile", "none", "--cores", "2", *args]


def run(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command(env, *args), capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> Counter:
    if "Job stats:" not in output:
        return Counter()
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return Counter({m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)})


def test_sigkill_during_translator_training_then_resume(env):
    work = env["work"]
    ckpt = work / TRANSLATOR_RUN / "checkpoint.pt"
    proc = subprocess.Popen(command(env, TARGET), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # own process group: SIGKILL takes snakemake and its jobs
    try:
        deadline = time.monotonic() + 420
        while not ckpt.exists():
            assert proc.poll() is None, "snakemake ended before the translator wrote a checkpoint"
            assert time.monotonic() < deadline, "no translator checkpoint within the time limit"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no cleanup of any kind
        proc.wait()
    assert not (work / TRANSLATOR_RUN / "final.pt").exists()  # a killed training is never "done"

    assert run(env, "--unlock").returncode == 0
    plan = run(env, "-n", TARGET)
    assert "translator_train" in job_counts(plan.stdout) and "minicity" not in job_counts(plan.stdout)

    result = run(env, TARGET)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    log = (work / "logs/minicity/translate/cut_r0.log").read_text()
    assert "resumable: resuming interrupted run" in log and "--resume" in log
    assert re.search(r"resumed from \S*checkpoint.pt at step [1-9]", log), log[-3000:]
    assert (work / TRANSLATOR_RUN / "final.pt").exists() and not ckpt.exists()


def test_rounds_stop_when_miou_stops_improving(env):
    table = pd.read_csv(env["work"] / TARGET)
    assert table["round"].tolist() == [0, 1]  # r1 did not gain rounds.min_delta, so no r2 (rounds.max is 3)
    assert table["next_round"].tolist() == [True, False]
    assert "< rounds.min_delta=100.0" in table["decision"].iloc[1]
    assert table["best"].sum() == 1 and table.loc[table["best"], "mIoU"].iloc[0] == table["mIoU"].max()
    assert {"road", "sky", "car", "mIoU", "aAcc", "mAcc"} <= set(table.columns)
    work = env["work"]
    assert (work / "data/pseudo/minicity/bdl_cut/r0/meta.json").exists()  # round 1 trained on these
    assert not (work / "results/minicity/bdl_cut/r2.csv").exists()
    assert not (work / "data/pseudo/minicity/bdl_cut/r1").exists()
    # cut takes no feedback: round 1 reused round 0's refined set
    assert "data/refined/minicity/cut/r0" in table["stage"].iloc[1]
    assert (work / "results/plots/minicity_bdl_cut_miou.png").stat().st_size > 0
    assert (work / "results/plots/minicity/cut/r0/samples.png").exists()
    assert (work / "results/plots/minicity/bdl_cut/r0/pseudo.png").exists()
    assert "Nothing to be done" in run(env, "-n", TARGET).stdout


def test_code_change_reruns_the_stage_and_downstream_only(env):
    losses = sorted((env["copy"] / "translators" / "losses").glob("*.py"))[-1]
    original = losses.read_text()
    try:
        losses.write_text(original + "\n# edited by test_workflow_run\n")
        out = run(env, "-n", TARGET).stdout
        counts = job_counts(out)
        assert counts["translator_train"] == 1 and counts["refine"] == 1, out[-3000:]
        assert counts["segmenter_train"] >= 1 and counts["evaluate"] >= 1 and counts["final_table"] == 1
        assert "prepare" not in counts and "minicity" not in counts
        assert "Params have changed since last execution" in out
    finally:
        losses.write_text(original)
    segment_file = env["copy"] / "segmenters" / "evaluate.py"
    original = segment_file.read_text()
    try:
        segment_file.write_text(original + "\n# edited by test_workflow_run\n")
        counts = job_counts(run(env, "-n", TARGET).stdout)
        assert counts["segmenter_train"] >= 1 and counts["evaluate"] >= 1
        assert "translator_train" not in counts and "refine" not in counts and "prepare" not in counts
    finally:
        segment_file.write_text(original)
    assert "Nothing to be done" in run(env, "-n", TARGET).stdout


def test_other_spelling_of_the_interpreter_reruns_nothing(env):
    """`snakemake` (its entry script runs .../bin/python3) after `python -m snakemake` (make bench)
    plans nothing: the jobs record one spelling of the interpreter (wflib.pipeline_config.job_interpreter)."""
    exe = Path(sys.executable)
    other = next((exe.with_name(n) for n in ("python3", "python")
                  if exe.with_name(n) != exe and exe.with_name(n).exists() and exe.with_name(n).samefile(exe)), None)
    if other is None:
        pytest.skip(f"no python/python3 beside {exe} that is the same interpreter")
    argv = [str(other), *command(env, "-n", TARGET)[1:]]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "Nothing to be done" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


def test_a_copy_of_the_workflow_at_another_path_reruns_nothing(env, tmp_path):
    """The finished DAG, planned from a copy of the repository at another path (a moved checkout, a
    clone), plans nothing: no job's params or shell template holds a path of this machine (the
    interpreter, the launcher and the repository are the shell prefix's variables, workflow/rules/common.smk)."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(env["copy"], moved, ignore=shutil.ignore_patterns("__pycache__"))
    argv = command(env, "-n", TARGET)
    argv[argv.index("--snakefile") + 1] = str(moved / "Snakefile")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "Nothing to be done" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


def test_warmup_order_trains_round_1_on_its_own_warmup_segmenter(env, tmp_path):
    """uda.bdl.round_labels: warmup (BDL's Algorithm 1): round 1 first trains a warm-up segmenter without
    labels on round 1's source, and round 1 starts from it and trains on its labels, not round 0's."""
    warm = tmp_path / "warmup.yaml"
    warm.write_text(yaml.safe_dump({"uda": {"bdl": {"round_labels": "warmup"}}}))
    target = "results/minicity_bdl_none.csv"
    result = run(env, target, "--configfile", str(env["config"]), str(warm))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    work = env["work"]
    table = pd.read_csv(work / target)
    assert table["round"].tolist() == [0, 1]
    assert "pseudo data/pseudo/minicity/bdl_none/r1_warmup" in table["stage"].iloc[1]
    warmup = "results/runs/minicity/bdl_none/r1_warmup/final.pth"
    assert (work / warmup).exists()
    meta = json.loads((work / "data/pseudo/minicity/bdl_none/r1_warmup/meta.json").read_text())
    assert meta["checkpoint"] == warmup
    assert not (work / "data/pseudo/minicity/bdl_none/r0").exists()  # round 0's labels train nothing here
    warm_cmd = _launched(work / "logs/minicity/segment/bdl_none_r1_warmup.log")
    round_cmd = _launched(work / "logs/minicity/segment/bdl_none_r1.log")
    assert "--pseudo" not in warm_cmd and "--init results/runs/minicity/bdl_none/r0/final.pth" in warm_cmd
    assert "--pseudo data/pseudo/minicity/bdl_none/r1_warmup" in round_cmd and f"--init {warmup}" in round_cmd
    assert (work / "results/plots/minicity/bdl_none/r1_warmup/pseudo.png").stat().st_size > 0
    assert "Nothing to be done" in run(env, "-n", target, "--configfile", str(env["config"]), str(warm)).stdout


def _launched(log: Path) -> str:
    """The training command the resumable launcher ran (its `resumable: <command>` line)."""
    return next(line for line in log.read_text().splitlines()
                if line.startswith("resumable: ") and " -m segmenters train " in line)


def test_more_rounds_in_the_config_rebuild_a_finished_run(env, tmp_path):
    """A finished run whose config now allows more rounds trains them (rule round_plan).

    Snakemake checks no params of a job that waits on a checkpoint round, so before round_plan this
    answered "Nothing to be done" and kept the 2-round table. Runs last: it adds round 2 to the
    module's run.
    """
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump({"pairs": {"minicity": {"rounds": {"min_delta": -100.0, "max": 2}}}}))
    plan = run(env, "-n", TARGET, "--configfile", str(env["config"]), str(more))
    counts = job_counts(plan.stdout)
    assert counts["round_plan"] == 1 and counts["evaluate"] == 1 and counts["final_table"] == 1, plan.stdout[-3000:]
    assert "translator_train" not in counts and "prepare" not in counts  # only round 2's own jobs
    result = run(env, TARGET, "--configfile", str(env["config"]), str(more))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    table = pd.read_csv(env["work"] / TARGET)
    assert table["round"].tolist() == [0, 1, 2]
    assert table["next_round"].tolist() == [True, True, False]  # round 2 is rounds.max
    assert "Nothing to be done" in run(env, "-n", TARGET, "--configfile", str(env["config"]), str(more)).stdout
