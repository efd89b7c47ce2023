"""Multi-process (multi-GPU / multi-node) training of the segmenters with mmengine's launcher.

``python -m segmenters train ... --launcher {none,pytorch,slurm}`` (docs/multigpu.md):

* ``pytorch``: one process per GPU started by ``torchrun --nproc_per_node N`` (``RANK``,
  ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment);
  ``slurm``: one process per task started by ``srun`` (``SLURM_PROCID``, ``SLURM_NTASKS``,
  ``SLURM_LOCALID``, ``SLURM_NODELIST``). The master port of a SLURM job defaults to one derived
  from ``SLURM_JOB_ID`` (:func:`domains.launcher.slurm_master_port`), so two jobs on one node do not collide.
* With CUDA, mmengine's Runner initialises the process group (NCCL) itself. Without CUDA (CPU
  runs, the tests) mmengine's ``init_dist`` cannot be used (it calls ``torch.cuda.set_device``
  unconditionally), so :func:`init_process_group` starts a gloo group first; the Runner only calls
  ``init_dist`` when no group exists.
* Batch semantics are mmseg's: the config's ``batch_size`` is per process (per GPU); the global
  batch is ``batch_size x world_size``. mmengine's samplers are distributed-aware (each rank draws
  every ``world_size``-th index of one seeded stream). Learning rates are not rescaled.

Model wrappers (:func:`model_wrapper_cfg`):

* a plain ``EncoderDecoder`` (``source_only``, ``oracle``) uses mmengine's
  ``MMDistributedDataParallel`` (mmseg's default): its ``train_step`` runs the forward through DDP,
  whose hooks all-reduce gradients during the backward pass;
* a UDA segmentor with its own ``train_step`` (BDL, SePiCo, LDR, ProDA: discriminators, EMA
  teachers, several optimisers, frozen modules, several forward passes per step) cannot go through
  ``MMDistributedDataParallel`` (its ``train_step`` replaces the module's by a single forward) nor
  ``MMSeparateDistributedDataParallel`` (it wraps every child in DDP, so ``decode_head.loss_by_feat``
  and the other attribute accesses of the methods break, and DDP's reducer rejects modules that are
  run with frozen parameters in one pass and trained in the next). :class:`UDADistributedWrapper`
  calls the method's own ``train_step``, and its optimiser wrappers are the gradient-synchronising
  :class:`GradSyncOptimWrapper` / :class:`GradSyncAmpOptimWrapper`: every ``step()`` first averages
  the gradients of its parameters over all ranks (bucketed all-reduce), whatever the forward
  passes were. So every method trains with the same update as one process on the global batch
  (up to per-rank loss normalisation and BatchNorm, as with DDP).

``sync_bn`` (config key, default False): BatchNorm layers become ``torch.nn.SyncBatchNorm`` under
a launcher (mmengine's ``cfg.sync_bn = 'torch'``), so BN statistics are taken over the global batch.
torch's SyncBatchNorm has no CPU implementation: on CPU it is refused.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from domains import launcher as launch_env

from . import compat
from .collectives import all_gather_cat, all_reduce_sum_, barrier, is_main_process, world_size  # noqa: F401

compat.install_mmcv_ops_stand_in()

from mmengine.optim import AmpOptimWrapper, OptimWrapper, OptimWrapperDict  # noqa: E402
from mmengine.registry import MODEL_WRAPPERS, OPTIM_WRAPPERS  # noqa: E402

logger = logging.getLogger(__name__)

#: ``--launcher`` choices (mmengine's names; domains/launcher.py)
LAUNCHERS = launch_env.LAUNCHERS
#: bytes of gradients all-reduced in one flat tensor (DDP's default bucket size)
BUCKET_BYTES = 25 * 1024 * 1024
#: where a process sits in the job (global rank, rank on its node, number of processes)
DistInfo = launch_env.Ranks


class DistributedError(RuntimeError):
    """A launcher / environment / config combination that cannot train distributed."""


# --------------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------------
def dist_info(launcher: str, env: Mapping[str, str] | None = None) -> DistInfo:
    """Rank, local rank and world size that ``launcher`` gives this process (from ``env``;
    :func:`domains.launcher.ranks`, SLURM_LOCALID required)."""
    try:
        return launch_env.ranks(launcher, os.environ if env is None else env)
    except launch_env.LauncherEnvError as err:
        raise DistributedError(str(err)) from None


def slurm_env_updates(env: Mapping[str, str], master_addr: str) -> dict[str, str]:
    """torch.distributed ``env://`` variables of a SLURM task (what mmengine's ``_init_dist_slurm``
    sets): ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, and ``MASTER_ADDR`` / ``MASTER_PORT`` unless set."""
    info = dist_info("slurm", env)
    out = {"RANK": str(info.rank), "LOCAL_RANK": str(info.local_rank), "WORLD_SIZE": str(info.world_size)}
    if "MASTER_ADDR" not in env:
        out["MASTER_ADDR"] = master_addr
    if "MASTER_PORT" not in env:
        out["MASTER_PORT"] = str(launch_env.slurm_master_port(env.get("SLURM_JOB_ID")))
    return out


def prepare_environment(launcher: str, cuda: bool) -> DistInfo:
    """Check the launcher's environment and set what torch.distributed needs; returns this
    process's :class:`DistInfo`. Under SLURM the ``env://`` variables are set here (mmengine's
    slurm initialiser needs CUDA); the master port follows :func:`domains.launcher.slurm_master_port`."""
    info = dist_info(launcher)
    if launcher == "pytorch":
        missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
        if missing:
            raise DistributedError(f"--launcher pytorch: environment variable {missing[0]} is not set; "
                                   "start the processes with torchrun (docs/multigpu.md)")
    elif launcher == "slurm":
        try:
            addr = os.environ.get("MASTER_ADDR") or launch_env.slurm_master_addr(os.environ.get("SLURM_NODELIST", ""))
        except launch_env.LauncherEnvError as err:
            raise DistributedError(str(err)) from None
        os.environ.update(slurm_env_updates(os.environ, addr))
    if cuda and torch.cuda.device_count() and info.local_rank >= torch.cuda.device_count():
        raise DistributedError(f"--launcher {launcher}: local rank {info.local_rank} but only "
                               f"{torch.cuda.device_count()} visible CUDA device(s); start one process per GPU")
    return info


def init_process_group(launcher: str, cuda: bool) -> bool:
    """Start the process group for a CPU run (gloo, ``env://``); returns whether it did. With CUDA
    nothing is done: mmengine's Runner initialises NCCL (and sets the device) itself."""
    if launcher == "none" or cuda or (dist.is_available() and dist.is_initialized()):
        return False
    dist.init_process_group(backend="gloo", init_method="env://")
    return True


# --------------------------------------------------------------------------------------------------
# gradient synchronisation
# --------------------------------------------------------------------------------------------------
def _buckets(tensors: list[torch.Tensor], bucket_bytes: int) -> Iterable[list[torch.Tensor]]:
    """Consecutive runs of tensors of one dtype/device holding at most ``bucket_bytes`` (at least one)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (size + nbytes > bucket_bytes or t.dtype != bucket[0].dtype or t.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        yield bucket


@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> int:
    """Replace each parameter's gradient by its mean over all ranks; returns how many were averaged.

    A parameter whose gradient is None on every rank stays None; one that has a gradient on some
    ranks only gets a zero gradient on the others first (what DDP does with unused parameters), so
    every rank issues the same collectives. No-op when not distributed.
    """
    n = world_size()
    params = [p for p in params]
    if n == 1 or not params:
        return 0
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    synced = [p for p, flag in zip(params, has.tolist()) if flag]
    for p in synced:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in synced], bucket_bytes):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(n)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
    return len(synced)


def _params_of(optim_wrapper: OptimWrapper) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for group in optim_wrapper.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


@OPTIM_WRAPPERS.register_module(force=True)
class GradSyncOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose ``step()`` first averages its parameters' gradients over all ranks
    (:func:`average_gradients`): the update is the same on every rank whatever the forward passes."""

    def step(self, **kwargs: Any) -> None:
        average_gradients(_params_of(self))
        super().step(**kwargs)


@OPTIM_WRAPPERS.register_module(force=True)
class GradSyncAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` with the gradient averaging of :class:`GradSyncOptimWrapper`, done on the
    scaled gradients before the scaler's inf/nan check, so every rank takes the same skip decision."""

    def step(self, **kwargs: Any) -> None:
        average_gradients(_params_of(self))
        super().step(**kwargs)


#: optim wrapper type -> its gradient-synchronising variant
GRAD_SYNC_TYPES = {"OptimWrapper": "GradSyncOptimWrapper", "AmpOptimWrapper": "GradSyncAmpOptimWrapper",
                   "GradSyncOptimWrapper": "GradSyncOptimWrapper",
                   "GradSyncAmpOptimWrapper": "GradSyncAmpOptimWrapper"}


def grad_sync_optim_wrapper(ow: Mapping[str, Any], key: str = "optim_wrapper") -> dict:
    """Optim-wrapper config with every single-optimiser entry switched to its gradient-synchronising
    type (nested entries of a constructor such as ``UDAOptimWrapperConstructor`` included)."""
    ow = dict(ow)
    if "optimizer" in ow:
        kind = ow.get("type", "OptimWrapper")
        if kind not in GRAD_SYNC_TYPES:
            raise DistributedError(f"{key}.type = {kind!r}: no gradient-synchronising variant for distributed "
                                   f"training (known: {', '.join(sorted(GRAD_SYNC_TYPES))})")
        ow["type"] = GRAD_SYNC_TYPES[kind]
        return ow
    return {k: (grad_sync_optim_wrapper(v, f"{key}.{k}") if isinstance(v, Mapping) else v) for k, v in ow.items()}


def _grad_sync_wrappers(optim_wrapper: OptimWrapper | OptimWrapperDict) -> list[str]:
    """Names of the optimiser wrappers that do NOT synchronise gradients."""
    items = optim_wrapper.items() if isinstance(optim_wrapper, OptimWrapperDict) else [("optim_wrapper", optim_wrapper)]
    return [name for name, ow in items if not isinstance(ow, (GradSyncOptimWrapper, GradSyncAmpOptimWrapper))]


@torch.no_grad()
def broadcast_module_state(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (no-op when not distributed)."""
    if world_size() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


@MODEL_WRAPPERS.register_module(force=True)
class UDADistributedWrapper(nn.Module):
    """Distributed wrapper for segmentors with their own ``train_step`` (the UDA methods).

    ``train_step`` is the module's own; gradients are averaged across ranks by the
    gradient-synchronising optimiser wrappers (:func:`grad_sync_optim_wrapper`), which the first
    step checks. Before that first step (after weight init, ``--init`` and ``--resume``) rank 0's
    parameters and buffers are broadcast, so every rank starts from the same state.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self._started = False

    def train_step(self, data: Any, optim_wrapper: OptimWrapper | OptimWrapperDict) -> dict[str, torch.Tensor]:
        if not self._started:
            plain = _grad_sync_wrappers(optim_wrapper)
            if plain:
                raise DistributedError(f"{type(self.module).__name__} under a launcher needs gradient-synchronising "
                                       f"optimiser wrappers; {', '.join(plain)} would train each rank on its own "
                                       "(build the config with segmenters.distributed.grad_sync_optim_wrapper)")
            broadcast_module_state(self.module)
            self._started = True
        return self.module.train_step(data, optim_wrapper)

    def val_step(self, data: Any) -> list:
        return self.module.val_step(data)

    def test_step(self, data: Any) -> list:
        return self.module.test_step(data)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# Runner settings
# --------------------------------------------------------------------------------------------------
def has_own_train_step(model_type: type) -> bool:
    """Whether a model class overrides mmengine's ``BaseModel.train_step`` (the UDA segmentors)."""
    from mmengine.model import BaseModel

    return getattr(model_type, "train_step", None) is not BaseModel.train_step


def model_wrapper_cfg(own_train_step: bool, cuda: bool) -> dict:
    """The Runner's ``model_wrapper_cfg``: :class:`UDADistributedWrapper` for a model with its own
    ``train_step``, else ``MMDistributedDataParallel`` (``device_ids=None`` on CPU: DDP rejects
    device ids for CPU modules; on CUDA the Runner fills in ``[LOCAL_RANK]``)."""
    if own_train_step:
        return dict(type="UDADistributedWrapper")
    cfg = dict(type="MMDistributedDataParallel", broadcast_buffers=False, find_unused_parameters=False)
    if not cuda:
        cfg["device_ids"] = None
    return cfg


def sync_bn_setting(value: Any, launcher: str, cuda: bool) -> str | None:
    """mmengine's ``cfg.sync_bn`` for config key ``sync_bn``: ``'torch'`` when true under a launcher,
    else None. SyncBatchNorm needs CUDA (torch has no CPU kernel): true on CPU is an error."""
    if not isinstance(value, bool):
        raise DistributedError(f"config key 'sync_bn' must be true or false, got {value!r}")
    if not value or launcher == "none":
        return None
    if not cuda:
        raise DistributedError("config key 'sync_bn' is true but this run has no CUDA device: torch's SyncBatchNorm "
                               "has no CPU implementation (use sync_bn=False on CPU)")
    return "torch"


def runner_dist_kwargs(launcher: str, own_train_step: bool, sync_bn: Any, cuda: bool) -> dict:
    """Keyword arguments of ``mmengine.runner.Runner`` for ``launcher``: ``launcher`` and, when
    distributed, ``cfg`` with ``model_wrapper_cfg`` (and ``sync_bn``)."""
    if launcher not in LAUNCHERS:
        raise DistributedError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    bn = sync_bn_setting(sync_bn, launcher, cuda)
    if launcher == "none":
        return dict(launcher="none")
    cfg: dict[str, Any] = dict(model_wrapper_cfg=model_wrapper_cfg(own_train_step, cuda))
    if bn:
        cfg["sync_bn"] = bn
    return dict(launcher=launcher, cfg=cfg)


@dataclass(frozen=True)
class DistSetup:
    """What ``python -m segmenters train --launcher L`` runs with (:func:`setup`)."""

    launcher: str
    info: DistInfo
    own_train_step: bool
    runner_kwargs: dict

    @property
    def distributed(self) -> bool:
        return self.launcher != "none"

    def optim_wrapper(self, ow: Mapping[str, Any]) -> dict:
        """``ow`` with gradient-synchronising wrappers where the model wrapper relies on them."""
        return grad_sync_optim_wrapper(ow) if self.distributed and self.own_train_step else dict(ow)


def setup(launcher: str, method: Any, model_type: type, sync_bn: Any, cuda: bool) -> DistSetup:
    """Check ``launcher`` against the UDA ``method`` (its ``supports_launcher``) and the config
    (``sync_bn``), prepare the environment, start the gloo group of a CPU run, and return the
    Runner settings. Errors name the method / config key (:class:`DistributedError`)."""
    if launcher not in LAUNCHERS:
        raise DistributedError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher != "none" and not getattr(method, "supports_launcher", True):
        raise DistributedError(f"--uda {method.name} does not support distributed training (--launcher {launcher}); "
                               "run it as one process (--launcher none)")
    own = has_own_train_step(model_type)
    kwargs = runner_dist_kwargs(launcher, own, sync_bn, cuda)
    info = prepare_environment(launcher, cuda) if launcher != "none" else DistInfo(0, 0, 1)
    if init_process_group(launcher, cuda):
        logger.info("rank %d of %d: gloo process group started (no CUDA)", info.rank, info.world_size)
    return DistSetup(launcher=launcher, info=info, own_train_step=own, runner_kwargs=kwargs)


def shutdown() -> None:
    """Destroy the default process group if one exists (end of a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
