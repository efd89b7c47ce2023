"""``python -m segmenters pseudolabel``: offline pseudo-labels for a target split from a ``final.pth``.

Rule ``bdl`` (BDL's ``SSL.py``): softmax probabilities are upsampled (bilinear) from the inference
size to the image's native size; per pixel label = argmax, confidence = max-probability. For each
class c, threshold_c = SSL.py's median ``x[int(np.round(n * 0.5))]`` (``--percentile 50``) of the
sorted confidences x of the n pixels of the split predicted as c, capped at ``--cap 0.9``; 0 if c
is never predicted. A pixel keeps its label iff confidence >= threshold of its predicted class,
otherwise it becomes 255 (ignore). Rule ``fixed``: one threshold ``--threshold t`` for all classes.

Exact thresholds in bounded memory (BDL's own script holds two float64 (N, 512, 1024) arrays,
~25 GB for Cityscapes train):

- ONE model pass. Each image's argmax is written as a provisional PNG and its max-probability map
  (float16) into ``confidences.h5`` -- the output the contract asks for anyway, which doubles as
  the on-disk cache. Per class, the stored float16 confidences are counted per float16 value:
  non-negative float16 numbers are ordered like their 16-bit codes, and [0, 1] holds 15,361 of
  them, so a (C, 15,361) int64 table (2.3 MB for 19 classes) is the exact sorted multiset.
- The threshold is SSL.py's order statistic ``x[int(np.round(n * q))]`` of the class's sorted
  confidences (q = 0.5: the upper median for even n; ``np.round`` rounds halves to even, so n = 3
  takes the largest value), read from the cumulative counts; an index of n (q near 1) is clamped to
  n - 1 where SSL.py would fail. It is exact on the stored float16 values: as rounding is
  monotone, it equals the float16 rounding of SSL.py's float32 threshold, and the keep test
  compares the same stored values (a pixel within float16 rounding below SSL.py's threshold can be
  kept; documented in docs, tested on hand-made cases against a brute-force SSL.py rule).
- Pass 2 (no model) re-reads each provisional PNG and its confidence map, applies the
  thresholds and overwrites the PNG. Memory: one image at native size + the count table.

Outputs, written into ``.<out>.tmp-<pid>`` and renamed to ``--out`` when complete:
``<stem>.png`` (uint8 trainIds, 255 ignore, native image size; stems keep sub-folders),
``confidences.h5`` (``maxprob/<stem>``: float16 (H, W); with ``--soft-scale s``
``soft/<stem>``: float16 (C, round(H*s), round(W*s)) bilinearly resized softmax probabilities, e.g.
for ProDA-style prototypes; file attributes ``num_classes``, ``soft_scale``) and ``meta.json``
(rule, per-class thresholds, checkpoint, pixel counts and the fraction kept per class).

When the split has ground-truth labels (minicity's and Cityscapes' train splits do), pass 2 also
scores the written pseudo-labels against them: ``meta.json`` ``quality_vs_ground_truth`` holds the
coverage (labelled pixels that got a pseudo-label), the precision of the kept pixels, the mIoU of
the kept pixels and the precision per class. A diagnostic of why self-training rounds help or not
(pseudo-label accuracy is what self-training papers report beside their thresholds); nothing that
trains reads it, and an unlabelled split gets ``null``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from domains.labels import CLASSES, IGNORE_INDEX
from domains.prepared import PreparedDataError, PreparedDataset, Sample

from .metrics import confusion_matrix, miou, per_class_iou
from .io import (InferenceSet, add_input_flags, add_runtime_flags, batched_probabilities, default_device, read_label,
                 resize_maps, write_png)

logger = logging.getLogger(__name__)

CONFIDENCES = "confidences.h5"
META = "meta.json"


@dataclass(frozen=True)
class PseudoLabelRule:
    """The keep rule and its settings. The defaults here are the one definition of BDL's numbers: the
    functions below and the CLI flags default to these fields (tests/test_defaults.py checks, and that
    the workflow schema's ``uda.<uda>.pseudo_rule`` default is :attr:`rule`). ``bdl`` (BDL's SSL.py):
    per class, the ``percentile`` order statistic of the confidences of the pixels predicted as that
    class, capped at ``cap``; ``fixed``: one ``threshold`` for every class."""

    rule: str = "bdl"
    percentile: float = 50.0
    cap: float = 0.9
    threshold: float = 0.9
    flip: bool = False


#: the rules of ``--rule`` (workflow: ``uda.<uda>.pseudo_rule``)
RULES = ("bdl", "fixed")


# --------------------------------------------------------------------------- pure functions
#: float16 1.0 as a 16-bit code (0x3C00): codes 0..F16_ONE are the float16 values in [0, 1], in order
F16_ONE = int(np.array(1.0, dtype=np.float16).view(np.uint16))
#: columns of the per-class count table: one per float16 value in [0, 1]
CODES = F16_ONE + 1


def empty_counts(num_classes: int) -> np.ndarray:
    """A zero (num_classes, CODES) count table for :func:`accumulate_counts`."""
    return np.zeros((num_classes, CODES), dtype=np.int64)


def accumulate_counts(counts: np.ndarray, pred: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """Add one image to the per-class counts of float16 confidences ``counts`` (C, CODES) in place
    (and return it). ``pred`` holds class indices, ``conf`` the max-probabilities in [0, 1]; each is
    rounded to float16 (what confidences.h5 stores) and counted under its 16-bit code."""
    num_classes = counts.shape[0]
    pred = np.asarray(pred).ravel().astype(np.int64)
    conf16 = np.asarray(conf).astype(np.float16).ravel()
    if not np.all((conf16 >= 0) & (conf16 <= 1)):     # NaN fails both comparisons
        bad = conf16[~((conf16 >= 0) & (conf16 <= 1))][0]
        raise ValueError(f"confidence {bad} is not a probability in [0, 1]: the model's outputs are not finite "
                         "or not a softmax")
    codes = conf16.view(np.uint16).astype(np.int64)
    counts += np.bincount(pred * CODES + codes, minlength=num_classes * CODES).reshape(num_classes, CODES)
    return counts


def order_statistic_index(n: int, q: float) -> int:
    """SSL.py's index into the ascending confidences of a class with ``n`` pixels:
    ``int(np.round(n * q))`` (halves round to even), clamped to ``n - 1``."""
    return min(int(np.round(n * q)), n - 1)


def class_order_statistics(counts: np.ndarray, q: float = PseudoLabelRule.percentile / 100.0) -> np.ndarray:
    """Per class, the value ``x[order_statistic_index(n, q)]`` of its sorted float16 confidences
    counted in ``counts`` (C, CODES); 0 for classes with no pixels. ``q`` in (0, 1]."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {q}")
    num_classes = counts.shape[0]
    out = np.zeros(num_classes, dtype=np.float64)
    for c in range(num_classes):          # loop over classes, not pixels
        n = int(counts[c].sum())
        if n == 0:
            continue
        k = order_statistic_index(n, q)
        code = int(np.searchsorted(np.cumsum(counts[c]), k, side="right"))   # first code with > k values <= it
        out[c] = float(np.array(code, dtype=np.uint16).view(np.float16))
    return out


