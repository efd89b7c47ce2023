"""Multi-process (multi-GPU / multi-node) training jobs: the command and the SLURM resources.

Config keys ``resources.<preset>.<group>.gpus`` (processes per node, one per GPU; default 1) and
``.nodes`` (default 1) of a training rule group (``segment``, ``translate``; docs/multigpu.md).
With ``gpus x nodes > 1``:

* locally: ``<python> -m torch.distributed.run --standalone --nproc_per_node <gpus> -m <package>
  train --launcher pytorch ...`` (``torch.distributed.run`` is what the ``torchrun`` script runs;
  invoking it through the workflow's interpreter keeps the environment);
* under SLURM (:func:`launch_mode`: the SLURM executor's job, or ``nodes > 1``, which only SLURM can
  place): ``srun --nodes=<nodes> --ntasks-per-node=<gpus> --kill-on-bad-exit=1 --cpus-per-task=<threads>
  <python> -m <package> train --launcher slurm ...`` inside an allocation of ``nodes`` nodes with
  ``gpus`` tasks each (:func:`job_resources`: the ``mpi`` resource makes the SLURM plugin skip its
  own ``srun -n1`` wrapper and request the task geometry; GPU jobs get ``--gpus=<gpus>`` on one
  node or ``--gres=gpu:<gpus>`` per node on several).

The command prefix goes inside the resumable launcher (``resumable.py ... -- <prefix> ...``), which
appends ``--resume`` at the end. One process keeps the plain ``<python> -m <package> train``.
"""
from __future__ import annotations

import shlex
from typing import Any, Mapping

LOCAL = "local"
SLURM = "slurm"
#: resource keys :func:`job_resources` returns (None = not set, Snakemake drops the key)
RESOURCE_KEYS = ("gpu", "nodes", "mpi", "tasks", "tasks_per_node", "tasks_per_gpu", "gres")
#: rule groups whose training CLI has ``--launcher`` (the only ones where gpus/nodes may exceed 1)
LAUNCHER_GROUPS = ("segment", "translate")


class DistConfigError(ValueError):
    """A gpus / nodes setting that cannot be run (the message names the config key)."""


def _allocation_tasks(env: Mapping[str, str]) -> int | None:
    """Tasks of the SLURM allocation as its variables give them (None when they are absent)."""
    if str(env.get("SLURM_NTASKS", "")).isdigit():
        return int(env["SLURM_NTASKS"])
    per_node, nodes = str(env.get("SLURM_NTASKS_PER_NODE", "")), str(env.get("SLURM_JOB_NUM_NODES", "1"))
    return int(per_node) * int(nodes) if per_node.isdigit() and nodes.isdigit() else None


def launch_mode(executor: str | None, gpus: int = 1, nodes: int = 1, env: Mapping[str, str] | None = None) -> str:
    """``slurm`` (start the processes with ``srun``) or ``local`` (torchrun) for a job of
    ``gpus x nodes`` processes.

    ``slurm`` when Snakemake submits through its SLURM executor (``slurm``; ``slurm-jobstep`` in the
    allocation), when the job spans several nodes, or when it runs inside a SLURM job (``SLURM_JOB_ID``
    in ``env``): the SLURM executor's job runs the rule's shell through a nested *local* Snakemake
    whose environment keeps only the job's identity (no task counts). An allocation whose variables
    give another task count (e.g. an interactive ``salloc`` with one task) keeps torchrun, as do
    local runs and dry runs.
    """
    if nodes > 1 or (executor or "").startswith("slurm"):
        return SLURM
    if gpus * nodes > 1 and env is not None and env.get("SLURM_JOB_ID"):
        tasks = _allocation_tasks(env)
        if tasks is None or tasks == gpus * nodes:
            return SLURM
    return LOCAL


def processes(spec: Mapping[str, Any], where: str = "resources") -> tuple[int, int]:
    """``(gpus, nodes)`` of a resource spec (the schema's defaults filled in), checked to be integers >= 1."""
    out = []
    for key in ("gpus", "nodes"):
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DistConfigError(f"config key '{where}.{key}' must be an integer >= 1, got {value!r}")
        out.append(value)
    return out[0], out[1]


