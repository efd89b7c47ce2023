"""torch.distributed helpers that are no-ops in a single process (torch only, no mmengine).

Used by the training launcher (:mod:`segmenters.distributed`) and by UDA state that is estimated
from batches (SePiCo's class statistics, ProDA's prototypes), so that under ``--launcher`` every
rank folds the global batch into the same state.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes of the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, or not distributed at all."""
    return world_size() == 1 or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op when not distributed); returns ``tensor``."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank concatenated along dim 0 in rank order (the shape must be the same
    on all ranks); ``tensor`` itself when not distributed."""
    n = world_size()
    if n == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(n)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