def class_thresholds(counts: np.ndarray, rule: str = PseudoLabelRule.rule,
                     percentile: float = PseudoLabelRule.percentile, cap: float = PseudoLabelRule.cap,
                     threshold: float = PseudoLabelRule.threshold) -> np.ndarray:
    """Per-class keep thresholds from the counts of :func:`accumulate_counts`: ``bdl`` = min(SSL.py's
    order statistic at ``percentile``, cap), 0 for a class never predicted; ``fixed`` = ``threshold``
    for every class."""
    if rule == "bdl":
        return np.minimum(class_order_statistics(counts, percentile / 100.0), cap)
    if rule == "fixed":
        return np.full(counts.shape[0], float(threshold))
    raise ValueError(f"unknown pseudo-label rule {rule!r}; use 'bdl' or 'fixed'")


def apply_thresholds(pred: np.ndarray, conf: np.ndarray, thresholds: np.ndarray,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """uint8 pseudo-label: ``pred`` where ``conf >= thresholds[pred]``, else ``ignore_index``."""
    pred = np.asarray(pred)
    keep = np.asarray(conf, dtype=np.float32) >= thresholds.astype(np.float32)[pred]
    return np.where(keep, pred, ignore_index).astype(np.uint8)


# --------------------------------------------------------------------------- the two passes
def _soft_size(size_hw: Sequence[int], scale: float) -> tuple[int, int]:
    return max(1, int(round(size_hw[0] * scale))), max(1, int(round(size_hw[1] * scale)))


def predict_pass(segmenter, samples: Sequence[Sample], work: Path, soft_scale: float | None = None,
                 batch_size: int = 1, workers: int = 0, flip: bool = PseudoLabelRule.flip) -> np.ndarray:
    """Pass 1: provisional argmax PNGs + confidences.h5 in ``work``; returns the (C, CODES) counts."""
    import h5py

    num_classes = int(segmenter.num_classes)
    if num_classes > 255:
        raise ValueError(f"{num_classes} classes do not fit uint8 pseudo-label PNGs")
    counts = empty_counts(num_classes)
    dataset = InferenceSet([s.image for s in samples], segmenter.test_scale)
    with h5py.File(work / CONFIDENCES, "w") as h5:
        h5.attrs["num_classes"] = num_classes
        h5.attrs["soft_scale"] = float(soft_scale) if soft_scale else 0.0
        h5.attrs["layout"] = "maxprob/<stem>: float16 (H, W); soft/<stem>: float16 (C, h, w) when soft_scale > 0"
        for batch, probs in batched_probabilities(segmenter, dataset, batch_size, workers, softmax=True,
                                                  desc="pseudolabel", flip=flip):
            for i, (index, size) in enumerate(zip(batch["index"], batch["size"])):
                stem = samples[index].stem
                up = resize_maps(probs[i:i + 1], size)
                conf_t, pred_t = up.max(dim=1)
                conf = conf_t[0].cpu().numpy().astype(np.float16)
                pred = pred_t[0].cpu().numpy().astype(np.uint8)
                del up, conf_t, pred_t
                write_png(work / f"{stem}.png", pred)
                h5.create_dataset(f"maxprob/{stem}", data=conf, compression="lzf", shuffle=True)
                if soft_scale:
                    soft = resize_maps(probs[i:i + 1], _soft_size(size, soft_scale))[0]
                    h5.create_dataset(f"soft/{stem}", data=soft.cpu().numpy().astype(np.float16),
                                      compression="lzf", shuffle=True)
                accumulate_counts(counts, pred, conf)
    return counts


def kept_confusion(label: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, int]:
    """(confusion ``cm[gt, pseudo]`` over the kept pixels, number of ground-truth-labelled pixels)."""
    labelled = (gt < num_classes) & (gt != IGNORE_INDEX)
    scored = np.where(label == IGNORE_INDEX, IGNORE_INDEX, gt)
    return confusion_matrix(label, scored, num_classes), int(labelled.sum())


def label_quality(cm: np.ndarray, labelled: int, images: int, names: Sequence[str]) -> dict:
    """``quality_vs_ground_truth`` of meta.json from the summed :func:`kept_confusion` results."""
    cm = np.asarray(cm, dtype=np.float64)
    kept = cm.sum()
    predicted = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, np.diag(cm) / np.where(predicted > 0, predicted, 1.0), np.nan)
    value = lambda x: None if np.isnan(x) else round(float(x), 6)  # noqa: E731
    return {
        "images": int(images),
        "coverage": value(kept / labelled if labelled else np.nan),
        "precision": value(np.trace(cm) / kept if kept else np.nan),
        "mIoU": value(miou(per_class_iou(cm))),
        "precision_per_class": {n: value(p) for n, p in zip(names, precision)},
        "note": "the split's ground truth, read after the pseudo-labels were written; a diagnostic, not a training input",
    }


