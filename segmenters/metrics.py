"""Semantic-segmentation metrics from a dataset-level confusion matrix (pure numpy functions).

Conventions (docs/reference.md §11.2 and §11.7):

- ``confusion_matrix`` counts GT rows x predicted columns over the pixels whose GT is a valid class
  (``0 <= gt < num_classes``); ignore pixels (255) and any other out-of-range GT are dropped, so a
  prediction on an ignored pixel never counts as a false positive (same as cityscapesscripts, which
  only counts non-ignored GT rows for FP). Matrices are *accumulated over the whole dataset* (sum
  of per-image matrices), not averaged per image.
- IoU_c = TP / (TP + FP + FN) = diag / (rowsum + colsum - diag).
  Default convention ``"nan"`` (AdaptSegNet/ADVENT ``per_class_iu``, cityscapesscripts, MMSeg
  ``IoUMetric``): a class absent from GT *and* never predicted is 0/0 = NaN and drops out of the
  mean (``np.nanmean``); a class absent from GT but predicted has IoU 0 and counts.
  Convention ``"eps"`` (pix2pix / GcGAN / SRC FCN-score scripts): IoU_c = TP / (TP+FP+FN+eps), so
  absent classes are 0 and the mean divides by the number of classes (19).
- mIoU16 / mIoU13 (SYNTHIA -> Cityscapes) average the 19-class IoU vector over the trainId subsets
  ``domains.labels.SYNTHIA_16`` / ``SYNTHIA_13`` (same NaN rule).
- aAcc = sum(diag) / sum(cm) over non-ignored pixels; mAcc = nanmean over classes of TP / rowsum
  (classes absent from GT are NaN and excluded; MMSeg's definition).
- ``scores_row`` reports everything as **percentages** (x100, not rounded; round when presenting).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Literal, Sequence

import numpy as np

from domains.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES, SYNTHIA_13, SYNTHIA_16

Convention = Literal["nan", "eps"]
#: class-set name -> trainIds averaged for it
CLASS_SUBSETS: dict[int, tuple[int, ...]] = {
    NUM_CLASSES: tuple(range(NUM_CLASSES)),
    16: SYNTHIA_16,
    13: SYNTHIA_13,
}
#: the extra mean columns ``scores_row`` adds for each ``class_set`` (mIoU, the 19-class mean, is always there)
SUBSET_COLUMNS: dict[int, tuple[str, ...]] = {NUM_CLASSES: (), 16: ("mIoU16", "mIoU13"), 13: ("mIoU13",)}
DEFAULT_EPS = 1e-10


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int = NUM_CLASSES,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64 matrix, ``cm[gt, pred]`` pixel counts, via one ``np.bincount``.

    Pixels whose GT is ``ignore_index`` or outside ``[0, num_classes)`` are skipped. A prediction
    outside ``[0, num_classes)`` on a counted pixel is an error (argmax over exactly
    ``num_classes`` logits never produces one). Sum the results over images for a dataset score.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; "
                         "resize the logits to the label size before argmax")
    gt = gt.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    valid = (gt >= 0) & (gt < num_classes) & (gt != ignore_index)
    gt, pred = gt[valid], pred[valid]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        bad = int(pred[(pred < 0) | (pred >= num_classes)][0])
        raise ValueError(f"prediction holds class {bad} outside [0, {num_classes}) on a labelled pixel")
    return np.bincount(num_classes * gt + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_iou(cm: np.ndarray, convention: Convention = "nan", eps: float = DEFAULT_EPS) -> np.ndarray:
    """IoU per class (fractions in [0, 1]); NaN for classes absent from GT and predictions
    (``convention="nan"``), or TP/(TP+FP+FN+eps) with absent classes 0 (``convention="eps"``)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1) - tp
    if convention == "eps":
        return tp / (denom + eps)
    if convention != "nan":
        raise ValueError(f"unknown IoU convention {convention!r}; use 'nan' or 'eps'")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def miou(iou: np.ndarray, subset: Iterable[int] | int | None = None) -> float:
    """Mean IoU over ``subset`` (trainIds, or 16 / 13 for the SYNTHIA subsets; None = all classes),
    skipping NaN entries. NaN if every selected class is NaN."""
    iou = np.asarray(iou, dtype=np.float64)
    if isinstance(subset, int):
        if subset not in CLASS_SUBSETS:
            raise ValueError(f"unknown class set {subset}; use one of {sorted(CLASS_SUBSETS)}")
        subset = CLASS_SUBSETS[subset]
    values = iou if subset is None else iou[list(subset)]
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    return float(np.nanmean(values))


def pixel_accuracy(cm: np.ndarray) -> float:
    """aAcc: correctly classified / all counted (non-ignored) pixels; NaN for an empty matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


def class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Per-class recall TP / (TP + FN); NaN for classes absent from GT."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(cm) / np.where(rows > 0, rows, 1.0), np.nan)


def mean_class_accuracy(cm: np.ndarray) -> float:
    """mAcc: nanmean of ``class_accuracy`` (classes absent from GT excluded)."""
    acc = class_accuracy(cm)
    return float("nan") if np.all(np.isnan(acc)) else float(np.nanmean(acc))


def scores_row(cm: np.ndarray, class_set: int = NUM_CLASSES, class_names: Sequence[str] = CLASSES,
               convention: Convention = "nan", eps: float = DEFAULT_EPS) -> "OrderedDict[str, float]":
    """One result row in percent: per-class IoU by class name, ``mIoU`` (all classes), the subset
    means for ``class_set`` (19: none; 16: ``mIoU16`` and ``mIoU13``; 13: ``mIoU13``), ``aAcc``, ``mAcc``.

    ``class_set`` 16/13 needs the 19 Cityscapes classes (the subsets are trainId lists).
    """
    cm = np.asarray(cm)
    num_classes = cm.shape[0]
    if cm.ndim != 2 or cm.shape[1] != num_classes:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a {num_classes}-class confusion matrix")
    if class_set not in SUBSET_COLUMNS:
        raise ValueError(f"class set must be one of {sorted(SUBSET_COLUMNS)}, got {class_set}")
    if class_set != NUM_CLASSES and num_classes != NUM_CLASSES:
        raise ValueError(f"class set {class_set} is defined on the 19 Cityscapes trainIds, "
                         f"not on a {num_classes}-class matrix")
    iou = per_class_iou(cm, convention=convention, eps=eps)
    row: OrderedDict[str, float] = OrderedDict((name, 100.0 * float(v)) for name, v in zip(class_names, iou))
    row["mIoU"] = 100.0 * miou(iou)
    for column in SUBSET_COLUMNS[class_set]:
        row[column] = 100.0 * miou(iou, int(column[4:]))
    row["aAcc"] = 100.0 * pixel_accuracy(cm)
    row["mAcc"] = 100.0 * mean_class_accuracy(cm)
    return row
