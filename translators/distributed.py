"""Multi-process (multi-GPU, multi-node) training of the translators: launchers and DDP.

``python -m translators train --launcher {none,pytorch,slurm}`` (docs/multigpu.md):

* ``pytorch``: started by ``torchrun`` -- RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT
  come from the environment.
* ``slurm``: started by ``srun`` -- SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and SLURM_NODELIST;
  the master address is the first host of the node list (``scontrol show hostnames``, or parsed
  when scontrol is missing) unless MASTER_ADDR is set; MASTER_PORT, if unset, is derived from
  SLURM_JOB_ID (29500 without one). These are mmengine's conventions (``init_dist``) with the
  segmenters' port rule (segmenters/distributed.py), so one launcher prefix starts both stages.

Backend nccl on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.

:func:`wrap_networks` puts every trained network of a method (G, D, F, SemST's G_g/F_g/S,
CycleGAN's two G and two D, ...) into its own ``DistributedDataParallel`` *without* changing the
method's module tree: the network's ``forward`` / ``forward_with_features`` are routed through its
DDP wrapper when they build a graph for that network's parameters (grad mode on and the
parameters trainable), and called directly otherwise (no_grad key embeddings, the frozen
discriminator in the generator step, sample grids). So ``method.state_dict()`` keeps its keys and
checkpoints load in a single process as before, and a discriminator frozen by
``set_requires_grad`` is never asked to reduce gradients it does not get.

DDP options (measured in tests/test_translator_ddp.py, see docs/multigpu.md):
``find_unused_parameters=False``: in every step either all parameters of a wrapped network get a
gradient or none does (SemST's scale head S when neither a ``fused`` GAN term nor feedback uses
the fused image: no gradient hook fires, so DDP awaits nothing), also where a network runs twice
per step (CUT/SemST's G: translation, then ``encode_only`` on its output; CycleGAN's G_B on real
and on fake images) -- autograd sums both uses before the parameter's gradient hook. The
unused-parameter search (or ``static_graph``) gives the same numbers with an extra graph
traversal per forward. Buffers are not re-broadcast every forward unless a network has BatchNorm:
the others (blur kernels, spectral-norm vectors) are constants or follow from the weights alone,
which are identical on every rank.
"""
from __future__ import annotations

import datetime
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from domains import launcher as launch_env
from translators.config import ConfigError

log = logging.getLogger(__name__)

#: network methods the training steps call; these go through DDP when they need gradient sync
ROUTED_METHODS = ("forward", "forward_with_features")
_ROUTE_KEY = "_ddp_route"


class LauncherError(ConfigError):
    """``--launcher`` cannot start: a variable is missing, or the device setting contradicts it."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, local rank and its device (None: not chosen)."""

    launcher: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        """Whether a process group was started (any launcher but ``none``)."""
        return self.launcher != "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()


# ---------------------------------------------------------------------- launchers
def launcher_env(launcher: str, env: dict | None = None) -> dict:
    """(rank, world_size, local_rank, master_addr, master_port) that ``launcher`` hands this process.

    Ranks as :func:`domains.launcher.ranks` reads them (under SLURM without SLURM_LOCALID: SLURM_PROCID
    mod the GPU count). ``pytorch``: MASTER_ADDR, MASTER_PORT as torchrun sets them. ``slurm``:
    MASTER_ADDR (if unset) the first host of SLURM_NODELIST; MASTER_PORT (if unset)
    :func:`domains.launcher.slurm_master_port` of SLURM_JOB_ID."""
    env = dict(os.environ if env is None else env)
    if launcher not in ("pytorch", "slurm"):
        raise LauncherError(f"--launcher must be one of {', '.join(launch_env.LAUNCHERS)}, got {launcher!r}")
    try:
        found = launch_env.ranks(launcher, env, gpu_count=torch.cuda.device_count())
        if launcher == "pytorch":
            missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in env]
            if missing:
                raise launch_env.LauncherEnvError(
                    f"--launcher pytorch: environment variable {missing[0]} is not set (start the command with "
                    "torchrun, or use --launcher none; docs/multigpu.md)")
            addr, port = env["MASTER_ADDR"], launch_env.env_int(env, "MASTER_PORT", launcher)
        else:
            if "MASTER_ADDR" in env:
                addr = env["MASTER_ADDR"]
            elif "SLURM_NODELIST" in env:
                addr = launch_env.slurm_master_addr(env["SLURM_NODELIST"])
            else:
                raise launch_env.LauncherEnvError("--launcher slurm: neither MASTER_ADDR nor SLURM_NODELIST is "
                                                  "set (start the command with srun inside an allocation)")
            port = (launch_env.env_int(env, "MASTER_PORT", launcher) if "MASTER_PORT" in env
                    else launch_env.slurm_master_port(env.get("SLURM_JOB_ID")))
    except launch_env.LauncherEnvError as err:
        raise LauncherError(str(err)) from None
    return dict(rank=found.rank, world_size=found.world_size, local_rank=found.local_rank, master_addr=addr,
                master_port=port)


