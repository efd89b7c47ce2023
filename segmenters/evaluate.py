"""``python -m segmenters evaluate``: score a ``final.pth`` on a labelled target split.

Protocol (AdaptSegNet/ADVENT practice, docs/reference.md §11.7): every image is resized
(bilinear) to the checkpoint's ``test_scale`` (w, h), the segmenter predicts logits, the
**logits** are bilinearly upsampled (align_corners=False) to the label's native size, argmax
gives trainIds, and one confusion matrix is accumulated over the whole split (ignore = 255).
The CSV row holds per-class IoU by class name, ``mIoU`` (19 classes), ``mIoU16``/``mIoU13`` for
``--class-set 16`` (both) or ``13`` (mIoU13), ``aAcc`` and ``mAcc`` -- all in percent, NaN
for classes absent from GT and predictions (``--iou-convention eps`` gives the "/19 with eps"
family instead) -- plus ``round`` and ``checkpoint``. The confusion matrix is saved beside the
CSV as ``<out stem>.confusion.npy`` (int64, rows = GT, columns = prediction), so any other
convention can be recomputed without inference.

``--save-predictions DIR`` writes ``DIR/<stem>.png`` at label size: trainIds, or with
``--labelids`` Cityscapes label ids (what cityscapesscripts' official evaluator reads).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from domains.io import atomic_path
from domains.labels import CLASSES, TRAINID_TO_CITYSCAPES_ID, lookup_table
from domains.prepared import PreparedDataError, PreparedDataset, Sample

from .io import (InferenceSet, add_input_flags, add_runtime_flags, batched_probabilities, default_device,
                 resize_maps, write_png)
from .metrics import SUBSET_COLUMNS, confusion_matrix, scores_row

logger = logging.getLogger(__name__)


def labelled_samples(target: str | Path, split: str) -> list[Sample]:
    """Samples of a labelled split; one clear error when the split has no labels."""
    dataset = PreparedDataset.load(target)
    if not dataset.is_labelled(split):
        raise PreparedDataError(
            f"split '{split}' of the prepared dataset {dataset.root} has no labels "
            f"({dataset.root / 'meta.json'}: splits.{split}.labelled is false); evaluate needs a labelled "
            f"split, e.g. {', '.join(s for s in dataset.splits if dataset.is_labelled(s)) or 'none available'}")
    samples = dataset.samples(split)
    if not samples:
        raise PreparedDataError(f"split '{split}' of {dataset.root} is empty ({dataset.split_file(split)})")
    return samples


def evaluate_samples(segmenter, samples: Sequence[Sample], batch_size: int = 1, workers: int = 0,
                     save_dir: str | Path | None = None, labelids: bool = False) -> np.ndarray:
    """Dataset-level (C, C) int64 confusion matrix of ``segmenter`` on ``samples``.

    Optionally writes each prediction (label size) to ``save_dir/<stem>.png`` as trainIds or,
    with ``labelids``, Cityscapes label ids.
    """
    num_classes = int(segmenter.num_classes)
    id_lut = lookup_table(TRAINID_TO_CITYSCAPES_ID, fill=0) if labelids else None
    dataset = InferenceSet([s.image for s in samples], segmenter.test_scale, [s.label for s in samples])
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for batch, logits in batched_probabilities(segmenter, dataset, batch_size, workers, desc="evaluate"):
        for i, (index, label) in enumerate(zip(batch["index"], batch["label"])):
            up = resize_maps(logits[i:i + 1], label.shape)          # logits to label size, then argmax
            pred = up.argmax(dim=1)[0].to(torch.uint8 if num_classes <= 255 else torch.int64).cpu().numpy()
            cm += confusion_matrix(pred, label, num_classes=num_classes)
            if save_dir is not None:
                out = pred.astype(np.uint8)
                write_png(Path(save_dir) / f"{samples[index].stem}.png", id_lut[out] if labelids else out)
    return cm


def confusion_path(csv_path: str | Path) -> Path:
    """Where the confusion matrix of a result CSV is stored: ``<dir>/<stem>.confusion.npy``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(f"{csv_path.stem}.confusion.npy")


def write_result(csv_path: str | Path, cm: np.ndarray, class_set: int, round_: int | None, checkpoint: str,
                 convention: str = "nan") -> dict:
    """Write the one-row CSV (and the confusion matrix beside it) atomically; return the row."""
    import pandas as pd

    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    num_classes = cm.shape[0]
    names = CLASSES if num_classes == len(CLASSES) else tuple(f"class_{c}" for c in range(num_classes))
    row = dict(scores_row(cm, class_set=class_set, class_names=names, convention=convention))
    row["round"] = round_
    row["checkpoint"] = str(checkpoint)
    with atomic_path(confusion_path(csv_path), suffix=".npy") as tmp_npy:
        np.save(tmp_npy, cm)
    # the CSV last: its presence means the evaluation is complete (no suffix: pandas infers no compression)
    with atomic_path(csv_path, suffix="") as tmp_csv:
        pd.DataFrame([row]).to_csv(tmp_csv, index=False)
    return row


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segmenters evaluate", description=__doc__.split("\n\n")[0])
    add_input_flags(p, checkpoint="final.pth written by `python -m segmenters train`", split="val",
                    split_help="labelled split to score (default: %(default)s)",
                    out="result CSV (one row); <stem>.confusion.npy is written beside it")
    p.add_argument("--round", type=int, default=None, help="round index k written to the 'round' column")
    p.add_argument("--class-set", type=int, choices=sorted(SUBSET_COLUMNS), default=19,
                   help="19: mIoU only; 16: add mIoU16 and mIoU13 (SYNTHIA); 13: add mIoU13")
    p.add_argument("--iou-convention", choices=["nan", "eps"], default="nan",
                   help="nan: classes absent from GT and predictions are excluded (default); "
                        "eps: TP/(TP+FP+FN+eps), mean over all classes (pix2pix FCN-score family)")
    p.add_argument("--save-predictions", metavar="DIR", default=None,
                   help="write predictions at label size to DIR/<stem>.png (trainIds)")
    p.add_argument("--labelids", action="store_true",
                   help="with --save-predictions: write Cityscapes label ids (for cityscapesscripts)")
    add_runtime_flags(p)
    return p


def run(args: argparse.Namespace) -> dict:
    """Evaluate as the parsed command line says; returns the CSV row."""
    if args.labelids and not args.save_predictions:
        raise SystemExit("--labelids needs --save-predictions DIR")
    samples = labelled_samples(args.target, args.split)   # before loading the model: fail fast

    from .loader import load_segmenter

    segmenter = load_segmenter(args.checkpoint, device=args.device or default_device(), amp=not args.no_amp)
    if args.labelids and segmenter.num_classes != len(CLASSES):
        raise SystemExit(f"--labelids needs a 19-class model, {args.checkpoint} has {segmenter.num_classes}")
    logger.info("evaluating %s on %s/%s (%d images, test_scale %s)", args.checkpoint, args.target, args.split,
                len(samples), list(segmenter.test_scale) if segmenter.test_scale is not None else None)
    cm = evaluate_samples(segmenter, samples, args.batch_size, args.workers, args.save_predictions, args.labelids)
    row = write_result(args.out, cm, args.class_set, args.round, args.checkpoint, args.iou_convention)
    logger.info("%s: mIoU %.2f aAcc %.2f mAcc %.2f -> %s", args.checkpoint, row["mIoU"], row["aAcc"], row["mAcc"],
                args.out)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args)
    return 0


if __name__ == "__main__":
    main()
