"""FCN-score of a set of (refined or raw) source images: how well a *target-trained* segmenter
recovers the source labels from them (pix2pix / CycleGAN "FCN-score", docs/reference.md §11.1).

The segmenter is the target oracle's ``final.pth`` (any segmenter loadable by
``segmenters.loader.load_segmenter``). Protocol -- the project's evaluation protocol, shared with
``python -m segmenters evaluate`` through ``segmenters.evaluate.evaluate_samples``: every image is
resized (bilinear) to the segmenter's ``test_scale``, logits are bilinearly resized to the label's
native size, argmax, and **one** confusion matrix (rows = source label, columns = prediction,
ignore 255 dropped) is accumulated over the whole set under ``torch.inference_mode`` one batch at
a time. Scores (percent; ``segmenters.metrics``):

* ``pixel_acc``: Sum(diag) / Sum(cm) over **non-ignored** pixels (the convention the TSIT#1
  pitfall asks to state; pix2pix's own script also excludes them),
* ``mean_class_acc``: mean over classes of diag / rowsum,
* ``mIoU``: mean over classes of diag / (rowsum + colsum - diag), plus per-class IoU columns.

``convention="nan"`` (default) drops classes absent from the source labels *and* the predictions
(absent from labels only, for class accuracy) -- GTA5/SYNTHIA lack some classes; ``"eps"`` is the
pix2pix/GcGAN family (absent classes count 0, mean over all classes). ``class_set`` 16/13 adds the
SYNTHIA means ``mIoU16``/``mIoU13``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from domains.labels import CLASSES
from domains.prepared import PreparedDataError, PreparedDataset, Sample

logger = logging.getLogger(__name__)


def select_evenly(items: Sequence, limit: int | None) -> list:
    """At most ``limit`` items spread evenly over ``items`` (deterministic; all when ``limit`` is None)."""
    items = list(items)
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    idx = np.unique(np.linspace(0, len(items) - 1, int(limit)).round().astype(int))
    return [items[i] for i in idx]


def source_samples(source: str | os.PathLike, split: str = "train", images: str | os.PathLike | None = None,
                   limit: int | None = None) -> list[Sample]:
    """Labelled samples of a prepared dataset split, optionally with images from another folder.

    ``images`` is a refined folder holding the same stems (``python -m translators refine`` writes
    ``<stem><img_suffix>`` when the suffix is a PNG suffix, else ``<stem>.png``; both are found).
    Raises ``PreparedDataError`` naming the folder when the split is unlabelled or images are missing.
    """
    ds = PreparedDataset.load(source)
    if not ds.is_labelled(split):
        raise PreparedDataError(f"split '{split}' of {ds.root} has no labels; the FCN-score needs the source labels "
                                f"(labelled splits: {[s for s in ds.splits if ds.is_labelled(s)]})")
    folder = None if images is None else Path(images)
    if folder is not None and not folder.is_dir():
        raise PreparedDataError(f"image folder {folder} does not exist; run `python -m translators refine` "
                                f"first or pass the folder of the refined images")
    samples = select_evenly(ds.samples(split, image_dir=folder), limit)
    if not samples:
        raise PreparedDataError(f"split '{split}' of {ds.root} is empty ({ds.split_file(split)})")
    if folder is None:
        missing = [s.image for s in samples if not s.image.is_file()]
        where = f"the image folder {ds.image_dir(split)} of {ds.root / 'meta.json'}"
    else:
        resolved = []
        for s in samples:
            path = s.image
            if not path.is_file() and (alt := folder / f"{s.stem}.png").is_file():
                path = alt
            resolved.append(Sample(s.stem, path, s.label))
        samples = resolved
        missing = [s.image for s in samples if not s.image.is_file()]
        where = f"{folder} (expected the source stems of {ds.split_file(split)} with suffix " \
                f"'{ds.img_suffix(split)}' or '.png')"
    if missing:
        raise PreparedDataError(f"{len(missing)} of {len(samples)} images missing in {where}; first: {missing[0]}")
    return samples


def segment_confusion(segmenter, samples: Sequence[Sample], batch_size: int = 1, workers: int = 0) -> np.ndarray:
    """(C, C) int64 confusion (rows = label, columns = prediction) of ``segmenter`` on ``samples``."""
    from segmenters.evaluate import evaluate_samples

    return evaluate_samples(segmenter, samples, batch_size=batch_size, workers=workers)


def fcn_scores(cm: np.ndarray, class_set: int = 19, convention: str = "nan", eps: float = 1e-10) -> dict:
    """FCN-score row (percent): ``pixel_acc``, ``mean_class_acc``, ``mIoU`` (+ subset means), per-class IoU."""
    from segmenters.metrics import scores_row

    cm = np.asarray(cm)
    names = CLASSES if cm.shape[0] == len(CLASSES) else tuple(f"class_{c}" for c in range(cm.shape[0]))
    scores = scores_row(cm, class_set=class_set, class_names=names, convention=convention, eps=eps)
    row = {"pixel_acc": scores.pop("aAcc"), "mean_class_acc": scores.pop("mAcc"), "mIoU": scores.pop("mIoU")}
    if convention == "eps":       # pix2pix util.py: acc_c = diag / (rowsum + eps), mean over all classes
        cmf = cm.astype(np.float64)
        row["mean_class_acc"] = 100.0 * float(np.mean(np.diag(cmf) / (cmf.sum(axis=1) + eps)))
    for key in [k for k in scores if k.startswith("mIoU")]:
        row[key] = scores.pop(key)
    row.update({f"IoU_{name}": value for name, value in scores.items()})
    return row


def fcn_score(segmenter_path: str | os.PathLike, source: str | os.PathLike, images: str | os.PathLike | None = None,
              split: str = "train", limit: int | None = None, class_set: int = 19, convention: str = "nan",
              batch_size: int = 1, workers: int = 0, device: str | None = None,
              amp: bool = True) -> tuple[dict, np.ndarray]:
    """FCN-score of ``images`` (default: the raw source images) against the source labels.

    Returns (row, confusion matrix). The row also names the images, segmenter and count.
    """
    samples = source_samples(source, split, images, limit)          # fail fast, before loading the model
    from segmenters.io import default_device
    from segmenters.loader import load_segmenter

    segmenter = load_segmenter(segmenter_path, device=device or default_device(), amp=amp)
    logger.info("FCN-score of %d images (%s) with %s at test_scale %s", len(samples), images or "raw source",
                segmenter_path, list(segmenter.test_scale))
    cm = segment_confusion(segmenter, samples, batch_size, workers)
    row = fcn_scores(cm, class_set=class_set, convention=convention)
    row.update(images=str(images) if images is not None else "source", n_images=len(samples),
               segmenter=str(segmenter_path), source=str(source), split=split, convention=convention)
    return row, cm


__all__ = ["fcn_score", "fcn_scores", "segment_confusion", "select_evenly", "source_samples"]
