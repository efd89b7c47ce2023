"""Segmenter weight files: the ``final.pth`` contract (SEGMENTERS.md 4) and init-weight loading.

``final.pth`` = ``{"meta": {...}, "state_dict": {...}}`` with tensors and plain containers only, so
every consumer loads it with ``torch.load(..., weights_only=True)``. ``state_dict`` holds the
EncoderDecoder's weights only: a UDA model's discriminator / EMA teacher / projection head are
stripped by matching against an EncoderDecoder built (on the meta device) from ``meta["model_cfg"]``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from . import compat

compat.install_mmcv_ops_stand_in()

logger = logging.getLogger(__name__)

META_KEYS = ("arch", "preset", "num_classes", "uda", "iter", "test_scale", "model_cfg")


def plain_model_cfg(model_cfg: Any) -> dict:
    """JSON-serialisable plain-dict copy of an EncoderDecoder model config (tuples become lists)."""
    if hasattr(model_cfg, "to_dict"):
        model_cfg = model_cfg.to_dict()
    try:
        plain = json.loads(json.dumps(model_cfg))
    except TypeError as err:
        raise ValueError(f"model_cfg is not JSON-serialisable ({err}); pass the config's plain `model` dict") from err
    if not isinstance(plain, dict) or plain.get("type") != "EncoderDecoder":
        found = plain.get("type") if isinstance(plain, dict) else type(plain).__name__
        raise ValueError(f"model_cfg must be an EncoderDecoder config dict, got type={found!r}")
    return plain


def build_segmentor(model_cfg: Mapping, device: str | torch.device | None = None) -> nn.Module:
    """Build the EncoderDecoder of ``model_cfg`` without pretrained downloads (``init_cfg``/``pretrained`` off)."""
    import mmseg.models  # noqa: F401  (fills mmseg's registry)
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    from . import models  # noqa: F401  (our registered modules)

    cfg = ConfigDict(copy.deepcopy(dict(model_cfg)))
    cfg.pop("pretrained", None)
    cfg.pop("init_cfg", None)
    if "backbone" in cfg:
        cfg.backbone.pop("pretrained", None)
        cfg.backbone.pop("init_cfg", None)
    cfg.setdefault("test_cfg", ConfigDict(mode="whole"))
    # BaseModel builds its data_preprocessor through the current default scope: make it 'mmseg'
    with DefaultScope.overwrite_default_scope("mmseg"):
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return MODELS.build(cfg)


def _expected_shapes(model_cfg: Mapping) -> dict[str, torch.Size]:
    meta_model = build_segmentor(model_cfg, device="meta")
    return {k: v.shape for k, v in meta_model.state_dict().items()}


def _find_prefix(keys: set[str], expected: set[str]) -> str | None:
    if expected <= keys:
        return ""
    candidates: set[str] = set()
    probe = next(iter(sorted(expected)))
    for key in keys:
        if key.endswith("." + probe):
            candidates.add(key[: -len(probe)])
    matches = sorted((p for p in candidates if all(p + k in keys for k in expected)), key=len)
    return matches[0] if matches else None


def extract_segmentor_state(state_dict: Mapping[str, torch.Tensor], model_cfg: Mapping,
                            prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The EncoderDecoder's entries of ``state_dict`` (keys without ``prefix``), on CPU.

    ``prefix=None`` finds it: '' when the keys are at top level (a UDA model that subclasses
    EncoderDecoder), else the shortest prefix under which every EncoderDecoder key exists.
    """
    shapes = _expected_shapes(model_cfg)
    expected = set(shapes)
    keys = set(state_dict)
    if prefix is None:
        prefix = _find_prefix(keys, expected)
        if prefix is None:
            missing = sorted(expected - keys)
            raise ValueError(f"the model's state dict does not contain the EncoderDecoder of model_cfg: "
                             f"{len(missing)} keys missing, e.g. {missing[:5]}")
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        full = prefix + key
        if full not in state_dict:
            raise ValueError(f"the model's state dict has no {full!r} (prefix {prefix!r})")
        tensor = state_dict[full]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{full}: shape {tuple(tensor.shape)} does not match model_cfg's {tuple(shape)}")
        out[key] = tensor.detach().to("cpu", copy=True).contiguous()
    return out


