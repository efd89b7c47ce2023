"""Refine a whole source dataset with a trained translator (``python -m translators refine``).

Every source image is translated at its full resolution (``method.translate_full``: tiled G for
CUT; global branch on the downsampled image + tiled native local branch + scale-map fusion for
SemST) and written as PNG under ``out`` with the source stem (sub-folders kept) and the prepared
split's image suffix when it is a PNG suffix (so ``PreparedDataset.image_path(split, stem,
image_dir=out)`` finds it), else ``<stem>.png``. Each file is written to a temporary name and
renamed. ``.progress`` (first line: checkpoint sha256, then one finished stem per line) makes a
rerun with the same checkpoint skip finished images; a different checkpoint redoes all.
``manifest.json`` (checkpoint hash, config, counts, source, time) is written last.

Memory is bounded for any image size: tiles (batched, ``torch.inference_mode``, AMP on CUDA), the
global branch on a downsampled image (tiled above ``refine.global_max_side``), one image at a time
(the next image is read and the previous one written in background threads).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from domains.io import atomic_path
from translators.checkpoint import check_compatible, config_from_checkpoint, load_checkpoint, sha256
from translators.config import ConfigError
from translators.data import open_domain, read_image, resize_short, to_tensor, to_uint8
from translators.methods import build_method
from translators.train import resolve_device

log = logging.getLogger(__name__)
MANIFEST, PROGRESS = "manifest.json", ".progress"


@dataclass
class RefineResult:
    out: Path
    total: int
    written: int
    skipped: int


def output_name(stem: str, img_suffix: str | None) -> str:
    return stem + (img_suffix if img_suffix and img_suffix.lower().endswith(".png") else ".png")


def _write_png(img: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def _atomic_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _read_progress(out: Path, digest: str) -> set[str]:
    path = out / PROGRESS
    if not path.is_file():
        return set()
    lines = path.read_text().splitlines()
    if not lines or lines[0] != digest:
        return set()
    return set(lines[1:])


def translate_image(method, img: np.ndarray, tile: int | None, overlap: float, batch_size: int,
                    blend: str) -> np.ndarray:
    """uint8 HWC -> uint8 HWC at the same size (resized around the model if data.resize_short)."""
    h, w = img.shape[:2]
    work = resize_short(img, method.cfg.data.resize_short)
    x = method.prepare_input(to_tensor(work)[None])
    with torch.inference_mode(), method.autocast():
        y = method.translate_full(x, tile=tile, overlap=overlap, batch_size=batch_size, blend=blend)
    out = to_uint8(y[0])
    if out.shape[:2] != (h, w):
        out = np.asarray(Image.fromarray(out).resize((w, h), Image.BICUBIC))
    return out


def load_translator(checkpoint: str | Path, device: torch.device):
    """Rebuild the method stored in a ``final.pt``/``checkpoint.pt`` and load its weights."""
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_checkpoint(ckpt, checkpoint)
    check_compatible(ckpt, cfg, checkpoint)
    method = build_method(cfg)
    method.load_state_dict(ckpt["models"])
    method.setup(device)
    method.eval()
    return method, ckpt


def refine(checkpoint: str | Path, source: str | Path, out: str | Path, *, split: str = "train",
           batch_size: int | None = None, tile_overlap: float | None = None, tile: int | None = None,
           device: str = "auto", show_progress: bool = True) -> RefineResult:
    out = Path(out)
    domain = open_domain(source, split)
    dev = resolve_device(device)
    method, ckpt = load_translator(checkpoint, dev)
    rc = method.cfg.refine
    batch_size = batch_size or rc.batch_size
    overlap = rc.tile_overlap if tile_overlap is None else tile_overlap
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"--tile-overlap must be in [0, 1), got {overlap}")
    digest = sha256(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.tmp-*"):  # left by a killed run
        stale.unlink(missing_ok=True)
    done = _read_progress(out, digest)
    manifest_path = out / MANIFEST
    if not done:  # new or different checkpoint: start over
        manifest_path.unlink(missing_ok=True)
        _atomic_text(out / PROGRESS, digest + "\n")
    todo = [it for it in domain.items
            if not (it.stem in done and (out / output_name(it.stem, domain.img_suffix)).is_file())]
    skipped = len(domain.items) - len(todo)
    if not todo and manifest_path.is_file():
        log.info("%s: all %d images already refined with this checkpoint", out, skipped)
        return RefineResult(out, len(domain.items), 0, skipped)
    log.info("refining %d images (%d already done) from %s into %s", len(todo), skipped, source, out)

    start = time.time()
    written = 0
    reader = cf.ThreadPoolExecutor(1, thread_name_prefix="read")
    writer = cf.ThreadPoolExecutor(1, thread_name_prefix="write")
    pending: list[tuple[str, cf.Future]] = []
    with open(out / PROGRESS, "a") as progress_fh, tqdm(total=len(todo), unit="img", disable=not show_progress,
                                                          desc="refine") as pbar:
        def drain(limit: int) -> None:
            nonlocal written
            while len(pending) > limit:
                stem, fut = pending.pop(0)
                fut.result()
                progress_fh.write(stem + "\n")
                progress_fh.flush()
                written += 1
                pbar.update(1)
        try:
            nxt = reader.submit(read_image, todo[0].path) if todo else None
            for i, item in enumerate(todo):
                img = nxt.result()
                nxt = reader.submit(read_image, todo[i + 1].path) if i + 1 < len(todo) else None
                y = translate_image(method, img, tile, overlap, batch_size, rc.blend)
                path = out / output_name(item.stem, domain.img_suffix)
                pending.append((item.stem, writer.submit(_write_png, y, path)))
                drain(2)
            drain(0)
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True)
    manifest = {
        "checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": digest, "method": method.name,
        "train_step": ckpt.get("step"), "config": ckpt["config"], "source": str(Path(source).resolve()),
        "source_dataset": domain.name, "split": split, "img_suffix": output_name("", domain.img_suffix),
        "count": len(domain.items), "written": written, "skipped": skipped,
        "tile": tile or rc.tile, "tile_overlap": overlap, "batch_size": batch_size, "device": str(dev),
        "seconds": round(time.time() - start, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_text(manifest_path, json.dumps(manifest, indent=2))
    log.info("wrote %d images and %s", written, manifest_path)
    return RefineResult(out, len(domain.items), written, skipped)
