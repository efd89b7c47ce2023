"""Where a process sits in a multi-process job, read from its launcher's environment (docs/multigpu.md).

Both stages start training with ``--launcher none|pytorch|slurm`` (mmengine's names): under
``torchrun`` the ranks come from ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` and the rendezvous from
``MASTER_ADDR`` / ``MASTER_PORT``; under ``srun`` from ``SLURM_PROCID`` / ``SLURM_LOCALID`` /
``SLURM_NTASKS``, the first host of ``SLURM_NODELIST`` and a port derived from the job id. The
segmenters (segmenters/distributed.py) and the translators (translators/distributed.py) read them
here, so both stages agree on ranks and ports. No torch import (``domains`` stays light).
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Mapping

#: ``--launcher`` choices (mmengine's names)
LAUNCHERS = ("none", "pytorch", "slurm")
#: rendezvous port without a SLURM job id (mmengine's default)
DEFAULT_MASTER_PORT = 29500


class LauncherEnvError(ValueError):
    """The launcher's environment is missing a variable or holds one that cannot be used."""


@dataclass(frozen=True)
class Ranks:
    """Global rank, rank on its node, number of processes."""

    rank: int
    local_rank: int
    world_size: int


def env_int(env: Mapping[str, str], name: str, launcher: str) -> int:
    """``env[name]`` as an int, or :class:`LauncherEnvError` saying how to start the processes."""
    if name not in env:
        how = "torchrun" if launcher == "pytorch" else "srun inside a SLURM allocation"
        raise LauncherEnvError(f"--launcher {launcher}: environment variable {name} is not set (start the "
                               f"command with {how}, or use --launcher none; docs/multigpu.md)")
    try:
        return int(env[name])
    except ValueError:
        raise LauncherEnvError(f"--launcher {launcher}: environment variable {name}={env[name]!r} is not "
                               "an integer") from None


def ranks(launcher: str, env: Mapping[str, str], gpu_count: int | None = None) -> Ranks:
    """The :class:`Ranks` that ``launcher`` gives this process.

    Under SLURM without ``SLURM_LOCALID`` the local rank is ``SLURM_PROCID % gpu_count`` (mmengine's
    fallback) when ``gpu_count`` is given, else the variable is required."""
    if launcher == "none":
        return Ranks(0, 0, 1)
    if launcher == "pytorch":
        found = Ranks(env_int(env, "RANK", launcher), env_int(env, "LOCAL_RANK", launcher),
                      env_int(env, "WORLD_SIZE", launcher))
    elif launcher == "slurm":
        rank = env_int(env, "SLURM_PROCID", launcher)
        world = env_int(env, "SLURM_NTASKS", launcher)
        if "SLURM_LOCALID" in env or gpu_count is None:
            local = env_int(env, "SLURM_LOCALID", launcher)
        else:
            local = rank % max(1, gpu_count)
        found = Ranks(rank, local, world)
    else:
        raise LauncherEnvError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if not 0 <= found.rank < found.world_size or found.local_rank < 0:
        raise LauncherEnvError(f"--launcher {launcher}: rank {found.rank} (local {found.local_rank}) does not fit "
                               f"a world of {found.world_size} process(es)")
    return found


def slurm_master_port(job_id: str | int | None) -> int:
    """Rendezvous port of a SLURM job: ``20000 + job_id % 20000`` (:data:`DEFAULT_MASTER_PORT` without
    a job id), so concurrent jobs of either stage sharing a node get different ports."""
    if job_id is None or not str(job_id).isdigit():
        return DEFAULT_MASTER_PORT
    return 20000 + int(job_id) % 20000


def first_host(nodelist: str) -> str:
    """First host name of a SLURM node list: ``gpu[07-09,12],cpu1`` -> ``gpu07`` (what
    ``scontrol show hostnames`` prints first), for machines without scontrol."""
    head = re.match(r"([^,\[]*)(\[([^\]]*)\])?", nodelist.strip())
    if head is None or not head.group(1) and not head.group(3):
        raise LauncherEnvError(f"--launcher slurm: cannot read a host from SLURM_NODELIST={nodelist!r}")
    prefix, ranges = head.group(1), head.group(3)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_master_addr(nodelist: str) -> str:
    """First host of ``nodelist`` via ``scontrol show hostnames``, else :func:`first_host`."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return out[0] if out else first_host(nodelist)


__all__ = ["DEFAULT_MASTER_PORT", "LAUNCHERS", "LauncherEnvError", "Ranks", "env_int", "first_host", "ranks",
           "slurm_master_addr", "slurm_master_port"]
