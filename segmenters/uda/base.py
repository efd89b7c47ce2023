"""Building blocks shared by the UDA methods.

* :class:`TrainInputs` - the data a training run was asked to use (CLI arguments).
* :class:`UDAMethod` - what a method contributes to a run: its training dataset, its model config
  (a plain ``EncoderDecoder`` or a registered UDA segmentor wrapping one) and its optimiser config.
* :class:`UDASegmentor` - an mmseg ``EncoderDecoder`` trained on ``dict(src=..., trg=...)`` batches
  (:class:`segmenters.datasets.UDADataset`) by its own ``train_step`` (the mmseg-1.x UDA pattern,
  docs/reference.md §10.3). Validation/inference are the ``EncoderDecoder``'s, and the
  segmentation network's parameters keep the ``EncoderDecoder`` names, so ``final.pth`` holds a
  plain ``EncoderDecoder`` state dict.
* :class:`UDAOptimWrapperConstructor` - an ``OptimWrapperDict`` with one optimiser for the
  segmentation network (all modules not claimed by another key, built with mmengine's default
  constructor, so ``paramwise_cfg`` such as the 10x head lr applies) and one per named auxiliary
  module (e.g. ``discriminator``). mmengine checkpoints and resumes every optimiser of the dict and
  builds the same ``param_scheduler`` list for each (PolyLR for segmentor and discriminator alike).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict  # noqa: E402
from mmseg.models.segmentors import EncoderDecoder  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402
from mmseg.utils import add_prefix  # noqa: E402

from ..datasets import val_pipeline, train_pipeline  # noqa: E402

#: key of the segmentation network's optimiser in an OptimWrapperDict
SEGMENTOR_KEY = "segmentor"


class TrainError(RuntimeError):
    """Bad training input (missing folder or config key, unlabelled val split, bad option combination)."""


@dataclass(frozen=True)
class TrainInputs:
    """Where a run's data comes from (``python -m segmenters train`` arguments)."""

    source: Path
    target: Path
    source_images: Path | None = None
    pseudo: Path | None = None
    target_images: Path | None = None
    source_split: str = "train"
    target_split: str = "train"
    val_split: str = "val"
    seed: int = 0


def uda_param(cfg: Any, key: str) -> Any:
    """``cfg.uda[key]``; a clear error naming the config key when the preset lacks it."""
    uda = cfg.get("uda", None) or {}
    if key not in uda:
        raise TrainError(f"config key 'uda.{key}' is missing (preset {cfg.get('arch', '?')}/{cfg.get('preset', '?')}); "
                       f"add it to the config or pass --cfg-options uda.{key}=...")
    return uda[key]


def _aug(cfg: Any) -> dict:
    aug = cfg.get("train_aug", None) or {}
    return dict(flip_prob=float(aug.get("flip_prob", 0.5)), cat_max_ratio=float(aug.get("cat_max_ratio", 1.0)))


def source_dataset_cfg(cfg: Any, inputs: TrainInputs) -> dict:
    """Labelled source split (refined images via ``--source-images``), resized to ``train_scale``."""
    return dict(type="PreparedSegDataset", prepared_root=str(inputs.source), split=inputs.source_split,
                image_dir=str(inputs.source_images) if inputs.source_images else None, labelled=True,
                pipeline=train_pipeline(cfg.train_scale, cfg.crop_size, **_aug(cfg)))


def target_dataset_cfg(cfg: Any, inputs: TrainInputs, labelled: bool, label_dir: Path | None = None) -> dict:
    """Target training split at ``target_scale``: its own labels (oracle), pseudo-labels, or none."""
    return dict(type="PreparedSegDataset", prepared_root=str(inputs.target), split=inputs.target_split,
                label_dir=str(label_dir) if label_dir else None, labelled=labelled or label_dir is not None,
                pipeline=train_pipeline(cfg.target_scale, cfg.crop_size, **_aug(cfg)))


def val_dataset_cfg(cfg: Any, inputs: TrainInputs) -> dict:
    """Labelled target validation split (images at ``test_scale``, labels at full resolution)."""
    return dict(type="PreparedSegDataset", prepared_root=str(inputs.target), split=inputs.val_split,
                labelled=True, test_mode=True, pipeline=val_pipeline(cfg.test_scale))


