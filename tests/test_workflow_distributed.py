"""Multi-process training jobs in the workflow (workflow/lib/wflib/distributed.py, docs/multigpu.md):
the command prefix, the SLURM resources (checked against the SLURM plugin's own sbatch builder),
config checks, and a ``snakemake -n -p`` dry run of a config with ``gpus: 2``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow" / "lib"))

from wflib import distributed as wfd  # noqa: E402
from wflib.schema import fill_defaults  # noqa: E402


def resource(**spec) -> dict:
    """One resources.<preset>.<group> entry as the workflow has it: the schema's defaults filled in."""
    return fill_defaults(spec, "#/$defs/resource")


def resources(**presets) -> dict:
    """resources.<preset> sections (each rule group filled in with the schema's defaults)."""
    return {preset: fill_defaults(groups, "#/$defs/resource_groups") for preset, groups in presets.items()}


def test_train_command_forms():
    assert wfd.train_command("/env/bin/python", "segmenters") == "/env/bin/python -m segmenters train"
    assert wfd.train_command("py", "segmenters", 1, 1, wfd.SLURM) == "py -m segmenters train"  # one process: unchanged
    assert wfd.train_command("py", "segmenters", 4) == (
        "py -m torch.distributed.run --standalone --nproc_per_node 4 -m segmenters train --launcher pytorch")
    assert wfd.train_command("py", "segmenters", 4, 2, wfd.SLURM, cpus_per_task=8) == (
        "srun --nodes=2 --ntasks-per-node=4 --kill-on-bad-exit=1 --cpus-per-task=8 py -m segmenters train --launcher slurm")
    assert wfd.train_command("py", "segmenters", 2, 1, wfd.SLURM) == (
        "srun --nodes=1 --ntasks-per-node=2 --kill-on-bad-exit=1 py -m segmenters train --launcher slurm")
    # the translator rules use the same function
    assert wfd.train_command("py", "translators", 2).endswith("-m translators train --launcher pytorch")
    assert wfd.train_command('"$UDA_PYTHON"', "segmenters") == '"$UDA_PYTHON" -m segmenters train'  # a shell word
    with pytest.raises(wfd.DistConfigError, match="several nodes need SLURM"):
        wfd.train_command("py", "segmenters", 2, 2, wfd.LOCAL)
    with pytest.raises(wfd.DistConfigError, match="launch mode"):
        wfd.train_command("py", "segmenters", 2, 1, "k8s")


def test_launch_mode_follows_the_executor_and_the_allocation():
    assert wfd.launch_mode("local") == wfd.launch_mode(None) == wfd.launch_mode("dryrun") == wfd.LOCAL
    assert wfd.launch_mode("slurm") == wfd.launch_mode("slurm-jobstep") == wfd.SLURM
    assert wfd.launch_mode("local", 1, 2) == wfd.SLURM  # only SLURM places several nodes
    # the SLURM executor's job runs the shell through a nested local Snakemake inside the allocation,
    # whose environment keeps SLURM_JOB_ID but no task counts (snakemake-executor-plugin-slurm-jobstep)
    assert wfd.launch_mode("local", 2, 1, {"SLURM_JOB_ID": "7"}) == wfd.SLURM
    job = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"}
    assert wfd.launch_mode("local", 2, 1, job) == wfd.SLURM
    assert wfd.launch_mode("local", 2, 1, {"SLURM_JOB_ID": "7", "SLURM_NTASKS_PER_NODE": "2",
                                           "SLURM_JOB_NUM_NODES": "1"}) == wfd.SLURM
    # an allocation of another size (interactive salloc with one task) or no allocation: torchrun
    assert wfd.launch_mode("local", 4, 1, job) == wfd.LOCAL
    assert wfd.launch_mode("local", 2, 1, {"SLURM_NTASKS": "2"}) == wfd.LOCAL
    assert wfd.launch_mode("local", 1, 1, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) == wfd.LOCAL


def test_processes_and_config_checks():
    assert wfd.processes(resource()) == (1, 1)  # the schema's defaults
    assert wfd.processes(resource(gpus=8, nodes=2)) == (8, 2)
    # values the schema refuses (the workflow stops before) are still refused here, naming the key
    with pytest.raises(wfd.DistConfigError, match=r"'resources.paper.segment.gpus' must be an integer >= 1"):
        wfd.processes({**resource(), "gpus": 0}, "resources.paper.segment")
    with pytest.raises(wfd.DistConfigError, match="nodes"):
        wfd.processes({**resource(), "nodes": True}, "r")
    wfd.check_resources(resources(paper={"segment": {"gpus": 4, "nodes": 2}, "translate": {"gpus": 2},
                                         "evaluate": {"gpus": 1}}))
    with pytest.raises(wfd.DistConfigError, match=r"resources.paper.refine.gpus.*only the rule groups segment, translate"):
        wfd.check_resources(resources(paper={"refine": {"gpus": 2}}))


def _present(res: dict) -> dict:
    return {k: v for k, v in res.items() if v is not None}  # Snakemake drops None-valued resources


