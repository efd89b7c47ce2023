"""Exponential-moving-average (mean-teacher) update shared by SePiCo and ProDA.

SePiCo (DACS/DAFormer lineage, docs/reference.md §9.1) updates its teacher with the schedule
``alpha_t = min(1 - 1/(t+1), alpha_max)``, alpha_max = 0.999: at t = 0 the teacher becomes a copy of
the student, then alpha grows towards the cap. ProDA (§9.2) uses a fixed alpha = 0.999; pass
``iteration=None`` for that.

Buffers (BatchNorm running statistics) are where the public codes differ, so it is a choice here:

* ``buffers="ema"`` (default): floating-point buffers get the same moving average as parameters.
* ``buffers="copy"``: floating-point buffers are copied from the student (ProDA's ``step``).
* ``buffers="none"``: buffers are left alone (SePiCo's ``_update_ema`` touches parameters only; its
  teacher runs in train mode and keeps its own BN statistics).

Non-floating buffers (BN ``num_batches_tracked``) are always copied from the student in "ema" and
"copy" modes (averaging a counter is meaningless) and left alone in "none" mode.

:func:`load_teacher_state` loads a teacher from a checkpoint file and refuses (naming the file) one
saved for another network instead of loading it partially.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

BufferMode = Literal["ema", "copy", "none"]


def ema_alpha(iteration: int | None, alpha_max: float = 0.999) -> float:
    """Teacher momentum: ``min(1 - 1/(t+1), alpha_max)`` (DACS/SePiCo); ``alpha_max`` when
    ``iteration`` is None (fixed-momentum EMA, ProDA)."""
    if not 0.0 <= alpha_max <= 1.0:
        raise ValueError(f"ema alpha_max must lie in [0, 1], got {alpha_max}")
    if iteration is None:
        return float(alpha_max)
    if iteration < 0:
        raise ValueError(f"ema iteration must be >= 0, got {iteration}")
    return float(min(1.0 - 1.0 / (iteration + 1), alpha_max))


def _paired(teacher_items, student_items, what: str):
    t_items, s_items = list(teacher_items), list(student_items)
    t_names, s_names = [n for n, _ in t_items], [n for n, _ in s_items]
    if t_names != s_names:
        missing = sorted(set(s_names) ^ set(t_names))[:5]
        raise ValueError(f"ema_update: teacher and student {what} differ (e.g. {missing}); build the "
                         "teacher as a deep copy of the student")
    for (name, t), (_, s) in zip(t_items, s_items):
        if t.shape != s.shape:
            raise ValueError(f"ema_update: {what[:-1]} '{name}' has shape {tuple(t.shape)} in the "
                             f"teacher but {tuple(s.shape)} in the student")
    return [(t, s) for (_, t), (_, s) in zip(t_items, s_items)]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, iteration: int | None,
               alpha_max: float = 0.999, buffers: BufferMode = "ema") -> float:
    """In place: ``theta_teacher <- alpha * theta_teacher + (1 - alpha) * theta_student``.

    Args:
        teacher, student: modules with identical parameter/buffer names and shapes.
        iteration: training iteration t (0-based) for the DACS schedule, or None for fixed alpha.
        alpha_max: the cap (0.999 in SePiCo and ProDA).
        buffers: "ema" | "copy" | "none", see the module docstring.

    Returns:
        The alpha that was used.
    """
    if buffers not in ("ema", "copy", "none"):
        raise ValueError(f"ema_update: buffers must be 'ema', 'copy' or 'none', got {buffers!r}")
    alpha = ema_alpha(iteration, alpha_max)
    for t, s in _paired(teacher.named_parameters(), student.named_parameters(), "parameters"):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    if buffers == "none":
        return alpha
    for t, s in _paired(teacher.named_buffers(), student.named_buffers(), "buffers"):
        if buffers == "ema" and t.is_floating_point():
            t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
        else:
            t.copy_(s.detach())
    return alpha


def teacher_state_mismatches(teacher: nn.Module, state: dict) -> list[str]:
    """Human-readable differences between ``teacher``'s state dict and ``state`` (missing and
    unexpected keys, shape mismatches); empty when ``state`` loads into ``teacher`` strictly."""
    own = teacher.state_dict()
    problems = [f"missing key '{k}'" for k in own if k not in state]
    problems += [f"unexpected key '{k}'" for k in state if k not in own]
    problems += [f"'{k}' has shape {tuple(state[k].shape)} in the checkpoint but {tuple(v.shape)} in the teacher"
                 for k, v in own.items() if k in state and hasattr(state[k], "shape")
                 and tuple(state[k].shape) != tuple(v.shape)]
    return problems


def load_teacher_state(teacher: nn.Module, path: str | Path, prefix: str = "") -> None:
    """Load an EMA teacher from a checkpoint file (``weights_only=True``).

    ``path`` holds a state dict, or a dict with ``"state_dict"`` (``final.pth``, mmengine's
    ``iter_<n>.pth``); ``prefix`` selects and strips the teacher's keys (``"ema_teacher."`` in a
    SePiCo run checkpoint, ``""`` for a ``final.pth`` student used as teacher). Any missing,
    unexpected or mis-shaped key is a ``ValueError`` naming the file and the first differences;
    nothing is loaded then.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EMA teacher checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling error: say which file (not torch's advice)
        from domains.errors import torch_load_problem

        raise ValueError(f"{path}: cannot be read as a checkpoint with weights_only=True ({torch_load_problem(err)}); "
                         "expected a final.pth or a state dict of tensors") from err
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict or a checkpoint with 'state_dict'")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{path}: no '{prefix}*' keys; it holds no EMA teacher (a final.pth holds the "
                             "student only: load it with prefix='')")
    problems = teacher_state_mismatches(teacher, state)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{path}: the checkpoint does not match the EMA teacher ({type(teacher).__name__}): "
                         + "; ".join(problems[:5]) + more
                         + "; it was saved with another architecture, preset or number of classes")
    teacher.load_state_dict(state, strict=True)
