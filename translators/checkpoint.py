"""Translator run checkpoints: atomic writes, RNG capture, loading with architecture checks.

A checkpoint is a plain dict of tensors and Python primitives only (no numpy arrays, no pickled
classes), so it loads with ``torch.load(weights_only=True)`` -- safe for user-supplied files::

    {"format": 1, "method": str, "arch": {...}, "config": {...}, "step": int, "finished": bool,
     "models": method.state_dict(), "optimizers": {name: state}, "schedulers": {name: state},
     "scaler": GradScaler state, "rng": {"torch", "cuda", "numpy", "python"}}

``final.pt`` has the same layout without optimiser/scheduler/scaler/RNG state.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domains.io import atomic_path
from translators.config import ConfigError, TranslatorConfig, check_arch

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or of the wrong kind; the message names it."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary name in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
    return path


def rng_state() -> dict:
    """Every RNG a training step may draw from, as tensors/primitives."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict:
    """Load a translator checkpoint (weights_only) or raise CheckpointError naming the file."""
    path = Path(path)
    expected = "expected a final.pt (or checkpoint.pt) written by `python -m translators train`"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; {expected}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised naming the file; never torch's weights_only advice
        from domains.errors import torch_load_problem

        raise CheckpointError(f"cannot load checkpoint {path}: {torch_load_problem(err)}; {expected}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "models" not in ckpt:
        raise CheckpointError(f"{path} is not a translator checkpoint written by `python -m translators train`")
    return ckpt


def config_from_checkpoint(ckpt: dict, path: str | Path) -> TranslatorConfig:
    try:
        return TranslatorConfig.from_dict(ckpt["config"], source=f"config stored in {path}")
    except ConfigError as err:
        raise CheckpointError(str(err)) from err


def check_compatible(ckpt: dict, cfg: TranslatorConfig, path: str | Path) -> None:
    """Method and architecture keys must match, else a ConfigError naming the file."""
    check_arch(cfg.arch(), ckpt.get("arch", {"method": ckpt.get("method")}), f"checkpoint {path}")


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