def rank_device(setting: str, local_rank: int) -> torch.device:
    """The device of one rank: ``cuda:LOCAL_RANK`` for ``auto`` (with CUDA) or ``cuda``; ``cpu``.
    A device index (``cuda:1``) names one GPU for every rank, which a launcher cannot use."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cpu":
        return torch.device("cpu")
    if setting == "cuda":
        if not torch.cuda.is_available():
            raise LauncherError("train.device=cuda (--device) but CUDA is not available")
        if local_rank >= torch.cuda.device_count():
            raise LauncherError(f"--launcher: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                                f"GPU(s) are visible; start at most one process per GPU")
        return torch.device("cuda", local_rank)
    raise LauncherError(f"train.device={setting} (--device) with a launcher: use auto, cuda or cpu "
                        f"(each rank takes cuda:LOCAL_RANK)")


def init_distributed(launcher: str, device_setting: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Start the process group for ``launcher`` (nothing for ``none``) and pick this rank's device.

    Raises :class:`LauncherError` (the CLI exits 2) naming the missing variable or bad option."""
    if launcher == "none":
        return DistContext()
    info = launcher_env(launcher)
    os.environ.setdefault("MASTER_ADDR", str(info["master_addr"]))
    os.environ.setdefault("MASTER_PORT", str(info["master_port"]))
    for name in ("rank", "world_size", "local_rank"):  # the launcher's values win, as in mmengine
        os.environ[name.upper()] = str(info[name])
    device = rank_device(device_setting, info["local_rank"])
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=info["rank"], world_size=info["world_size"],
                                timeout=datetime.timedelta(seconds=timeout_s))
    ctx = DistContext(launcher, info["rank"], info["world_size"], info["local_rank"], device)
    log.log(logging.INFO if ctx.is_main else logging.DEBUG, "rank %d/%d (local %d) on %s, backend %s, master %s:%s",
            ctx.rank, ctx.world_size, ctx.local_rank, device, backend, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
    return ctx


def shutdown_distributed(ctx: DistContext) -> None:
    """Destroy the process group started by :func:`init_distributed` (no-op otherwise)."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------- collectives
def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over all ranks (a new tensor). NaN/Inf on one rank make the mean
    non-finite on every rank, so the non-finite-loss check raises on all of them together."""
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one rank (identical answer everywhere)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sync_rng_from_rank0(device: torch.device) -> None:
    """Give every rank rank 0's torch RNG state (CPU and this rank's CUDA device).

    The model-side random draws (CUT/SemST patch ids, CycleGAN's image pool) must be the same on
    every rank for a 2x1 step to equal a batch-2 step; seeding does that for a fresh run, and after
    ``--resume`` rank 0's checkpointed CUDA state belongs to *its* GPU, so it is copied here."""
    states = [torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None]
    dist.broadcast_object_list(states, src=0, device=device if device.type == "cuda" else None)
    torch.set_rng_state(states[0])
    if device.type == "cuda" and states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)


# ---------------------------------------------------------------------- DDP
def trained_networks(method: nn.Module) -> dict[str, nn.Module]:
    """Direct sub-networks of ``method`` that own parameters of its optimiser groups, by name."""
    trained = {id(p) for params in method.param_groups().values() for p in params}
    return {name: net for name, net in method.named_children() if any(id(p) in trained for p in net.parameters())}


class _Route:
    """Sends calls of a network's :data:`ROUTED_METHODS` through its DDP wrapper when they build a
    graph for its parameters; a nested call (``forward`` calling ``forward_with_features``) and
    calls without gradient go straight to the network."""

    def __init__(self, net: nn.Module, ddp: DistributedDataParallel) -> None:
        self.ddp, self.inside = ddp, False
        self.params = [p for p in net.parameters()]
        self.orig = {name: getattr(net, name) for name in ROUTED_METHODS if callable(getattr(net, name, None))}
        for name in self.orig:
            object.__setattr__(net, name, self._entry(name))

    def _needs_sync(self) -> bool:
        return torch.is_grad_enabled() and not self.inside and any(p.requires_grad for p in self.params)

    def _entry(self, name: str) -> Callable:
        def call(*args, **kwargs):
            target = kwargs.pop(_ROUTE_KEY, None)
            if target is not None:       # DDP's forward calling back into the network
                return self.orig[target](*args, **kwargs)
            if not self._needs_sync():
                return self.orig[name](*args, **kwargs)
            self.inside = True
            try:
                return self.ddp(*args, **{_ROUTE_KEY: name}, **kwargs)
            finally:
                self.inside = False
        call.__name__ = name
        return call


def _buffer_sync(sync: bool) -> dict:
    """DDP's per-forward buffer broadcast switch under its name in this torch version
    (``forward_sync_buffers`` replaces ``broadcast_buffers``; both keep the sync at construction)."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": sync} if "forward_sync_buffers" in params else {"broadcast_buffers": sync}


def _has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def wrap_networks(method: nn.Module, ctx: DistContext) -> dict[str, DistributedDataParallel]:
    """Wrap every trained network of ``method`` in DDP (after ``setup`` and any weight loading:
    DDP broadcasts rank 0's parameters and buffers at construction). Returns the wrappers by name;
    the method's own attributes and ``state_dict`` are unchanged (module docstring)."""
    device = ctx.device or torch.device("cpu")
    wrappers = {}
    for name, net in trained_networks(method).items():
        bn = _has_batchnorm(net)
        if bn and device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(net)  # reuses the Parameter objects (optimisers stay valid)
            net.to(device)
        elif bn:
            log.warning("%s has BatchNorm: on CPU its batch statistics stay per process (SyncBatchNorm needs CUDA)",
                        name)
        ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                      output_device=device.index if device.type == "cuda" else None,
                                      find_unused_parameters=False, **_buffer_sync(bn))
        _Route(net, ddp)
        wrappers[name] = ddp
    log.info("DDP over %d ranks: %s", ctx.world_size, ", ".join(wrappers))
    return wrappers