def save_final(model: nn.Module | Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: str | os.PathLike,
               prefix: str | None = None) -> Path:
    """Write ``final.pth`` atomically (tmp file + ``os.replace``).

    Args:
        model: the trained model (EncoderDecoder or a UDA model containing one) or its state dict.
        meta: ``arch, preset, num_classes, uda, iter, test_scale [w, h], model_cfg`` (SEGMENTERS.md 4);
            extra keys are kept if JSON-serialisable.
        path: output file.
        prefix: where the EncoderDecoder lives in ``model``'s state dict ('' = top level); found
            automatically when None.
    """
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"save_final({path}): meta lacks {missing}; required keys: {list(META_KEYS)}")
    clean = dict(meta)
    clean["model_cfg"] = plain_model_cfg(meta["model_cfg"])
    clean["test_scale"] = [int(v) for v in meta["test_scale"]]
    clean["num_classes"] = int(meta["num_classes"])
    clean["iter"] = int(meta["iter"])
    head_classes = clean["model_cfg"].get("decode_head", {}).get("num_classes")
    if head_classes is not None and int(head_classes) != clean["num_classes"]:
        raise ValueError(f"save_final({path}): meta num_classes={clean['num_classes']} but "
                         f"model_cfg.decode_head.num_classes={head_classes}")
    try:
        clean = json.loads(json.dumps(clean))
    except TypeError as err:
        raise ValueError(f"save_final({path}): meta is not JSON-serialisable ({err})") from err
    state = model.state_dict() if isinstance(model, nn.Module) else model
    seg_state = extract_segmentor_state(state, clean["model_cfg"], prefix=prefix)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"meta": clean, "state_dict": seg_state}, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.info("wrote %s (%d tensors, iter %d)", path, len(seg_state), clean["iter"])
    return path


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path}: not a state dict (expected a mapping of parameter names to tensors, "
                         "or a dict with a 'state_dict' entry)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_init_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, list[str]]:
    """Initialise ``model`` (an EncoderDecoder) from a user-supplied file, read with weights_only=True.

    Accepts a plain state dict, ``{"state_dict": ...}`` (e.g. a ``final.pth`` of an earlier round) or
    backbone-only weights (keys without the ``backbone.`` prefix). With ``strict`` (default) any
    missing key, unexpected key or shape mismatch raises ``ValueError`` naming the file and listing
    the keys; with ``strict=False`` the matching subset is loaded and the rest reported in the log.
    BN ``num_batches_tracked`` counters are never required.

    Returns ``{"loaded": [...], "missing": [...], "unexpected": [...], "mismatched": [...]}``.
    """
    path = Path(path)
    state = _state_dict_of(compat.load_untrusted(path), path)
    own = model.state_dict()
    if not set(state) & set(own) and any(("backbone." + k) in own for k in state):
        state = {"backbone." + k: v for k, v in state.items()}
    loaded, mismatched = [], []
    for key, value in state.items():
        if key in own:
            if tuple(own[key].shape) == tuple(value.shape):
                loaded.append(key)
            else:
                mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    report = {"loaded": sorted(loaded), "missing": missing, "unexpected": unexpected, "mismatched": mismatched}

    def listing(name: str, items: list[str]) -> str:
        more = f" ... (+{len(items) - 8} more)" if len(items) > 8 else ""
        return f"{len(items)} {name}: {items[:8]}{more}"

    problems = [listing(n, report[n]) for n in ("missing", "unexpected", "mismatched") if report[n]]
    if not loaded:
        raise ValueError(f"{path}: no parameter matches the model ({'; '.join(problems)}). "
                         "Is it weights for another architecture? Convert it to this model's keys")
    if problems and strict:
        raise ValueError(f"{path}: init weights do not match the model: {'; '.join(problems)}. Convert the "
                         "file to this model's keys, or set init_strict=False to load only the matching ones")
    if problems:
        logger.warning("%s: loaded %d tensors; skipped %s", path, len(loaded), "; ".join(problems))
    with torch.no_grad():
        for key in loaded:
            own[key].copy_(state[key])
    logger.info("initialised %d tensors from %s", len(loaded), path)
    return report
