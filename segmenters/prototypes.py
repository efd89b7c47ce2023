"""``python -m segmenters prototypes``: ProDA's offline step (``generate_pseudo_label.py --soft`` and
``calc_prototype.py``) from the warm-up model's ``final.pth``, in one streaming pass over a target split.

::

    python -m segmenters prototypes --checkpoint results/runs/<pair>/proda_<tr>/r0/final.pth \\
        --target data/prepared/<tgt> --split train --out data/pseudo/<pair>/proda_<tr>/r0 [--soft-scale 0.25]

Per image (inference at the checkpoint's ``test_scale``, under ``torch.inference_mode``):

* soft pseudo-label: softmax probabilities resized (bilinear) to ``--soft-scale`` x the native size
  (default 0.25, ProDA's 1/4), float16, ``confidences.h5`` ``soft/<stem>`` (C, h, w);
  ``maxprob/<stem>`` (H, W) float16 at native size (the pseudo-label folder contract);
* ``<stem>.png``: the argmax at native size (uint8 trainIds; ProDA's hard label, and what the
  training data check expects in a pseudo-label folder);
* prototypes: class means of the decode head's input features (backbone output ``--feat-in-index``,
  default the head's last ``in_index``) under the model's own argmax at the feature resolution,
  folded into a running mean (:class:`segmenters.uda.proda_parts.PrototypeMemory` ``mode="mean"``,
  count capped at 3000 like ProDA). A class with fewer than ``--min-pixels`` pixels in an image
  does not contribute from it; a class never present keeps a zero prototype with count 0 (the
  stage-1 memory then takes its first seen vector).

Outputs go to ``.<out>.tmp-<pid>`` and the folder is renamed to ``--out`` when complete; ``prototypes.h5``
(datasets ``prototypes`` (C, D), ``counts`` (C,)) and ``meta.json`` are written last. Memory: one
batch of images and features plus the (C, D) prototypes, whatever the split size.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from domains.prepared import PreparedDataError, Sample

from .io import (InferenceSet, add_input_flags, add_runtime_flags, make_loader, release_free_memory, resize_maps,
                 write_png)
from .pseudolabel import CONFIDENCES, META, _soft_size, class_names, open_split_and_segmenter, staged_output_dir

logger = logging.getLogger(__name__)

PROTOTYPES = "prototypes.h5"
#: defaults of the functions below and of the CLI flags (one definition): soft labels at ProDA's 1/4 of
#: the native size (``--soft-scale``); pixels a class needs in an image to contribute (``--min-pixels``,
#: the public code's ``< 10`` skip)
SOFT_SCALE = 0.25
MIN_PIXELS = 10


def _features_and_logits(segmenter, images: torch.Tensor, feat_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone feature ``feat_index`` (B, D, h, w) and decode-head logits (B, C, h', w'), float32."""
    model = segmenter.model
    pre = model.data_preprocessor
    mean = pre.mean.detach().reshape(1, -1, 1, 1).to(segmenter.device, torch.float32)
    std = pre.std.detach().reshape(1, -1, 1, 1).to(segmenter.device, torch.float32)
    x = (images.to(segmenter.device, torch.float32) - mean) / std
    if segmenter.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with segmenter._autocast():
        feats = model.extract_feat(x)
        logits = model.decode_head.forward(feats)
    if not 0 <= feat_index < len(feats):
        raise ValueError(f"--feat-in-index {feat_index}: the backbone has {len(feats)} outputs")
    return feats[feat_index].float(), logits.float()