def threshold_pass(samples: Sequence[Sample], work: Path,
                   thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """Pass 2: rewrite each provisional PNG with the thresholds; returns the (predicted, kept) pixel
    counts and, when the samples have ground-truth labels, their :func:`label_quality`."""
    import h5py
    from tqdm import tqdm

    num_classes = thresholds.shape[0]
    predicted = np.zeros(num_classes, dtype=np.int64)
    kept = np.zeros(num_classes, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    labelled = scored_images = 0
    with h5py.File(work / CONFIDENCES, "r") as h5:
        for sample in tqdm(samples, desc="threshold", unit="img", dynamic_ncols=True):
            path = work / f"{sample.stem}.png"
            pred = read_label(path)
            conf = h5[f"maxprob/{sample.stem}"][()]
            label = apply_thresholds(pred, conf, thresholds)
            predicted += np.bincount(pred.ravel(), minlength=num_classes)[:num_classes]
            kept += np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]
            write_png(path, label)
            if sample.label is not None:
                image_cm, image_labelled = kept_confusion(label, read_label(sample.label), num_classes)
                cm += image_cm
                labelled += image_labelled
                scored_images += 1
    quality = label_quality(cm, labelled, scored_images, class_names(num_classes)) if scored_images else None
    return predicted, kept, quality


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an older result only after success."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def staged_output_dir(out: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``out`` to write into; it replaces ``out`` when the block ends
    without error and is deleted otherwise, so ``out`` is never left half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        yield work
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def class_names(num_classes: int) -> list[str]:
    """Cityscapes' names for 19 classes, ``class_<c>`` otherwise (meta.json keys)."""
    return list(CLASSES) if num_classes == len(CLASSES) else [f"class_{c}" for c in range(num_classes)]


def generate(segmenter, samples: Sequence[Sample], out: str | Path, rule: str = PseudoLabelRule.rule,
             threshold: float = PseudoLabelRule.threshold, percentile: float = PseudoLabelRule.percentile,
             cap: float = PseudoLabelRule.cap, soft_scale: float | None = None,
             batch_size: int = 1, workers: int = 0, extra_meta: dict | None = None,
             flip: bool = PseudoLabelRule.flip) -> dict:
    """Write a complete pseudo-label folder at ``out`` (atomically); returns its meta.json content."""
    if rule not in RULES:
        raise ValueError(f"unknown pseudo-label rule {rule!r}; use 'bdl' or 'fixed'")
    if rule == "bdl" and not 0.0 < percentile <= 100.0:
        raise ValueError(f"--percentile must be in (0, 100], got {percentile}")
    if soft_scale is not None and not 0.0 < soft_scale <= 1.0:
        raise ValueError(f"--soft-scale must be in (0, 1], got {soft_scale}")
    with staged_output_dir(Path(out)) as work:
        counts = predict_pass(segmenter, samples, work, soft_scale, batch_size, workers, flip)
        thresholds = class_thresholds(counts, rule, percentile, cap, threshold)
        predicted, kept, quality = threshold_pass(samples, work, thresholds)
        num_classes = thresholds.shape[0]
        names = class_names(num_classes)
        frac = np.where(predicted > 0, kept / np.maximum(predicted, 1), np.nan)
        meta = {
            "rule": rule,
            "percentile": percentile if rule == "bdl" else None,
            "cap": cap if rule == "bdl" else None,
            "threshold": threshold if rule == "fixed" else None,
            "thresholds": dict(zip(names, thresholds.tolist())),   # float16 values, exact in JSON
            "threshold_statistic": ("x[int(np.round(n * percentile / 100))] of the class's n sorted float16 "
                                    "confidences, capped (BDL SSL.py)") if rule == "bdl" else None,
            "confidence_dtype": "float16",
            "flip": flip,
            "soft_scale": soft_scale,
            "num_images": len(samples),
            "ignore_index": IGNORE_INDEX,
            "pixels_predicted": dict(zip(names, predicted.tolist())),
            "pixels_kept": dict(zip(names, kept.tolist())),
            "fraction_kept": {n: (None if np.isnan(f) else round(float(f), 6)) for n, f in zip(names, frac)},
            "fraction_kept_total": float(kept.sum() / max(predicted.sum(), 1)),
            "quality_vs_ground_truth": quality,
            **(extra_meta or {}),
        }
        (work / META).write_text(json.dumps(meta, indent=2))
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segmenters pseudolabel", description=__doc__.split("\n\n")[0])
    add_input_flags(p, checkpoint="final.pth of the previous round's segmenter", split="train",
                    split_help="split to label (default: %(default)s; labels not needed)",
                    out="output folder (data/pseudo/<pair>/<uda>_<translator>/r<k>)")
    p.add_argument("--rule", choices=list(RULES), default=PseudoLabelRule.rule,
                   help="bdl: per-class median confidence capped at --cap (BDL SSL.py); fixed: --threshold")
    p.add_argument("--threshold", type=float, default=PseudoLabelRule.threshold, help="keep threshold of --rule fixed")
    p.add_argument("--percentile", type=float, default=PseudoLabelRule.percentile,
                   help="per-class percentile of --rule bdl (BDL: %(default)g)")
    p.add_argument("--cap", type=float, default=PseudoLabelRule.cap,
                   help="upper bound of the per-class thresholds (BDL: %(default)g)")
    p.add_argument("--flip", action="store_true", default=PseudoLabelRule.flip,
                   help="probabilities = mean over the image and its horizontal mirror (flip test-time "
                        "augmentation; BDL's SSL.py does not; doubles the inference time)")
    p.add_argument("--soft-scale", type=float, default=None,
                   help="also store softmax probabilities at this fraction of the native size (float16)")
    add_runtime_flags(p)
    return p


def open_split_and_segmenter(args: argparse.Namespace):
    """(samples of ``--target``/``--split``, segmenter of ``--checkpoint``) for the inference CLIs;
    an empty split is a PreparedDataError naming the split file."""
    dataset = PreparedDataset.load(args.target)
    samples = dataset.samples(args.split)
    if not samples:
        raise PreparedDataError(f"split '{args.split}' of {dataset.root} is empty ({dataset.split_file(args.split)})")
    from .loader import load_segmenter

    return samples, load_segmenter(args.checkpoint, device=args.device or default_device(), amp=not args.no_amp)


def run(args: argparse.Namespace) -> dict:
    """Pseudo-label as the parsed command line says; returns the meta.json content."""
    samples, segmenter = open_split_and_segmenter(args)
    logger.info("pseudo-labelling %s/%s (%d images) with %s, rule %s", args.target, args.split, len(samples),
                args.checkpoint, args.rule)
    ckpt_meta = {k: segmenter.meta.get(k) for k in ("arch", "preset", "uda", "iter", "test_scale")}
    meta = generate(segmenter, samples, args.out, rule=args.rule, threshold=args.threshold,
                    percentile=args.percentile, cap=args.cap, soft_scale=args.soft_scale,
                    batch_size=args.batch_size, workers=args.workers, flip=args.flip,
                    extra_meta={"checkpoint": str(args.checkpoint), "checkpoint_meta": ckpt_meta,
                                "target": str(args.target), "split": args.split})
    logger.info("wrote %s: %.1f%% of pixels kept", args.out, 100 * meta["fraction_kept_total"])
    quality = meta["quality_vs_ground_truth"]
    if quality and quality["precision"] is not None:
        logger.info("against the split's ground truth (diagnostic): %.1f%% of labelled pixels pseudo-labelled, "
                    "%.1f%% of them correct, mIoU %.1f", 100 * quality["coverage"], 100 * quality["precision"],
                    100 * (quality["mIoU"] or 0.0))
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args)
    return 0


if __name__ == "__main__":
    main()
