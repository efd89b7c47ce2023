"""A real single-node SLURM runs the smallest minicity DAG through profiles/slurm.

tests/slurm/start.sh installs Debian's slurmctld/slurmd/slurm-client/munge when missing and
starts the daemons (no systemd; fake GPU GRES; CPUs = this node's); stop.sh stops them by PID.
The test is SKIPPED, with start.sh's reason, only when SLURM cannot be installed here (no apt-get,
not root, no registry, a foreign SLURM); installed daemons that do not start FAIL it.
Known traps handled: no slurmdbd -> the profile queries squeue; snakemake is stopped with SIGINT
(it then scancels its jobs); threads are capped at the node's CPUs (--max-threads).

A second run trains one segmenter with 2 processes (``resources.tiny.segment.gpus: 2``, CPU/gloo,
one CPU each): one sbatch job with 2 tasks whose command starts them with ``srun --ntasks-per-node=2``
and ``--launcher slurm`` (docs/multigpu.md). It needs a node with >= 2 CPUs (otherwise it is left out with a warning).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture
def slurm_cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(REPO / "tests/slurm/start.sh"), str(state)], capture_output=True, text=True,
                           timeout=600)
    if start.returncode != 0:
        subprocess.run(["bash", str(REPO / "tests/slurm/stop.sh"), str(state)], capture_output=True, timeout=60)
        lines = (start.stdout + start.stderr).strip().splitlines()
        print("\n".join(lines))
        if start.returncode == 77:  # start.sh: SLURM cannot be installed or started on this machine
            pytest.skip(f"single-node SLURM unavailable: {lines[-1] if lines else 'start.sh gave no reason'}")
        pytest.fail(f"tests/slurm/start.sh failed with status {start.returncode}: " + "\n".join(lines[-20:]))
    try:
        yield state
    finally:
        stop = subprocess.run(["bash", str(REPO / "tests/slurm/stop.sh"), str(state)], capture_output=True, text=True,
                              timeout=120)
        print(stop.stdout + stop.stderr)


def _config(tmp_path: Path, gpus: int = 1, name: str = "config.yaml") -> Path:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["pairs"] = {"minicity": {
        # training rules request gpu=1 -> --gpus=1 on the fake GRES; the 2-process run trains on CPU
        "gpu": gpus == 1,
        "minicity": {"args": {"n_source": 6, "n_train": 4, "n_val": 4}},
        "segmenter": {"max_iters": 4, "val_interval": 1000}, "rounds": {"max": 0}}}
    for group in config["resources"]["tiny"].values():
        group["mem_mb"] = min(group["mem_mb"], 1500)
    if gpus > 1:  # one CPU per process (--cpus-per-task=1): 2 tasks fit a 2-CPU node
        config["resources"]["tiny"]["segment"].update(gpus=gpus, threads=1)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _run_under_slurm(tmp_path: Path, config: Path, target: str) -> str:
    """snakemake --profile profiles/slurm TARGET; returns its output (fails the test on error)."""
    cmd = _snakemake(tmp_path, config, "--profile", str(REPO / "profiles/slurm"), "--jobs", "2",
                     "--max-threads", str(os.cpu_count() or 1), "--latency-wait", "10",
                     "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=10",
                     "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2", target)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # snakemake scancels its jobs on SIGINT (SIGTERM would wait)
        out, _ = proc.communicate(timeout=60)
        pytest.fail("snakemake under SLURM timed out:\n" + out[-5000:])
    assert proc.returncode == 0, out[-6000:]
    return out


def _snakemake(tmp_path: Path, config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
            "--configfile", str(config), "--workflow-profile", "none", *args]


def test_smallest_dag_runs_under_slurm(slurm_cluster, tmp_path):
    config = _config(tmp_path)
    target = "results/minicity_source_only_none.csv"
    # data locally (cheap), training and evaluation through the SLURM profile
    local = subprocess.run(_snakemake(tmp_path, config, "--cores", "2", "data/prepared/minicity_gta5",
                                      "data/prepared/minicity_cityscapes"),
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    out = _run_under_slurm(tmp_path, config, target)

    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out))
    assert len(submitted) == 2, out[-4000:]  # segmenter_train + evaluate; final_table/all are local rules
    assert any("rule_segmenter_train" in log for log in submitted.values())
    for job_id, log in submitted.items():
        assert Path(log).is_file(), log  # SLURM's own job log (slurm-keep-successful-logs)
    train_log = (tmp_path / "logs/minicity/segment/source_only_none_r0.log").read_text()
    seen = re.search(r"SLURM_JOB_ID=(\d+)", train_log)
    assert seen and seen.group(1) in submitted, train_log[:2000]  # the training job saw its SLURM job id
    assert "CUDA_VISIBLE_DEVICES=0" in train_log  # gpu=1 mapped to --gpus=1 on the fake GRES

    table = pd.read_csv(tmp_path / target)
    assert table["round"].tolist() == [0] and bool(table["best"].iloc[0])
    assert {"road", "bicycle", "mIoU", "aAcc", "mAcc"} <= set(table.columns)
    assert table["mIoU"].notna().all()

    _two_task_training(tmp_path)


def _node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=30)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.split() else 0


def _two_task_training(tmp_path: Path) -> None:
    """resources.tiny.segment.gpus = 2: one SLURM job, 2 tasks (srun, --launcher slurm, gloo on CPU)."""
    if _node_cpus() < 2:  # the single-process DAG above passed; say why this part did not run
        warnings.warn(f"2-task SLURM training not run: the node has {_node_cpus()} CPU(s), it needs 2")
        return
    config = _config(tmp_path, gpus=2, name="config_2tasks.yaml")
    target = "results/runs/minicity/oracle_none/r0/final.pth"
    out = _run_under_slurm(tmp_path, config, target)
    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out))
    assert len(submitted) == 1, out[-4000:]  # the training job only (data are there)
    job_id = next(iter(submitted))
    job = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30).stdout
    assert re.search(r"\bNumTasks=2\b", job), job  # the allocation holds 2 tasks
    log = (tmp_path / "logs/minicity/segment/oracle_none_r0.log").read_text()
    # the command the job ran (resumable.py logs it): srun started the 2 ranks with --launcher slurm
    ran = next(line for line in log.splitlines() if "-m segmenters train" in line)
    assert "srun --nodes=1 --ntasks-per-node=2 --kill-on-bad-exit=1 --cpus-per-task=1" in ran, ran
    assert "--launcher slurm" in ran, ran
    assert "rank 0 of 2" in log and "rank 1 of 2" in log, log[-3000:]  # both ranks joined one gloo group
    assert "Distributed launcher: slurm" in log, log[-3000:]
    assert len(re.findall(r"segmenters\.checkpoint: wrote .*final\.pth", log)) == 1  # rank 0 wrote it, once
    final = torch.load(tmp_path / target, weights_only=True)
    assert final["meta"]["iter"] == 4 and final["meta"]["uda"] == "oracle"
