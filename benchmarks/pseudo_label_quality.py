"""Pseudo-label quality of finished pseudo-label folders against the split's ground truth (not a test).

    python benchmarks/pseudo_label_quality.py --target data/prepared/minibench_cityscapes \\
        data/pseudo/minibench/bdl_none/r0 data/pseudo/minibench/bdl_semst/r0

``python -m segmenters pseudolabel`` writes the same figures into a new folder's ``meta.json``
(``quality_vs_ground_truth``, segmenters/pseudolabel.py); this script scores folders written before
that, or reads them again: per folder the coverage (labelled pixels that got a pseudo-label), the
precision of the kept pixels, their mIoU, and the three classes with the lowest precision. The
ground truth is a diagnostic; nothing that trains reads it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domains.prepared import PreparedDataset  # noqa: E402
from segmenters.io import read_label  # noqa: E402
from segmenters.pseudolabel import class_names, kept_confusion, label_quality  # noqa: E402


def folder_quality(folder: Path, dataset: PreparedDataset, split: str, num_classes: int = 19) -> dict:
    """:func:`segmenters.pseudolabel.label_quality` of one pseudo-label folder (``<stem>.png`` per sample)."""
    samples = [s for s in dataset.samples(split) if s.label is not None]
    if not samples:
        raise SystemExit(f"split '{split}' of {dataset.root} has no ground-truth labels to score against")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    labelled = 0
    for sample in samples:
        image_cm, image_labelled = kept_confusion(read_label(folder / f"{sample.stem}.png"), read_label(sample.label),
                                                  num_classes)
        cm += image_cm
        labelled += image_labelled
    return label_quality(cm, labelled, len(samples), class_names(num_classes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="pseudo-label folders (data/pseudo/<pair>/<run>/r<k>)")
    p.add_argument("--target", required=True, type=Path, help="the prepared target dataset they label")
    p.add_argument("--split", default="train", help="its split (default: %(default)s)")
    args = p.parse_args(argv)
    dataset = PreparedDataset.load(args.target)
    rows = []
    for folder in args.folders:
        q = folder_quality(folder, dataset, args.split)
        worst = sorted((v, k) for k, v in q["precision_per_class"].items() if v is not None)[:3]
        rows.append({"folder": str(folder), "coverage %": 100 * q["coverage"], "precision %": 100 * q["precision"],
                     "mIoU of kept %": 100 * q["mIoU"],
                     "lowest precision": ", ".join(f"{k} {100 * v:.0f}" for v, k in worst)})
    print(pd.DataFrame(rows).round(1).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