def compute(segmenter, samples: Sequence[Sample], work: Path, soft_scale: float = SOFT_SCALE,
            feat_index: int | None = None, min_pixels: int = MIN_PIXELS, batch_size: int = 1,
            workers: int = 0) -> dict:
    """Write PNGs, confidences.h5 and prototypes.h5 into ``work``; returns summary numbers."""
    import h5py
    from tqdm import tqdm

    from .uda.proda_parts import PrototypeMemory, save_prototypes

    model = segmenter.model
    if feat_index is None:
        in_index = model.decode_head.in_index
        feat_index = int(in_index[-1] if isinstance(in_index, (list, tuple)) else in_index)
    num_classes = int(segmenter.num_classes)
    memory: PrototypeMemory | None = None
    pixels = np.zeros(num_classes, dtype=np.int64)
    dataset = InferenceSet([s.image for s in samples], segmenter.test_scale)
    seen = 0
    with h5py.File(work / CONFIDENCES, "w") as h5, torch.inference_mode():
        h5.attrs["num_classes"] = num_classes
        h5.attrs["soft_scale"] = float(soft_scale)
        h5.attrs["layout"] = "maxprob/<stem>: float16 (H, W); soft/<stem>: float16 (C, h, w)"
        for batch in tqdm(make_loader(dataset, batch_size, workers), desc="prototypes", unit="batch",
                          dynamic_ncols=True):
            images = batch["image"]
            feats, logits = _features_and_logits(segmenter, images, feat_index)
            if memory is None:
                memory = PrototypeMemory(num_classes, feats.shape[1], min_pixels=min_pixels).to(feats.device)
            labels_f = resize_maps(logits, feats.shape[-2:]).argmax(dim=1)
            memory.update(feats, labels_f, mode="mean")
            probs = torch.softmax(resize_maps(logits, images.shape[-2:]), dim=1)
            for i, (index, size) in enumerate(zip(batch["index"], batch["size"])):
                stem = samples[index].stem
                up = resize_maps(probs[i:i + 1], size)
                conf, pred = up.max(dim=1)
                pred_np = pred[0].cpu().numpy().astype(np.uint8)
                write_png(work / f"{stem}.png", pred_np)
                pixels += np.bincount(pred_np.ravel(), minlength=num_classes)[:num_classes]
                h5.create_dataset(f"maxprob/{stem}", data=conf[0].cpu().numpy().astype(np.float16),
                                  compression="lzf", shuffle=True)
                soft = resize_maps(probs[i:i + 1], _soft_size(size, soft_scale))[0]
                h5.create_dataset(f"soft/{stem}", data=soft.cpu().numpy().astype(np.float16),
                                  compression="lzf", shuffle=True)
                del up, conf, pred, soft
            del feats, logits, probs
            seen += len(batch["index"])
            if seen >= 25:
                release_free_memory()
                seen = 0
    assert memory is not None
    save_prototypes(work / PROTOTYPES, memory.prototypes, memory.counts)
    return {"feat_in_index": feat_index, "feat_dim": int(memory.dim),
            "prototype_counts": memory.counts.cpu().tolist(), "pixels_predicted": pixels.tolist()}


def generate(segmenter, samples: Sequence[Sample], out: str | Path, soft_scale: float = SOFT_SCALE,
             feat_index: int | None = None, min_pixels: int = MIN_PIXELS, batch_size: int = 1, workers: int = 0,
             extra_meta: dict | None = None) -> dict:
    """Write a complete ProDA stage-1 folder at ``out`` atomically; returns its meta.json content."""
    if not 0.0 < soft_scale <= 1.0:
        raise ValueError(f"--soft-scale must be in (0, 1], got {soft_scale}")
    if not samples:
        raise ValueError("no images to compute prototypes from")
    with staged_output_dir(Path(out)) as work:
        summary = compute(segmenter, samples, work, soft_scale, feat_index, min_pixels, batch_size, workers)
        n = int(segmenter.num_classes)
        names = class_names(n)
        meta = {
            "kind": "proda_stage1",
            "soft_scale": soft_scale,
            "num_images": len(samples),
            "num_classes": n,
            "ignore_index": 255,
            "feat_in_index": summary["feat_in_index"],
            "feat_dim": summary["feat_dim"],
            "min_pixels": min_pixels,
            "prototype_images": dict(zip(names, summary["prototype_counts"])),
            "pixels_predicted": dict(zip(names, summary["pixels_predicted"])),
            "files": {"soft": f"{CONFIDENCES}:soft/<stem>", "prototypes": PROTOTYPES, "labels": "<stem>.png"},
            **(extra_meta or {}),
        }
        (work / META).write_text(json.dumps(meta, indent=2))
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segmenters prototypes", description=__doc__.split("\n\n")[0])
    add_input_flags(p, checkpoint="final.pth of the ProDA warm-up model", split="train",
                    split_help="split to label (default: %(default)s)",
                    out="output folder (data/pseudo/<pair>/proda_<translator>/r0)")
    p.add_argument("--soft-scale", type=float, default=SOFT_SCALE,
                   help="soft labels at this fraction of the native size")
    p.add_argument("--feat-in-index", type=int, default=None,
                   help="backbone output used as prototype features (default: the decode head's last in_index)")
    p.add_argument("--min-pixels", type=int, default=MIN_PIXELS, help="pixels a class needs in an image to contribute")
    add_runtime_flags(p)
    return p


def run(args: argparse.Namespace) -> dict:
    samples, segmenter = open_split_and_segmenter(args)
    ckpt_meta = {k: segmenter.meta.get(k) for k in ("arch", "preset", "uda", "iter", "test_scale")}
    meta = generate(segmenter, samples, args.out, args.soft_scale, args.feat_in_index, args.min_pixels,
                    args.batch_size, args.workers,
                    extra_meta={"checkpoint": str(args.checkpoint), "checkpoint_meta": ckpt_meta,
                                "target": str(args.target), "split": args.split})
    logger.info("wrote %s: %d images, %d-d prototypes", args.out, meta["num_images"], meta["feat_dim"])
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (PreparedDataError, ValueError, FileNotFoundError) as err:
        from domains.errors import debug_enabled, short_message

        if debug_enabled():       # --debug / SEMST_DEBUG=1: the traceback
            raise
        print(f"error: {short_message(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
