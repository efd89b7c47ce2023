"""Segmenter weight files: the ``final.pth`` contract (docs/design.md §8.4) and init-weight loading.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from domains.io import atomic_path

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
        meta: ``arch, preset, num_classes, uda, iter, test_scale [w, h], model_cfg`` (docs/design.md §8.4);
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
    with atomic_path(path) as tmp:
        torch.save({"meta": clean, "state_dict": seg_state}, tmp)
    logger.info("wrote %s (%d tensors, iter %d)", path, len(seg_state), clean["iter"])
    return path


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path}: not a state dict (expected a mapping of parameter names to tensors, "
                         "or a dict with a 'state_dict' entry)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def resolve_weights(spec: str | os.PathLike, config_key: str, hint: str = "") -> Path:
    """A weights spec as an existing file: a registry name of :mod:`domains.weights` (e.g.
    ``resnet101_v1c``) -> its cached file, else the path itself. A missing file raises
    :class:`domains.weights.MissingWeightsError` (a ``FileNotFoundError``) naming the file, its URL,
    ``config_key`` and the fetch command."""
    from domains.weights import resolve

    return resolve(spec, config_key, hint=hint)


#: file keys of an ImageNet classifier that a segmentation backbone has no use for
CLASSIFIER_PREFIXES = ("fc.",)
SEGMENTOR_PREFIXES = ("backbone.", "decode_head.", "auxiliary_head.")


@dataclass(frozen=True)
class InitWeights:
    """Init weights converted to the EncoderDecoder's key names.

    ``layout``: ``segmentor`` (a full model, e.g. a final.pth), ``resnet`` (an ImageNet ResNet
    backbone file: mmseg ResNetV1c ``stem.*`` or torchvision-style ``conv1.*``), ``torchvision-vgg``
    (``features.*`` + ``classifier.*``) or ``backbone`` (other backbone-only keys). For all but
    ``segmentor`` only the backbone is loaded and the heads keep their init. ``ignored``: file keys
    deliberately not loaded (the ImageNet classifier); ``found``: what the file looks like.
    """

    layout: str
    state: dict[str, torch.Tensor]
    ignored: list[str]
    found: str


def _resnet_blocks(keys: set[str]) -> tuple[int, ...]:
    blocks = []
    for stage in range(1, 5):
        idx = {int(k.split(".")[1]) for k in keys if k.startswith(f"layer{stage}.") and k.split(".")[1].isdigit()}
        blocks.append(max(idx) + 1 if idx else 0)
    return tuple(blocks)


def describe_weights(state: Mapping[str, torch.Tensor]) -> str:
    """What a backbone state dict looks like (keys without ``backbone.``), for error messages:
    ResNet depth / stem type from its blocks, VGG depth from its conv count, else a key sample."""
    keys = set(state)
    if any(k.startswith("layer1.") for k in keys):
        blocks = _resnet_blocks(keys)
        bottleneck = any(".conv3." in k for k in keys)
        depth = (3 if bottleneck else 2) * sum(blocks) + 2
        stem = "deep 3x3 stem (ResNetV1c)" if any(k.startswith("stem.") for k in keys) else "7x7 conv1 stem"
        return f"ResNet-{depth} ({'bottleneck' if bottleneck else 'basic'} blocks {blocks}, {stem})"
    n = sum(1 for k, v in state.items() if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4)
    if n:
        bn = any(k.startswith("features.") and k.endswith(".running_mean") for k in keys)
        return f"VGG{n + 3}{'-BN' if bn else ''} ({n} conv layers in features)"
    sample = sorted(keys)[:4]
    return f"{len(keys)} tensors, e.g. {sample}"


def convert_init_state(state: Mapping[str, torch.Tensor], model_keys: set[str], path: Path) -> InitWeights:
    """Recognise the layout of an init file by its keys and map it to the EncoderDecoder's names."""
    keys = set(state)
    backbone_keys = {k[len("backbone."):] for k in model_keys if k.startswith("backbone.")}
    if any(k.startswith(SEGMENTOR_PREFIXES) for k in keys):
        return InitWeights("segmentor", dict(state), [], f"a segmentor state dict ({len(keys)} tensors)")
    found = describe_weights(state)
    if any(k.startswith("features.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        from .models.vgg import torchvision_vgg16_to_fcn

        needed = ("classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias")
        absent = [k for k in needed if k not in keys]
        if absent:
            raise ValueError(f"{path}: torchvision VGG layout without {absent}: not a torchvision vgg16 file "
                             f"(found {found})")
        try:
            converted = torchvision_vgg16_to_fcn(dict(state))
        except RuntimeError as err:  # classifier.0 that does not reshape to 512x7x7
            raise ValueError(f"{path}: classifier.0 of this VGG file does not reshape to fc6 ({err}); "
                             f"found {found}") from err
        ignored = sorted(k for k in keys if k.startswith("classifier.") and not k.startswith(("classifier.0.",
                                                                                                "classifier.3.")))
        return InitWeights("torchvision-vgg", converted, ignored, f"torchvision {found}")
    is_resnet = any(k.startswith("layer1.") for k in keys) and any(k.startswith(("stem.", "conv1.")) for k in keys)
    if is_resnet or keys & backbone_keys:
        ignored = sorted(k for k in keys if k.startswith(CLASSIFIER_PREFIXES) and k not in backbone_keys)
        converted = {"backbone." + k: v for k, v in state.items() if k not in ignored}
        return InitWeights("resnet" if is_resnet else "backbone", converted, ignored, found)
    return InitWeights("unknown", dict(state), [], found)


def _read_init_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an init file (weights_only); an unreadable registry file gets a re-fetch hint."""
    from domains.weights import FETCH_COMMAND, entry_for_file

    try:
        try:
            obj = compat.load_untrusted(path)
        except ValueError as err:   # unreadable: say what an init file is
            raise ValueError(f"{err}; init weights are a state dict of tensors (a final.pth, or an ImageNet "
                             f"backbone file: `{FETCH_COMMAND.replace(' fetch', ' list')}`)") from err
        return _state_dict_of(obj, path)
    except ValueError as err:
        entry = entry_for_file(path)
        if entry is None:
            raise
        raise ValueError(f"{err} (truncated or corrupt download? delete it and run "
                         f"`{FETCH_COMMAND} {entry.name}` again)") from err


def load_init_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True,
                      config_key: str = "init_from", allow_backbone: bool = True) -> dict[str, list[str]]:
    """Initialise ``model`` (an EncoderDecoder) from an init file, read with weights_only=True.

    ``path``: a file, or a :mod:`domains.weights` registry name (``resnet101_v1c``, ``vgg16``)
    resolved to the cache folder. The layout is recognised by the keys (:func:`convert_init_state`):

    * a segmentor state dict (``backbone.*``/``decode_head.*``, plain or under ``state_dict``, e.g.
      a ``final.pth`` of an earlier round): every key of the model is expected;
    * an ImageNet backbone file -- mmseg ResNetV1c (``stem.*``, ``layer1.*``, ...; the zoo's
      ``resnet101_v1c``), torchvision VGG16 (``features.*``, ``classifier.*``; converted with
      :func:`~segmenters.models.vgg.torchvision_vgg16_to_fcn`) or other backbone-only keys: every
      backbone tensor is expected, the heads keep their init and the ImageNet classifier is ignored.

    With ``strict`` (default) any missing key, unexpected key or shape mismatch raises
    ``ValueError`` naming the file, what the file holds (e.g. ResNet-50 for a ResNet-101 model) and
    the keys; with ``strict=False`` the matching subset is loaded and the rest reported in the log.
    BN ``num_batches_tracked`` counters are never required. ``allow_backbone=False`` (e.g. a ProDA
    teacher) expects every tensor of the model even from a backbone file. ``config_key`` names the
    setting in messages and the log.

    Returns ``{"loaded", "missing", "unexpected", "mismatched", "kept", "ignored"}`` key lists
    (``kept``: model keys left at their init because the file is a backbone file).
    """
    path = resolve_weights(path, config_key)
    state = _read_init_state(path)
    own = model.state_dict()
    init = convert_init_state(state, set(own), path)
    head_kept = allow_backbone and init.layout not in ("segmentor", "unknown")
    expected = {k for k in own
                if not k.endswith("num_batches_tracked") and (k.startswith("backbone.") or not head_kept)}
    loaded, mismatched = [], []
    for key, value in init.state.items():
        if key in own:
            if tuple(own[key].shape) == tuple(value.shape):
                loaded.append(key)
            else:
                mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
    unexpected = sorted(k for k in init.state if k not in own)
    missing = sorted(k for k in expected if k not in init.state)
    kept = sorted(k for k in own if head_kept and not k.startswith("backbone."))
    report = {"loaded": sorted(loaded), "missing": missing, "unexpected": unexpected, "mismatched": mismatched,
              "kept": kept, "ignored": init.ignored}

    def listing(name: str, items: list[str]) -> str:
        more = f" ... (+{len(items) - 8} more)" if len(items) > 8 else ""
        return f"{len(items)} {name}: {items[:8]}{more}"

    problems = [listing(n, report[n]) for n in ("missing", "unexpected", "mismatched") if report[n]]
    own_backbone = {k[len("backbone."):]: v for k, v in own.items() if k.startswith("backbone.")}
    found = f"the file holds {init.found}" + ("" if init.layout == "segmentor" else
                                              f", the model's backbone is {describe_weights(own_backbone)}")
    if not loaded:
        raise ValueError(f"{path}: no parameter matches the model ({found}; {'; '.join(problems)}). "
                         "Is it weights for another architecture? Convert it to this model's keys")
    if problems and strict:
        raise ValueError(f"{path}: init weights do not match the model ({found}): {'; '.join(problems)}. Use "
                         "weights of this architecture, or set init_strict=False to load only the matching ones")
    if problems:
        logger.warning("%s: loaded %d tensors; skipped %s", path, len(loaded), "; ".join(problems))
    with torch.no_grad():
        for key in loaded:
            own[key].copy_(init.state[key])
    extra = (f"; heads kept at their init ({len(kept)} tensors)" if kept else "") + (
        f"; ImageNet classifier ignored ({len(init.ignored)} tensors)" if init.ignored else "")
    logger.info("%s: loaded %d tensors from %s (%s, layout %s)%s", config_key, len(loaded), path, init.found,
                init.layout, extra)
    return report
