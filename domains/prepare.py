"""``python -m domains prepare``: convert a raw dataset into the prepared-dataset contract.

Writes ``meta.json``, ``<split>.txt``, ``labels/<split>/<stem>_labelTrainIds.png`` and
``class_stats.json`` exactly as :mod:`domains.prepared` describes. Images stay where the dataset
ships them (they are only checked: PNG signature, every chunk's CRC, size equal to the label's).
Work streams one image at a time, optionally in a process pool, into ``<out>.tmp-<pid>`` which
replaces ``<out>`` only once complete (:func:`domains.io.atomic_dir`).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from domains.cityscapes import Cityscapes
from domains.gta5 import GTA5
from domains.io import DatasetFormatError, RawDataset, RawSample, atomic_dir, atomic_write_text, image_size, write_label_png
from domains.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES
from domains.prepared import CLASS_STATS, META, PreparedDataset
from domains.synthia import Synthia

log = logging.getLogger(__name__)

READERS: dict[str, type[RawDataset]] = {"gta5": GTA5, "synthia": Synthia, "cityscapes": Cityscapes}
LABEL_SUFFIX = "_labelTrainIds.png"


def make_reader(dataset: str, raw: str | os.PathLike, **options) -> RawDataset:
    """The reader of ``dataset`` (a key of :data:`READERS`) for the raw root ``raw``."""
    try:
        cls = READERS[dataset]
    except KeyError:
        raise DatasetFormatError(None, f"unknown dataset '{dataset}'", f"choose one of {', '.join(READERS)}") from None
    return cls(raw, **options)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def convert_sample(reader: RawDataset, label_dir: Path | None, verify_images: bool, sample: RawSample) -> np.ndarray | None:
    """Check one sample, write its trainId label under ``label_dir`` and return its counts.

    Returns ``np.bincount`` of the trainIds: 19 class counts followed by the ignored count
    (None for an unlabelled sample, whose image is still checked).
    """
    width, height = image_size(sample.image, verify=verify_images)
    if sample.label is None or label_dir is None:
        return None
    label = reader.read_label(sample.label)
    if label.shape != (height, width):
        raise DatasetFormatError(
            sample.label, f"is {label.shape[1]}x{label.shape[0]} but its image {sample.image} is {width}x{height}",
            "re-extract the pair (or delete it and use --skip-missing)",
        )
    write_label_png(label_dir / f"{sample.stem}{LABEL_SUFFIX}", label)
    counts = np.bincount(label.ravel(), minlength=IGNORE_INDEX + 1)
    return np.append(counts[:NUM_CLASSES], counts[IGNORE_INDEX]).astype(np.int64)


def _worker_init() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # let Pool.terminate() stop workers plainly
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _convert_split(reader: RawDataset, split: str, samples: list[RawSample], label_dir: Path | None,
                   workers: int, verify_images: bool) -> np.ndarray:
    """Convert every sample of a split; returns summed counts (19 classes + ignored)."""
    fn = functools.partial(convert_sample, reader, label_dir, verify_images)
    total = np.zeros(NUM_CLASSES + 1, dtype=np.int64)
    bar = dict(total=len(samples), desc=f"{reader.name}/{split}", unit="img", mininterval=1.0, dynamic_ncols=True)
    if workers <= 1 or len(samples) < 2:
        results = map(fn, samples)
        for counts in tqdm(results, **bar):
            if counts is not None:
                total += counts
        return total
    chunksize = max(1, min(32, len(samples) // (workers * 8)))
    with Pool(workers, initializer=_worker_init) as pool:
        for counts in tqdm(pool.imap(fn, samples, chunksize=chunksize), **bar):
            if counts is not None:
                total += counts
    return total


def prepare(dataset: str, raw: str | os.PathLike, out: str | os.PathLike, splits: Sequence[str] | None = None,
            skip_missing: bool = False, workers: int | None = None, unknown_ids: str = "error",
            verify_images: bool = True) -> PreparedDataset:
    """Prepare ``dataset`` from the raw root ``raw`` into ``out``; returns the loaded result.

    ``splits`` defaults to every split the reader finds. Raises :class:`DatasetFormatError`
    (naming the file) on bad input; ``out`` is then left as it was.
    """
    start = time.monotonic()
    reader = make_reader(dataset, raw, skip_missing=skip_missing, unknown_ids=unknown_ids)
    found = reader.splits()
    chosen = list(splits) if splits else found
    plan: dict[str, list[RawSample]] = {}
    for split in chosen:
        samples = reader.samples(split)
        if not samples:
            where = reader.image_dir(split)
            raise DatasetFormatError(where, f"{dataset} split '{split}' has no images",
                                     f"expected the layout {reader.layout}; check --raw")
        plan[split] = samples
    workers = default_workers() if workers is None else max(1, int(workers))
    out = Path(out).absolute()
    log.info("preparing %s from %s into %s: %s (%d workers)", dataset, reader.root, out,
             ", ".join(f"{s}={len(v)}" for s, v in plan.items()), workers)

    with atomic_dir(out, marker=META) as tmp:
        meta = {"dataset": dataset, "raw_root": str(reader.root), "label_suffix": LABEL_SUFFIX,
                "num_classes": NUM_CLASSES, "classes": list(CLASSES), "splits": {}}
        stats = {}
        for split, samples in plan.items():
            labelled = reader.is_labelled(split)
            label_dir = tmp / "labels" / split if labelled else None
            counts = _convert_split(reader, split, samples, label_dir, workers, verify_images)
            atomic_write_text(tmp / f"{split}.txt", "".join(f"{s.stem}\n" for s in samples))
            meta["splits"][split] = {"image_dir": str(reader.image_dir(split)), "img_suffix": reader.img_suffix,
                                     "count": len(samples), "labelled": labelled}
            if labelled:
                pixels = counts[:NUM_CLASSES]
                stats[split] = {"pixels": pixels.tolist(), "ignored": int(counts[NUM_CLASSES]),
                                "fractions": (pixels / max(int(pixels.sum()), 1)).tolist()}
            log.info("%s/%s: %d images%s", dataset, split, len(samples),
                     f", labels -> {out / 'labels' / split}" if labelled else " (unlabelled)")
        atomic_write_text(tmp / CLASS_STATS, json.dumps(stats, indent=2) + "\n")
        atomic_write_text(tmp / META, json.dumps(meta, indent=2) + "\n")  # written last: marks completeness
    log.info("wrote %s (meta.json, %s, class_stats.json) in %.1f s", out,
             ", ".join(f"{s}.txt" for s in plan), time.monotonic() - start)
    return PreparedDataset.load(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``prepare`` subcommand."""
    parser.add_argument("--dataset", required=True, choices=sorted(READERS), help="raw dataset format")
    parser.add_argument("--raw", required=True, type=Path, help="dataset root as it ships (e.g. data/raw/gta5)")
    parser.add_argument("--out", required=True, type=Path, help="prepared folder to write (e.g. data/prepared/gta5)")
    parser.add_argument("--splits", type=lambda s: [x for x in s.split(",") if x], default=None,
                        help="comma-separated splits (default: all found; gta5/synthia have only 'train')")
    parser.add_argument("--skip-missing", action="store_true",
                        help="log and skip images without label and labels without image instead of failing")
    parser.add_argument("--unknown-ids", choices=("error", "ignore"), default="error",
                        help="label ids outside the dataset's table: fail (default) or map them to 255")
    parser.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                        help="check only image headers (faster), not every PNG chunk's CRC")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="worker processes (default: min(4, CPU count)); 1 = no pool")


def run(args: argparse.Namespace) -> int:
    """Run ``prepare`` from parsed CLI arguments; errors propagate to the dispatcher."""
    prepare(args.dataset, args.raw, args.out, splits=args.splits, skip_missing=args.skip_missing,
            workers=args.workers, unknown_ids=args.unknown_ids, verify_images=args.verify_images)
    return 0
