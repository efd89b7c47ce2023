"""The one public way to use a trained segmenter: :func:`load_segmenter` (docs/design.md §8.5).

Used by evaluation, pseudo-labelling and the translators' semantic feedback. ``final.pth`` is read
with ``weights_only=True``; the EncoderDecoder is rebuilt from ``meta["model_cfg"]`` and frozen.
``predict_logits`` normalises RGB [0, 255] images itself and returns logits at the input size; it
is differentiable w.r.t. the images unless called under ``torch.inference_mode``/``no_grad``.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import compat
from .checkpoint import META_KEYS, build_segmentor

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Segmenter:
    """A frozen EncoderDecoder plus its ``final.pth`` meta.

    Attributes: ``model`` (eval mode, requires_grad False), ``num_classes``, ``meta``,
    ``test_scale`` (w, h), ``device``, ``path``, ``amp`` (autocast on CUDA).
    """

    model: nn.Module
    meta: dict
    device: torch.device
    path: Path
    amp: bool = True
    num_classes: int = field(init=False)
    test_scale: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.num_classes = int(self.meta["num_classes"])
        w, h = self.meta["test_scale"]
        self.test_scale = (int(w), int(h))
        pre = self.model.data_preprocessor
        self._mean = pre.mean.detach().reshape(1, -1, 1, 1).to(self.device, torch.float32)
        self._std = pre.std.detach().reshape(1, -1, 1, 1).to(self.device, torch.float32)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp and self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def predict_logits(self, images: Tensor, scale: tuple[int, int] | None = None) -> Tensor:
        """Class logits (B, C, H, W) float32 at the input size for RGB images (B, 3, H, W) in [0, 255].

        ``scale`` (w, h), e.g. ``self.test_scale``: run the network on the images resized (bilinear)
        to that size and resize the logits back; default: run at the input size (the models are
        fully convolutional).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"predict_logits expects (B, 3, H, W) RGB images, got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        x = images.to(self.device, torch.float32)
        x = (x - self._mean) / self._std
        if scale is not None and (int(scale[1]), int(scale[0])) != (height, width):
            x = F.interpolate(x, size=(int(scale[1]), int(scale[0])), mode="bilinear", align_corners=False)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        metas = [dict(img_shape=tuple(x.shape[-2:]), ori_shape=tuple(x.shape[-2:]))] * x.shape[0]
        with self._autocast():
            logits = self.model.encode_decode(x, metas)
        logits = logits.float()
        if tuple(logits.shape[-2:]) != (height, width):
            align = bool(getattr(self.model.decode_head, "align_corners", False))
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=align)
        return logits

    def predict_probs(self, images: Tensor, scale: tuple[int, int] | None = None) -> Tensor:
        """Softmax of :meth:`predict_logits` over the class dimension."""
        return self.predict_logits(images, scale=scale).softmax(dim=1)

    def to(self, device: str | torch.device) -> "Segmenter":
        """Move to another device in place (returns self)."""
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self._mean = self._mean.to(self.device)
        self._std = self._std.to(self.device)
        return self


def read_final(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a ``final.pth`` (weights_only); errors name the file."""
    path = Path(path)
    hint = "pass the final.pth written at the end of `python -m segmenters train`"
    try:
        obj = compat.load_untrusted(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; {hint}") from err
    except ValueError as err:
        raise ValueError(f"{err}; {hint}") from err
    if not isinstance(obj, Mapping) or "meta" not in obj or "state_dict" not in obj:
        keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path}: not a segmenter final.pth (needs 'meta' and 'state_dict', found {keys}); {hint}")
    meta = obj["meta"]
    missing = [k for k in META_KEYS if not isinstance(meta, Mapping) or k not in meta]
    if missing:
        raise ValueError(f"{path}: not a segmenter final.pth (meta lacks {missing}); {hint}")
    return dict(obj)


def load_segmenter(path: str | os.PathLike, device: str | torch.device = "cpu",
                   expect_num_classes: int | None = None, expect_arch: str | None = None,
                   amp: bool = True) -> Segmenter:
    """Load ``final.pth`` into a frozen :class:`Segmenter` on ``device``.

    Raises ``ValueError`` naming the file when it is not a final.pth, when its ``num_classes`` /
    ``arch`` differ from ``expect_num_classes`` / ``expect_arch``, or when its weights do not fit the
    model its meta describes.
    """
    path = Path(path)
    obj = read_final(path)
    meta = dict(obj["meta"])
    if expect_num_classes is not None and int(meta["num_classes"]) != int(expect_num_classes):
        raise ValueError(f"{path}: segmenter predicts {meta['num_classes']} classes, expected {expect_num_classes}")
    if expect_arch is not None and meta["arch"] != expect_arch:
        raise ValueError(f"{path}: segmenter arch is {meta['arch']!r}, expected {expect_arch!r}")
    device = torch.device(device)
    try:
        model = build_segmentor(meta["model_cfg"])
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: cannot build the model described by meta['model_cfg'] ({err})") from err
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the {meta['arch']!r} model of its meta['model_cfg']: "
                         f"{str(err)[:2000]}") from err
    model.eval()
    model.requires_grad_(False)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    logger.info("loaded %s segmenter (%s, %d classes) from %s", meta["arch"], meta.get("uda"),
                meta["num_classes"], path)
    return Segmenter(model=model, meta=meta, device=device, path=path, amp=amp)


__all__ = ["Segmenter", "load_segmenter", "read_final"]