def train_command(python: str, package: str, gpus: int = 1, nodes: int = 1, mode: str = LOCAL,
                  cpus_per_task: int | None = None) -> str:
    """Shell words that start ``<package> train`` with ``gpus x nodes`` processes (module docstring).
    ``python``: the interpreter as one shell word, quoted by the caller (the workflow passes
    ``"$UDA_PYTHON"``, a variable of its shell prefix, so that no path of this machine enters the
    params Snakemake compares);
    ``cpus_per_task``: CPUs of each srun task (the rule's ``threads``, which the allocation gave each
    task: the nested srun inherits no ``--cpus-per-task``, and the SLURM executor's job environment
    has no ``SLURM_CPUS_PER_TASK`` to read it from).

    >>> train_command("py", "segmenters")
    'py -m segmenters train'
    >>> train_command("py", "segmenters", 2)
    'py -m torch.distributed.run --standalone --nproc_per_node 2 -m segmenters train --launcher pytorch'
    """
    if mode not in (LOCAL, SLURM):
        raise DistConfigError(f"launch mode must be {LOCAL!r} or {SLURM!r}, got {mode!r}")
    if gpus < 1 or nodes < 1:
        raise DistConfigError(f"gpus and nodes must be >= 1, got gpus={gpus}, nodes={nodes}")
    entry = f"{python} -m {shlex.quote(package)} train"
    if gpus * nodes == 1:
        return entry
    if mode == LOCAL:
        if nodes > 1:
            raise DistConfigError(f"nodes={nodes}: several nodes need SLURM (run with --profile profiles/slurm)")
        return (f"{python} -m torch.distributed.run --standalone --nproc_per_node {gpus} "
                f"-m {shlex.quote(package)} train --launcher pytorch")
    cpus = f" --cpus-per-task={int(cpus_per_task)}" if cpus_per_task else ""
    return f"srun --nodes={nodes} --ntasks-per-node={gpus} --kill-on-bad-exit=1{cpus} {entry} --launcher slurm"


def job_resources(gpus: int, nodes: int, gpu_job: bool) -> dict[str, Any]:
    """Snakemake resources of a training job with ``gpus`` processes on each of ``nodes`` nodes
    (keys :data:`RESOURCE_KEYS`; None = unset). ``gpu_job``: each process gets one GPU.

    One process: only ``gpu`` (1 or 0), as before. Several (read by snakemake-executor-plugin-slurm):
    ``mpi`` (no ``srun -n1`` wrapper: the command's own ``srun`` starts the tasks), ``nodes``,
    ``tasks_per_node = gpus`` (or ``tasks = nodes`` with one process per node: the plugin refuses
    ``tasks_per_node`` 1), GPUs as ``gpu = gpus`` on one node (``--gpus``, also the local
    scheduler's count) or ``gres = gpu:<gpus>`` per node on several, and ``tasks_per_gpu = 1`` where
    the plugin would otherwise turn ``tasks`` into ``--ntasks-per-gpu`` (``--ntasks-per-gpu`` and
    ``--ntasks-per-node`` cannot be combined, so it is left out with ``tasks_per_node``).
    """
    out: dict[str, Any] = dict.fromkeys(RESOURCE_KEYS)
    if gpus * nodes == 1:
        out["gpu"] = int(bool(gpu_job))
        return out
    out.update(mpi=True, nodes=nodes)
    if gpus > 1:
        out["tasks_per_node"] = gpus
    else:
        out["tasks"] = nodes
    if not gpu_job:
        out["gpu"] = 0
    elif nodes == 1:
        out["gpu"] = gpus
    else:
        out["gres"] = f"gpu:{gpus}"
    if gpu_job and gpus == 1:
        out["tasks_per_gpu"] = 1
    return out


def check_resources(resources: Mapping[str, Mapping[str, Mapping[str, Any]]],
                    launcher_groups: tuple[str, ...] = LAUNCHER_GROUPS) -> None:
    """Every ``resources.<preset>.<group>`` has valid gpus/nodes, and only groups whose training CLI
    takes ``--launcher`` ask for more than one process (else the setting would be ignored)."""
    for preset, groups in resources.items():
        for group, spec in (groups or {}).items():
            where = f"resources.{preset}.{group}"
            gpus, nodes = processes(spec or {}, where)
            if gpus * nodes > 1 and group not in launcher_groups:
                raise DistConfigError(f"config key '{where}.gpus'/'{where}.nodes' asks for {gpus} x {nodes} processes, "
                                      f"but only the rule groups {', '.join(launcher_groups)} run multi-process "
                                      "training; keep gpus: 1 and nodes: 1 here")