class UDAMethod:
    """A UDA method's contribution to a training run. Subclasses set the class attributes and
    override what differs; the defaults give plain ``EncoderDecoder`` training on the source."""

    name: str = ""
    #: whether ``--pseudo`` (offline target pseudo-labels) is used by the method
    accepts_pseudo: bool = False
    #: whether ``--source-images`` is used by the method
    uses_source: bool = True
    #: whether the train batches are ``dict(src=..., trg=...)`` pairs (UDADataset)
    paired: bool = False
    #: whether ``--launcher pytorch|slurm`` may run the method (segmenters.distributed: a method whose
    #: ``train_step`` steps its optimisers through mmengine optimiser wrappers trains correctly; set
    #: False for one that does not, and the CLI refuses it, naming the method)
    supports_launcher: bool = True

    def train_dataset(self, cfg: Any, inputs: TrainInputs) -> dict:
        return source_dataset_cfg(cfg, inputs)

    def model(self, cfg: Any, inputs: TrainInputs) -> dict:
        return copy.deepcopy(cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model))

    def optim_wrapper(self, cfg: Any) -> dict:
        ow = cfg.optim_wrapper
        return copy.deepcopy(ow.to_dict() if hasattr(ow, "to_dict") else dict(ow))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class UDAOptimWrapperConstructor:
    """``optim_wrapper=dict(constructor='UDAOptimWrapperConstructor', segmentor=<optim wrapper cfg>,
    <module attr>=<optim wrapper cfg>, ...)`` -> ``OptimWrapperDict``.

    ``segmentor`` gets the parameters of every child module not named by another key; each other
    key names a child module (``model.<key>``) and gets its parameters. Each entry is an ordinary
    single-optimiser config (``type``, ``optimizer``, optional ``paramwise_cfg``).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        if paramwise_cfg:
            raise ValueError("UDAOptimWrapperConstructor: put paramwise_cfg inside each optimiser entry "
                             f"({', '.join(optim_wrapper_cfg)})")
        if SEGMENTOR_KEY not in optim_wrapper_cfg:
            raise ValueError(f"UDAOptimWrapperConstructor needs a '{SEGMENTOR_KEY}' entry, got "
                             f"{sorted(optim_wrapper_cfg)}")
        self.cfgs = {k: copy.deepcopy(dict(v)) for k, v in optim_wrapper_cfg.items()}

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        if hasattr(model, "module"):
            model = model.module
        others = [k for k in self.cfgs if k != SEGMENTOR_KEY]
        for key in others:
            if not isinstance(getattr(model, key, None), nn.Module):
                raise ValueError(f"optim_wrapper.{key}: the model ({type(model).__name__}) has no "
                                 f"sub-module '{key}'")
        wrappers = {}
        for key, cfg in self.cfgs.items():
            paramwise = cfg.pop("paramwise_cfg", None)
            if key == SEGMENTOR_KEY:
                module: nn.Module = nn.ModuleDict(
                    {name: child for name, child in model.named_children() if name not in others})
            else:
                module = getattr(model, key)
            wrappers[key] = DefaultOptimWrapperConstructor(cfg, paramwise)(module)
        return OptimWrapperDict(**wrappers)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class UDASegmentor(EncoderDecoder):
    """``EncoderDecoder`` whose ``train_step`` consumes ``dict(src=..., trg=...)`` batches.

    Subclasses implement :meth:`train_step`; helpers here run the data preprocessor on each half
    (:meth:`preprocess_pair`), the network (:meth:`seg_forward`) and the configured decode/aux
    losses (:meth:`seg_losses`, mmseg's ``loss_by_feat``, so ``avg_non_ignore`` etc. apply).
    """

    #: attribute names of modules that are not part of the EncoderDecoder (kept out of final.pth)
    extra_modules: tuple[str, ...] = ()

    def preprocess_pair(self, data: dict) -> tuple[dict, dict]:
        if not isinstance(data, dict) or "src" not in data or "trg" not in data:
            raise TypeError(f"{type(self).__name__}.train_step expects dict(src=..., trg=...) batches "
                            "(UDADataset); got " + (f"keys {sorted(data)}" if isinstance(data, dict) else type(data).__name__))
        return self.data_preprocessor(data["src"], True), self.data_preprocessor(data["trg"], True)

    def seg_forward(self, inputs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Backbone features and decode-head logits (at the head's output resolution)."""
        feats = self.extract_feat(inputs)
        return feats, self.decode_head.forward(feats)

    def seg_losses(self, feats: list[torch.Tensor], logits: torch.Tensor, data_samples: list,
                   prefix: str, weight: float = 1.0) -> dict:
        """Decode (and auxiliary) losses, keys prefixed, ``loss*`` terms multiplied by ``weight``."""
        losses = add_prefix(self.decode_head.loss_by_feat(logits, data_samples), "decode")
        if self.with_auxiliary_head:
            losses.update(self._auxiliary_head_forward_train(feats, data_samples))
        if weight != 1.0:
            losses = {k: (v * weight if "loss" in k else v) for k, v in losses.items()}
        return add_prefix(losses, prefix)

    def upsample(self, logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Logits resized to the input image size (bilinear, the head's ``align_corners``)."""
        return resize(logits, size=like.shape[2:], mode="bilinear", align_corners=self.align_corners)
