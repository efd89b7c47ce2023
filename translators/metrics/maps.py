"""Photo->Map metrics on paired test sets (GcGAN ``evaluate_maps.py`` protocol, docs/reference.md §11.6).

Both images of a pair are read as RGB (OpenCV) and resized to ``size`` x ``size`` (default 256)
with bilinear interpolation (``cv2.INTER_LINEAR`` on the decoded uint8 image; no resize when the
image already has that size), then compared as float in 0..255 over all 3 channels. With
Delta_c(p) = |real_c(p) - fake_c(p)|:

* ``RMSE`` = mean over images of sqrt( sum_p sum_c Delta_c(p)^2 / #pixels ) -- divided by the number
  of **pixels**, not pixels x 3 (root mean squared RGB Euclidean distance), in 0..255 units;
* ``acc@delta`` = (# pixels over all images with max_c Delta_c(p) < delta, strictly) / (# pixels over
  all images), in percent, for delta = 5 and 10 (configurable).

Pairs are matched by file stem (after removing an optional suffix such as ``_fake_B`` from the
prediction names), not by sorted order, so a missing file is an error instead of a silent shift.
``size=None`` compares at native size and requires equal sizes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from . import MetricsInputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class MapsInputError(MetricsInputError):
    """Missing pairs, unreadable images or size mismatches; the message names the files."""


def rmse_image(real: np.ndarray, fake: np.ndarray) -> float:
    """sqrt( sum_p sum_c (real - fake)^2 / #pixels ) for (H, W, C) images."""
    d = real.astype(np.float64) - fake.astype(np.float64)
    return float(np.sqrt(np.sum(d * d) / (d.shape[0] * d.shape[1])))


def correct_pixels(real: np.ndarray, fake: np.ndarray, delta: float) -> int:
    """# pixels whose largest channel difference |real - fake| is strictly below ``delta``."""
    d = np.abs(real.astype(np.float64) - fake.astype(np.float64))
    return int(np.count_nonzero(d.max(axis=-1) < delta))


def _index(folder: Path, strip: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise MapsInputError(f"image folder {folder} does not exist")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith("."):
            key = p.stem[: -len(strip)] if strip and p.stem.endswith(strip) else p.stem
            if key in out:
                raise MapsInputError(f"two images share the name {key!r} in {folder}: {out[key].name}, {p.name}")
            out[key] = p
    if not out:
        raise MapsInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return out


def pair_files(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, pred_suffix: str = "",
               gt_suffix: str = "") -> list[tuple[Path, Path]]:
    """(prediction, ground truth) pairs matched by stem; error naming the unmatched files."""
    preds, gts = _index(Path(pred_dir), pred_suffix), _index(Path(gt_dir), gt_suffix)
    only_pred, only_gt = sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))
    if only_pred or only_gt:
        parts = []
        if only_gt:
            parts.append(f"{len(only_gt)} ground-truth image(s) without prediction in {pred_dir} (e.g. {only_gt[:3]})")
        if only_pred:
            parts.append(f"{len(only_pred)} prediction(s) without ground truth in {gt_dir} (e.g. {only_pred[:3]})")
        raise MapsInputError("unpaired images: " + "; ".join(parts) + ". File names must match "
                             "(use --pred-suffix / --gt-suffix to strip e.g. '_fake_B').")
    return [(preds[k], gts[k]) for k in sorted(preds)]


def _read(path: Path, size: int | None) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MapsInputError(f"cannot read image {path}")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if size is not None and img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    return img


def maps_metrics_arrays(pairs: Sequence[tuple[np.ndarray, np.ndarray]], deltas: Sequence[float] = (5.0, 10.0)) -> dict:
    """Metrics over (fake, real) array pairs of equal shape (H, W, 3): ``RMSE``, ``acc@<d>`` (percent)."""
    rmses, total = [], 0
    correct = np.zeros(len(deltas), dtype=np.int64)
    for fake, real in pairs:
        if fake.shape != real.shape:
            raise MapsInputError(f"image sizes differ: prediction {fake.shape} vs ground truth {real.shape}")
        rmses.append(rmse_image(real, fake))
        correct += [correct_pixels(real, fake, d) for d in deltas]
        total += real.shape[0] * real.shape[1]
    if not rmses:
        raise MapsInputError("no image pairs to evaluate")
    row = {"RMSE": float(np.mean(rmses))}
    for d, c in zip(deltas, correct):
        row[f"acc@{d:g}"] = 100.0 * float(c) / total
    row["n_images"] = len(rmses)
    return row


def maps_metrics(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, size: int | None = 256,
                 deltas: Sequence[float] = (5.0, 10.0), pred_suffix: str = "", gt_suffix: str = "") -> dict:
    """Photo->Map RMSE and acc@delta between two folders with matching file names (module docstring)."""
    pairs = pair_files(pred_dir, gt_dir, pred_suffix, gt_suffix)

    def arrays():
        for p, g in pairs:
            fake, real = _read(p, size), _read(g, size)
            if fake.shape != real.shape:
                raise MapsInputError(f"size mismatch: {p} is {fake.shape[1]}x{fake.shape[0]}, {g} is "
                                     f"{real.shape[1]}x{real.shape[0]}; pass --size N to resize both")
            yield fake, real

    row = maps_metrics_arrays(arrays(), deltas)
    row.update(pred_dir=str(pred_dir), gt_dir=str(gt_dir), size=size if size is not None else "native")
    return row


__all__ = ["MapsInputError", "correct_pixels", "maps_metrics", "maps_metrics_arrays", "pair_files", "rmse_image"]
