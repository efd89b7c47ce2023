"""Image reading and writing for inference (evaluate, pseudolabel).

Images are read with OpenCV (fast PNG/JPEG decoding; converted BGR -> RGB) and resized to the
checkpoint's ``test_scale`` with bilinear interpolation (``cv2.INTER_LINEAR``, what MMSeg's
``Resize`` uses). Labels are single-channel uint8 PNGs (trainIds, 255 = ignore). ``InferenceSet``
is a torch ``Dataset`` so a ``DataLoader`` can decode in worker processes; it holds only paths, so
memory is one batch (plus the loader's prefetch) for any dataset size.
"""
from __future__ import annotations

import argparse
import ctypes
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from domains.io import atomic_path


class ImageReadError(RuntimeError):
    """An image or label file is missing or cannot be decoded; the message names the file."""


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB image."""
    path = Path(path)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        what = "missing" if not path.exists() else "not a readable image"
        raise ImageReadError(f"image {path} is {what}; check the prepared dataset's image_dir / split list")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path) -> np.ndarray:
    """(H, W) uint8 label map (trainIds; 255 = ignore)."""
    path = Path(path)
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        what = "missing" if not path.exists() else "not a readable PNG"
        raise ImageReadError(f"label {path} is {what}; re-run `python -m domains prepare` for this dataset")
    if lab.ndim != 2 or lab.dtype != np.uint8:
        raise ImageReadError(f"label {path} must be a single-channel uint8 PNG of trainIds, "
                             f"got shape {lab.shape} dtype {lab.dtype}")
    return lab


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 (H, W) map as PNG, creating parent folders; written to a temporary name first."""
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(array)):
            raise OSError(f"could not write {path}")


def resize_rgb(img: np.ndarray, scale_wh: Sequence[int] | None) -> np.ndarray:
    """Bilinear resize of an RGB image to (w, h); unchanged when ``scale_wh`` is None or equal."""
    if scale_wh is None:
        return img
    w, h = int(scale_wh[0]), int(scale_wh[1])
    if img.shape[1] == w and img.shape[0] == h:
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


class InferenceSet(Dataset):
    """Images (resized to ``scale_wh``) with their stems, native sizes and optional labels.

    Items: ``{"image": float32 (3, h, w) RGB in [0, 255], "index": int, "size": (H, W) native,
    "label": uint8 (H, W) or None}``.
    """

    def __init__(self, images: Sequence[Path], scale_wh: Sequence[int] | None,
                 labels: Sequence[Path | None] | None = None) -> None:
        self.images = list(images)
        self.labels = list(labels) if labels is not None else [None] * len(self.images)
        if len(self.labels) != len(self.images):
            raise ValueError("images and labels differ in length")
        self.scale_wh = None if scale_wh is None else (int(scale_wh[0]), int(scale_wh[1]))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        img = read_rgb(self.images[index])
        size = img.shape[:2]
        img = resize_rgb(img, self.scale_wh)
        label = None if self.labels[index] is None else read_label(self.labels[index])
        return {"image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float(),
                "index": index, "size": size, "label": label}


def collate(items: list[dict]) -> dict:
    """Stack images (all at ``scale_wh``); keep per-item sizes and labels as lists."""
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) > 1:
        raise ValueError(f"images in one batch differ in size {sorted(shapes)}; set a test_scale or batch size 1")
    return {"image": torch.stack([it["image"] for it in items]),
            "index": [it["index"] for it in items],
            "size": [it["size"] for it in items],
            "label": [it["label"] for it in items]}


def make_loader(dataset: InferenceSet, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """Ordered DataLoader over ``dataset`` (no shuffling; bounded prefetch)."""
    batch_size = batch_size if dataset.scale_wh is not None else 1
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=collate, persistent_workers=False,
                                       prefetch_factor=2 if workers > 0 else None)


def _malloc_trim():
    """glibc's ``malloc_trim`` or None (other C libraries)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Return free heap pages to the OS (glibc ``malloc_trim(0)``; no-op elsewhere).

    Why: the inference loops interleave large short-lived tensors with small long-lived allocations
    (HDF5 metadata); glibc's dynamic mmap threshold then serves the large buffers from the heap and
    the small ones pin it, so RSS crept up by ~0.5 GB over 1,000 images (benchmarks/segmenter_speed.py)
    although nothing is retained. Trimming every few batches keeps peak RSS flat in the image count.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def batched_probabilities(segmenter: Any, dataset: InferenceSet, batch_size: int = 1, workers: int = 0,
                          softmax: bool = False, desc: str = "predict", trim_every: int = 25, flip: bool = False
                          ) -> Iterator[tuple[dict, torch.Tensor]]:
    """Yield ``(batch, out)`` with ``out`` (B, C, h, w) float32 logits (or softmax probabilities when
    ``softmax``) at the inference size, one batch at a time, under ``torch.inference_mode``.

    ``flip``: ``out`` is the mean of the outputs for the images and their horizontal mirrors (mirrored
    back), flip test-time augmentation; it doubles the inference time.
    Normalisation, AMP and channels_last on CUDA are the segmenter's (``segmenters.loader``).
    Every ``trim_every`` images, free heap memory is returned to the OS (:func:`release_free_memory`).
    """
    device = torch.device(segmenter.device)
    loader = make_loader(dataset, batch_size, workers)
    seen = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True):
            images = batch["image"].to(device, non_blocking=True)
            out = _scores(segmenter, images, softmax)
            if flip:
                out = (out + _scores(segmenter, images.flip(-1), softmax).flip(-1)) / 2
            yield batch, out
            del images, out
            seen += len(batch["index"])
            if trim_every and seen >= trim_every:
                release_free_memory()
                seen = 0


def _scores(segmenter: Any, images: torch.Tensor, softmax: bool) -> torch.Tensor:
    logits = segmenter.predict_logits(images).float()
    return torch.softmax(logits, dim=1) if softmax else logits


def resize_maps(maps: torch.Tensor, size_hw: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) score maps to ``size_hw`` (align_corners=False, MMSeg's choice)."""
    if tuple(maps.shape[-2:]) == tuple(size_hw):
        return maps
    return F.interpolate(maps, size=tuple(int(s) for s in size_hw), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- the inference CLIs' shared flags
# evaluate, pseudolabel and prototypes read a checkpoint and a prepared split and run the model over
# it: their common flags are defined here once; each CLI says what its checkpoint, split and output are.
def add_input_flags(p: argparse.ArgumentParser, *, checkpoint: str, split: str, split_help: str, out: str) -> None:
    """``--checkpoint`` (required; help ``checkpoint``), ``--target``, ``--split`` (default ``split``; help
    ``split_help``, where ``%(default)s`` names the default) and ``--out`` (required; help ``out``)."""
    p.add_argument("--checkpoint", required=True, help=checkpoint)
    p.add_argument("--target", required=True, help="prepared target dataset folder (data/prepared/<name>)")
    p.add_argument("--split", default=split, help=split_help)
    p.add_argument("--out", required=True, help=out)


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--workers``, ``--device`` and ``--no-amp``: how the model runs."""
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for image decoding")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--no-amp", action="store_true", help="disable autocast (bf16/fp16) on CUDA")
