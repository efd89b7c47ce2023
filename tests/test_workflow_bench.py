"""The minicity benchmark scale (pair ``minibench``, ``config/experiments/minibench.yaml``):
its configuration plans every row, and a 2-iteration run of every row completes, aggregated
by the benchmark driver's own command.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
sys.path.insert(0, str(REPO / "benchmarks"))

import minicity_uda  # noqa: E402

ROWS = {"source_only_none", "oracle_none", "source_only_semst", "bdl_none", "bdl_semst", "sepico_none",
        "sepico_semst", "bdl_cut", "proda_none"}


def test_bench_plans_every_row(tmp_path):
    """`snakemake -n` of one seed of the benchmark plans every row's round 0 and the three tables."""
    cmd = minicity_uda.snakemake_command("minibench", 1, tmp_path, 2, minicity_uda.EXPERIMENT, dry_run=True)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    planned = set()
    for row in ROWS:
        if f"results/minibench_{row}.csv" in out.stdout:
            planned.add(row)
    assert planned == ROWS
    assert "--seed 1" in out.stdout        # the seed override reaches the training jobs
    assert "--appearance-gap 0.5" in out.stdout and "--n-train 500" in out.stdout


def test_seed_config_moves_both_training_seeds(tmp_path):
    cmd = minicity_uda.snakemake_command("minibench", 2, tmp_path, 2, Path("/e.yaml"))
    assert yaml.safe_load((tmp_path / "seed.yaml").read_text()) == {
        "pairs": {"minibench": {"translator": {"seed": 2}, "segmenter": {"seed": 2}}}}
    # targets before the multi-value --configfile, which would swallow them; the seed file merged last
    assert cmd.index("results/minibench_comparison.html") < cmd.index("--configfile")
    assert cmd[-1] == str(tmp_path / "seed.yaml")


def test_two_iteration_run_of_every_row(tmp_path):
    """Every row of the benchmark runs end to end at 2 iterations (few images, one round after
    round 0) through the driver, which writes the comparison and the wall time. (Aggregation over
    several seeds is tested on hand-made results in test_workflow_compare.py.)"""
    experiment = yaml.safe_load(minicity_uda.EXPERIMENT.read_text())
    experiment["pairs"] = {"minibench": {
        "minicity": {"args": {"n_source": 6, "n_train": 4, "n_val": 3}},
        "translator": {"iters": 2, "round_iters": 1, "cfg_options": {"train.save_every": 1, "train.sample_every": 2}},
        "segmenter": {"max_iters": 2, "round_iters": 2},
        "rounds": {"max": 1, "min_delta": -1.0}}}   # round 1 always runs, then the cap stops it
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(experiment))
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "minicity_uda.py"), "--seeds", "3",
                           "--experiment", str(small), "--out", str(out), "--keep", str(tmp_path / "kept")],
                          capture_output=True, text=True,
                          timeout=1200)
    logs = "".join((p.read_text()[-3000:] for p in out.glob("seed*/snakemake.log")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    summary = pd.read_csv(out / "minibench_comparison.csv")
    assert set(summary["row"]) == ROWS
    rounds = pd.read_csv(out / "minibench_comparison_rounds.csv")
    assert set(rounds["seed"]) == {3}
    multi = rounds[rounds["uda"].isin(["bdl", "sepico"])]
    assert set(multi["round"]) == {0, 1}                      # every multi-round row ran its round 1
    assert set(rounds[rounds["uda"] == "proda"]["round"]) == {0, 1, 2, 3}
    # the references train as long as the longest row: their rounds run to the cap whatever the score
    refs = rounds[rounds["row"].isin(["source_only_none", "oracle_none"])]
    assert set(refs["round"]) == {0, 1}
    wall = pd.read_csv(out / "minibench_wall_time.csv")
    assert list(wall["seed"]) == [3] and (wall["wall_s"] > 0).all()
    assert "--seed 3" in (out / "seed3" / "snakemake.log").read_text()   # the seed reached the jobs
    assert (out / "minibench_comparison.html").stat().st_size > 0
    assert "gap closed" in proc.stdout.lower()
    # --keep: the seed's evaluation files, no checkpoints or images, and they aggregate like the run
    kept = tmp_path / "kept" / "minibench_seed3"
    files = {p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()}
    assert "results/minibench/bdl_semst/r1.csv" in files and "results/minibench_uda_table.csv" in files
    assert "results/minibench/oracle_none/r0.confusion.npy" in files
    machine = json.loads((kept / "results/minibench_machine.json").read_text())   # which machine made these
    assert machine == minicity_uda.machine_info(2) and machine["cpu_capability"]
    assert not [f for f in files if f.endswith((".pth", ".pt", ".png")) or f.startswith("data/")]
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(REPO / "workflow" / "scripts" / "compare.py"), "--pair", "minibench",
                    "--runs", str(kept), "--seeds", "3", "--out", str(again)], check=True, capture_output=True)
    pd.testing.assert_frame_equal(pd.read_csv(again / "minibench_comparison.csv"), summary)


def test_keep_copies_evaluation_files_only(tmp_path):
    """kept_files / keep_seed select per-round scores, tables, translation scores and job benchmarks
    of the pair, and nothing else (checkpoints, images, other pairs' results)."""
    work, dest = tmp_path / "seed0", tmp_path / "kept"
    wanted = ["results/minibench_bdl_none.csv", "results/minibench/bdl_none/r0.csv",
              "results/minibench/bdl_none/r0.confusion.npy", "results/minibench/translation/cut/fcn.csv",
              "results/minibench/translation/cut/distortion.npy", "results/benchmarks/minibench/segment/x_r0.tsv",
              "results/minibench_machine.json"]
    other = ["results/runs/minibench/bdl_none/r0/final.pth", "results/minicity_bdl_none.csv",
             "results/minibench/bdl_none/pseudo.png", "data/prepared/minibench_gta5/meta.json",
             "results/plots/minibench/translation/cut_distortion.png"]
    for i, rel in enumerate(wanted + other):
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(str(i))
    assert [p.as_posix() for p in minicity_uda.kept_files(work, "minibench")] == sorted(wanted)
    assert minicity_uda.keep_seed(work, dest, "minibench") == len(wanted)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(wanted)
    assert (dest / wanted[1]).read_text() == "1"