def test_job_resources():
    assert _present(wfd.job_resources(1, 1, gpu_job=True)) == {"gpu": 1}   # as before: gpu only
    assert _present(wfd.job_resources(1, 1, gpu_job=False)) == {"gpu": 0}
    assert _present(wfd.job_resources(2, 1, gpu_job=False)) == {"gpu": 0, "mpi": True, "nodes": 1, "tasks_per_node": 2}
    assert _present(wfd.job_resources(4, 1, gpu_job=True)) == {"gpu": 4, "mpi": True, "nodes": 1, "tasks_per_node": 4}
    assert _present(wfd.job_resources(4, 2, gpu_job=True)) == {"gres": "gpu:4", "mpi": True, "nodes": 2,
                                                               "tasks_per_node": 4}
    assert _present(wfd.job_resources(1, 3, gpu_job=True)) == {"gres": "gpu:1", "mpi": True, "nodes": 3, "tasks": 3,
                                                               "tasks_per_gpu": 1}


class _Resources(dict):
    __getattr__ = dict.__getitem__


class _Job:
    def __init__(self, resources: dict, threads: int) -> None:
        self.resources = _Resources(_present(resources))
        self.threads = threads


def _sbatch(res: dict, threads: int = 4) -> str:
    """The sbatch line snakemake-executor-plugin-slurm builds for a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = _Job({"mem_mb": 1000, "runtime": 10, **res}, threads)
    params = dict(run_uuid="u", slurm_logfile="l", comment_str="c", account="", partition="", workdir="")
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.mark.parametrize("gpus, nodes, gpu_job, flags, absent", [
    (1, 1, True, ["--gpus=1", "--cpus-per-task=4"], ["--nodes", "--ntasks-per-node"]),
    (2, 1, False, ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=4"], ["--gpus", "--ntasks-per-gpu"]),
    (4, 1, True, ["--nodes=1", "--ntasks-per-node=4", "--gpus=4"], ["--ntasks-per-gpu", "--gres"]),
    (4, 2, True, ["--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4"], ["--gpus=", "--ntasks-per-gpu"]),
    (1, 2, True, ["--nodes=2", "--ntasks=2", "--ntasks-per-gpu=1", "--gres=gpu:1"], ["--ntasks-per-node"]),
])
def test_slurm_plugin_requests_the_task_geometry(gpus, nodes, gpu_job, flags, absent):
    """gpus tasks on each of nodes nodes, `threads` CPUs per task, the GPUs per node."""
    line = _sbatch(wfd.job_resources(gpus, nodes, gpu_job))
    words = line.split()
    for flag in flags:
        assert flag in words, (flag, line)
    for flag in absent:
        assert not any(w.startswith(flag) for w in words), (flag, line)


def _snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--workflow-profile", "none", "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _config(tmp_path: Path, segment: dict, translate: dict | None = None, **extra) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["resources"]["tiny"]["segment"].update(segment)
    config["resources"]["tiny"]["translate"].update(translate or {})
    config.update(extra)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_dry_run_shows_torchrun_for_gpus_2(tmp_path):
    """gpus: 2 -> the segmenter training command (inside the resumable launcher, after `--`) is
    torchrun's with --launcher pytorch, for the generic rule and ProDA's stage rules alike, and the
    translator's with translate.gpus: 2; gpus: 1 keeps the plain command."""
    out = _snakemake(tmp_path, _config(tmp_path, {"gpus": 2}), "-n", "-p", "--forceall",
                     "results/runs/minicity/source_only_none/r0/final.pth",
                     "results/runs/minicity/proda_none/r0/final.pth")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    torchrun = (' -- "$UDA_PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2'   # the prefix's variable
                " -m segmenters train --launcher pytorch --arch deeplabv2")
    lines = [line for line in text.splitlines() if " -m segmenters train " in line]
    assert len(lines) == 2 and all(torchrun in line for line in lines), text[-3000:]
    assert "--uda source_only" in lines[0] + lines[1] and "--uda proda_warmup" in lines[0] + lines[1]
    assert "mpi=True" in text and "tasks_per_node=2" in text

    # the translator rules (python -m translators train --launcher) take the same prefix
    tr = _snakemake(tmp_path, _config(tmp_path, {}, {"gpus": 2}), "-n", "-p", "--forceall",
                    "results/runs/minicity/semst/r0/final.pt")
    assert tr.returncode == 0, (tr.stdout + tr.stderr)[-3000:]
    assert (' -- "$UDA_PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2'
            " -m translators train --launcher pytorch --config") in tr.stdout + tr.stderr

    one = _snakemake(tmp_path, _config(tmp_path, {"gpus": 1}), "-n", "-p", "--forceall",
                     "results/runs/minicity/source_only_none/r0/final.pth")
    assert one.returncode == 0, one.stderr[-2000:]
    assert ' -- "$UDA_PYTHON" -m segmenters train --arch' in one.stdout + one.stderr
    assert "torch.distributed.run" not in one.stdout + one.stderr and "mpi=" not in one.stdout + one.stderr


def test_bad_process_settings_stop_before_any_job(tmp_path):
    out = _snakemake(tmp_path, _config(tmp_path, {"gpus": 0}), "-n")
    assert out.returncode != 0 and "gpus" in out.stdout + out.stderr
    config = yaml.safe_load(_config(tmp_path, {}).read_text())
    config["resources"]["tiny"]["evaluate"]["gpus"] = 2
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _snakemake(tmp_path, path, "-n")
    assert out.returncode != 0 and "resources.tiny.evaluate.gpus" in out.stdout + out.stderr
