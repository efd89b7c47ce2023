"""Command line: ``python -m translators.metrics {fcn-score,distortion,fid,maps} ...``.

Each subcommand writes a one-row CSV (pandas; temporary name, then renamed) and prints a short
table. fcn-score and distortion also write their confusion matrices beside the CSV
(``<stem>.confusion.npy``; distortion adds ``<stem>.reference_confusion.npy`` and
``<stem>.distortion.npy``) so other conventions can be recomputed without inference.
Exit codes: 0 ok, 2 bad input (missing files, wrong dataset, missing Inception weights).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from domains.io import atomic_path

log = logging.getLogger("translators.metrics")

SUMMARY_COLUMNS = {
    "fcn-score": ["translator", "n_images", "pixel_acc", "mean_class_acc", "mIoU", "mIoU16", "mIoU13"],
    "distortion": ["translator", "n_images", "mean_diag_change_pp", "mean_flip_pp"],
    "fid": ["translator", "n_real", "n_fake", "FID", "KIDx100", "KIDx100_std", "kid_subset_size", "features"],
    "maps": ["translator", "n_images", "RMSE", "acc@5", "acc@10"],
}


def write_csv(row: dict, path: str | os.PathLike) -> Path:
    """Write ``row`` as a one-row CSV atomically (temporary name in the same folder, then rename)."""
    import pandas as pd

    path = Path(path)
    with atomic_path(path, suffix="") as tmp:  # no suffix: pandas infers no compression
        pd.DataFrame([row]).to_csv(tmp, index=False)
    return path


def save_npy(array: np.ndarray, csv_path: str | os.PathLike, tag: str) -> Path:
    """Save ``array`` as ``<csv dir>/<csv stem>.<tag>.npy`` atomically."""
    csv_path = Path(csv_path)
    out = csv_path.with_name(f"{csv_path.stem}.{tag}.npy")
    with atomic_path(out, suffix=".npy") as tmp:
        np.save(tmp, array)
    return out


def print_table(row: dict, command: str, extra: Sequence[str] = ()) -> None:
    """A short transposed table of the headline columns."""
    cols = [c for c in [*SUMMARY_COLUMNS[command], *extra] if c in row and row[c] is not None]
    width = max(len(c) for c in cols)
    for c in cols:
        v = row[c]
        text = f"{v:.3f}" if isinstance(v, float) else str(v)
        print(f"{c:<{width}}  {text}")


def _add_segmenter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segmenter", required=True, help="segmenter final.pth trained on labelled target (the oracle)")
    p.add_argument("--source", required=True, help="prepared source dataset (data/prepared/<src>)")
    p.add_argument("--split", default="train", help="labelled source split (default: train)")
    p.add_argument("--limit", type=int, default=None, help="score at most N images, spread evenly over the split")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for image decoding")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument("--no-amp", action="store_true", help="disable autocast (bf16/fp16) on CUDA")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m translators.metrics", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fcn-score", help="pixel acc / mean class acc / mIoU of (refined) source images "
                                         "segmented by a target-trained segmenter")
    _add_segmenter_args(f)
    f.add_argument("--images", default=None, help="refined image folder with the source stems (default: raw source)")
    f.add_argument("--out", required=True, help="result CSV (one row); <stem>.confusion.npy is written beside it")
    f.add_argument("--translator", default=None, help="name written to the 'translator' column")
    f.add_argument("--class-set", type=int, choices=(19, 16, 13), default=19,
                   help="16/13: also report the SYNTHIA means mIoU16/mIoU13")
    f.add_argument("--iou-convention", choices=("nan", "eps"), default="nan",
                   help="nan: classes absent from labels and predictions are excluded (default); "
                        "eps: pix2pix FCN-score family (absent classes count 0)")

    d = sub.add_parser("distortion", help="per-class label->prediction flows the translation introduced")
    _add_segmenter_args(d)
    d.add_argument("--images", required=True, help="refined image folder with the source stems")
    ref = d.add_mutually_exclusive_group()
    ref.add_argument("--reference-images", default=None,
                     help="reference image folder with the source stems (default: the raw source images)")
    ref.add_argument("--reference-confusion", default=None,
                     help="reuse a reference confusion .npy (e.g. the fcn-score of the raw source, same segmenter)")
    d.add_argument("--out", required=True, help="result CSV (one row)")
    d.add_argument("--heatmap", required=True, help="heat-map PNG of the difference matrix")
    d.add_argument("--top", type=int, default=10, help="number of flows in the CSV (default 10)")
    d.add_argument("--order", choices=("increase", "abs"), default="increase",
                   help="rank flows by increase (default) or by absolute change")
    d.add_argument("--translator", default=None)

    g = sub.add_parser("fid", help="FID and KID between real and translated images")
    real = g.add_mutually_exclusive_group(required=True)
    real.add_argument("--real-dir", help="folder of real target images (recursive)")
    real.add_argument("--real-prepared", help="prepared target dataset; images of --real-split")
    g.add_argument("--real-split", default="val")
    fake = g.add_mutually_exclusive_group(required=True)
    fake.add_argument("--fake-dir", help="folder of translated images (recursive)")
    fake.add_argument("--fake-prepared", help="prepared dataset; images of --fake-split (e.g. raw source)")
    g.add_argument("--fake-split", default="train")
    g.add_argument("--fake-limit", type=int, default=None, help="use at most N fake images, spread evenly")
    g.add_argument("--real-limit", type=int, default=None, help="use at most N real images, spread evenly")
    g.add_argument("--inception-weights", default=None,
                   help="FID Inception-V3 weights (pt_inception-2015-12-05-6726825d.pth of pytorch-fid or "
                        "weights-inception-2015-12-05-6726825d.pth of torch-fidelity), or the registry name "
                        "pt_inception (the file in the weights cache, docs/weights.md); default $FID_INCEPTION_WEIGHTS")
    g.add_argument("--features", choices=("inception", "random"), default="inception",
                   help="random: a fixed random conv net, for smoke tests only (values not comparable)")
    g.add_argument("--kid-subsets", type=int, default=100)
    g.add_argument("--kid-subset-size", type=int, default=1000, help="clipped to the smaller set")
    g.add_argument("--kid-max-samples", type=int, default=10_000,
                   help="features kept per set for KID (uniform reservoir sample beyond that)")
    g.add_argument("--batch-size", type=int, default=50)
    g.add_argument("--workers", type=int, default=0)
    g.add_argument("--device", default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True)
    g.add_argument("--translator", default=None)

    m = sub.add_parser("maps", help="Photo->Map RMSE and pixel accuracy at delta 5 / 10")
    m.add_argument("--pred-dir", required=True, help="generated maps")
    m.add_argument("--gt-dir", required=True, help="real maps with matching file names")
    m.add_argument("--size", type=int, default=256, help="resize both to SIZE x SIZE (bilinear; default 256)")
    m.add_argument("--native", action="store_true", help="no resize; sizes must match")
    m.add_argument("--deltas", type=float, nargs="+", default=[5.0, 10.0])
    m.add_argument("--pred-suffix", default="", help="strip this from prediction stems, e.g. _fake_B")
    m.add_argument("--gt-suffix", default="", help="strip this from ground-truth stems, e.g. _real_B")
    m.add_argument("--out", required=True)
    m.add_argument("--translator", default=None)
    return p


def _with_translator(name: str | None, row: dict) -> dict:
    return {"translator": name, **row}


def run(args: argparse.Namespace) -> dict:
    """Run one parsed subcommand; returns the CSV row."""
    if args.command == "fcn-score":
        from .fcn_score import fcn_score

        row, cm = fcn_score(args.segmenter, args.source, args.images, args.split, args.limit, args.class_set,
                            args.iou_convention, args.batch_size, args.workers, args.device, not args.no_amp)
        row = _with_translator(args.translator, row)
        save_npy(cm, args.out, "confusion")
        write_csv(row, args.out)
        print_table(row, args.command)
    elif args.command == "distortion":
        from .distortion import plot_heatmap, semantic_distortion

        row, delta, cm_refined, cm_reference, flows = semantic_distortion(
            args.segmenter, args.source, args.images, args.reference_images, args.reference_confusion, args.split,
            args.limit, args.top, args.order, args.batch_size, args.workers, args.device, not args.no_amp)
        row = _with_translator(args.translator, row)
        save_npy(cm_refined, args.out, "confusion")
        save_npy(cm_reference, args.out, "reference_confusion")
        save_npy(delta, args.out, "distortion")
        title = f"{args.translator or Path(args.images).name}: refined \u2212 {row['reference']}"
        plot_heatmap(delta, args.heatmap, title=title)
        write_csv(row, args.out)
        print_table(row, args.command)
        for r, flow in enumerate(flows, start=1):
            print(f"  {r:>2}. {flow}")
    elif args.command == "fid":
        from .fcn_score import select_evenly
        from .features import InceptionFeatures, RandomConvFeatures
        from .fid import fid_kid, list_images, prepared_images

        real = list_images(args.real_dir) if args.real_dir else prepared_images(args.real_prepared, args.real_split)
        fake = list_images(args.fake_dir) if args.fake_dir else prepared_images(args.fake_prepared, args.fake_split)
        real, fake = select_evenly(real, args.real_limit), select_evenly(fake, args.fake_limit)
        from segmenters.io import default_device

        device = args.device or default_device()
        if args.features == "random":
            log.warning("--features random: values are NOT FID/KID with Inception features (smoke test only)")
            extractor = RandomConvFeatures(seed=args.seed, device=device)
        else:
            extractor = InceptionFeatures(args.inception_weights, device=device)
        res = fid_kid(real, fake, extractor, args.kid_subsets, args.kid_subset_size, args.batch_size, args.workers,
                      args.kid_max_samples, args.seed)
        row = _with_translator(args.translator, {**res.row(), "real": args.real_dir or args.real_prepared,
                                                 "fake": args.fake_dir or args.fake_prepared})
        write_csv(row, args.out)
        print_table(row, args.command)
    else:
        from .maps import maps_metrics

        row = maps_metrics(args.pred_dir, args.gt_dir, None if args.native else args.size, args.deltas,
                           args.pred_suffix, args.gt_suffix)
        row = _with_translator(args.translator, row)
        write_csv(row, args.out)
        print_table(row, args.command, extra=[f"acc@{d:g}" for d in args.deltas])
    log.info("wrote %s", args.out)
    return row


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (not a bug): reported as one message, exit code 2."""
    from domains.prepared import PreparedDataError

    from . import MetricsInputError

    errors: list[type[BaseException]] = [MetricsInputError, PreparedDataError, FileNotFoundError, ValueError]
    io = sys.modules.get("segmenters.io")      # only when it was used (it imports torch)
    if io is not None:
        errors.append(io.ImageReadError)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except Exception as err:  # noqa: BLE001 - bad input ends with one clear message and exit code 2
        from domains.errors import debug_enabled, short_message

        if not isinstance(err, _input_errors()) or debug_enabled():   # SEMST_DEBUG=1: the traceback
            raise
        log.error("%s", short_message(err))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
