"""Generate a minicity tree: GTA5-, SYNTHIA- and Cityscapes-format copies of procedural scenes.

Every image is seeded from ``(seed, domain, split, index)`` only, so the output is
byte-identical for the same options whatever the number of workers. The tree is built in
``<out>.tmp-<pid>`` and renamed into place when complete; an existing minicity tree at
``<out>`` is replaced only after the new one is complete.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from domains.io import atomic_dir
from domains.labels import CITYSCAPES_ID_TO_TRAINID, NUM_CLASSES, lookup_table
from domains.minicity import render as R
from domains.minicity import scene as S
from domains.minicity import writers as W

log = logging.getLogger(__name__)

MANIFEST = "minicity.json"
FORMAT_VERSION = 1
# stream codes of the seed sequence
_SCENE = {"source": 1, "train": 2, "val": 3}
_RENDER = {"gta5": 11, "synthia": 12, "cityscapes": 13}


@dataclass(frozen=True)
class Options:
    """What to generate; sizes are (width, height) of the written files."""

    out: str
    gta5_size: tuple[int, int] = (256, 128)
    synthia_size: tuple[int, int] = (256, 128)
    cityscapes_size: tuple[int, int] = (256, 128)
    n_source: int = 300
    n_train: int = 200
    n_val: int = 60
    seed: int = 0
    max_render_width: int = 1024  # larger outputs are rendered at this width and upscaled
    appearance_gap: float = 1.0  # 1: Cityscapes-style target appearance; < 1: moved towards GTA5's (render.blend)
    # scene priors of the target splits: "target" (Cityscapes-like, the default) or "source" (the
    # GTA5/SYNTHIA priors: an appearance-only gap, e.g. to tell a translator's content distortion
    # caused by the class-prior gap from one caused by the appearance gap)
    target_layout: str = "target"

    def __post_init__(self) -> None:
        for key in ("n_source", "n_train", "n_val"):
            if getattr(self, key) < 0:
                raise ValueError(f"minicity option {key} must be >= 0, got {getattr(self, key)}")
        for key in ("gta5_size", "synthia_size", "cityscapes_size"):
            w, h = getattr(self, key)
            if w < 16 or h < 16:
                raise ValueError(f"minicity option {key} must be at least 16x16, got {w}x{h}")
        if not 0.0 <= self.appearance_gap <= 1.0:
            raise ValueError(f"minicity option appearance_gap must lie in [0, 1], got {self.appearance_gap}")
        if self.target_layout not in S.LAYOUTS:
            raise ValueError(f"minicity option target_layout must be one of {sorted(S.LAYOUTS)}, got {self.target_layout!r}")
        if self.max_render_width < 64:
            raise ValueError(f"minicity option max_render_width must be >= 64, got {self.max_render_width}")


class MinicityError(RuntimeError):
    """The output path cannot be used; the message names it and what to do."""


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _render_size(size: tuple[int, int], max_w: int) -> tuple[int, int]:
    w, h = size
    if w <= max_w:
        return w, h
    return max_w, max(16, int(round(h * max_w / w)))


def _fit(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if (arr.shape[1], arr.shape[0]) == size:
        return arr
    return cv2.resize(arr, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def _draw(scene: S.Scene, size: tuple[int, int], max_w: int, app: R.Appearance, rng: np.random.Generator,
          cache: dict | None = None):
    """(rgb, label, instance) at ``size`` (rendered at most ``max_w`` wide and upscaled).

    ``cache`` keeps the rasterised layers per render size, so GTA5 and SYNTHIA copies of one
    scene rasterise it once when their sizes agree.
    """
    rsize = _render_size(size, max_w)
    layers = cache.get(rsize) if cache is not None else None
    if layers is None:
        layers = S.rasterize(scene, *rsize)
        if cache is not None:
            cache[rsize] = layers
    rgb = R.render(layers, app, rng)
    return _fit(rgb, size, False), _fit(layers.label, size, True), _fit(layers.instance_ids(), size, True)


_CS_LUT = lookup_table(CITYSCAPES_ID_TO_TRAINID)


def _counts(cs_label: np.ndarray) -> np.ndarray:
    """Pixels per trainId (19) + ignored, from an internal label map."""
    t = _CS_LUT[W.CITYSCAPES_LUT[cs_label]]
    return np.bincount(t.ravel(), minlength=256)[list(range(NUM_CLASSES)) + [255]]


def _job(args: tuple) -> tuple[str, np.ndarray]:
    opts, root, kind, index = args
    root = Path(root)
    if kind == "source":
        scene = S.sample_scene(_rng(opts.seed, _SCENE["source"], index), S.SOURCE_LAYOUT)
        cache: dict = {}
        rgb, label, inst = _draw(scene, opts.gta5_size, opts.max_render_width, R.GTA5,
                                 _rng(opts.seed, _RENDER["gta5"], index), cache)
        W.write_gta5(root / "gta5", index, rgb, label)
        counts = _counts(label)
        rgb, label, inst = _draw(scene, opts.synthia_size, opts.max_render_width, R.SYNTHIA,
                                 _rng(opts.seed, _RENDER["synthia"], index), cache)
        W.write_synthia(root / "synthia", index, rgb, label, inst)
        return "source", counts
    split = kind
    count = opts.n_train if split == "train" else opts.n_val
    scene = S.sample_scene(_rng(opts.seed, _SCENE[split], index), S.LAYOUTS[opts.target_layout])
    rgb, label, _ = _draw(scene, opts.cityscapes_size, opts.max_render_width,
                          R.blend(R.GTA5, R.CITYSCAPES, opts.appearance_gap),
                          _rng(opts.seed, _RENDER["cityscapes"], _SCENE[split], index))
    W.write_cityscapes(root / "cityscapes", split, index, count, rgb, label)
    return split, _counts(label)


def _init_worker() -> None:
    cv2.setNumThreads(1)


def generate(opts: Options, workers: int | None = None, progress: bool = True) -> dict:
    """Write the minicity tree of ``opts`` atomically; returns the manifest dict."""
    out = Path(opts.out)
    if out.exists() and not (out / MANIFEST).is_file():
        raise MinicityError(f"{out} exists and is not a minicity tree (no {MANIFEST}); refusing to replace it. "
                            f"Remove it or choose another --out.")
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    workers = max(1, int(workers))
    # the tree is built in <out>.tmp-<pid>, which replaces <out> only when complete and is deleted on any error
    with atomic_dir(out, marker=MANIFEST) as tmp:
        W.make_dirs(tmp)
        jobs = ([(opts, str(tmp), "source", i) for i in range(opts.n_source)]
                + [(opts, str(tmp), "train", i) for i in range(opts.n_train)]
                + [(opts, str(tmp), "val", i) for i in range(opts.n_val)])
        totals = {k: np.zeros(NUM_CLASSES + 1, dtype=np.int64) for k in ("source", "train", "val")}
        log.info("minicity: %d source scenes (GTA5 %dx%d, SYNTHIA %dx%d), Cityscapes %dx%d train %d / val %d, "
                 "seed %d, %d worker(s) -> %s", opts.n_source, *opts.gta5_size, *opts.synthia_size,
                 *opts.cityscapes_size, opts.n_train, opts.n_val, opts.seed, workers, out)
        start = time.perf_counter()
        bar = tqdm(total=len(jobs), desc="minicity", unit="img", disable=not progress)
        if workers == 1:
            _init_worker()
            results = map(_job, jobs)
            for kind, counts in results:
                totals[kind] += counts
                bar.update()
        else:
            chunk = max(1, min(16, len(jobs) // (workers * 8) or 1))
            with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
                for kind, counts in pool.imap_unordered(_job, jobs, chunksize=chunk):
                    totals[kind] += counts
                    bar.update()
        bar.close()
        manifest = _manifest(opts, totals)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    elapsed = time.perf_counter() - start
    n_files = 4 * opts.n_source + 2 * (opts.n_train + opts.n_val)
    log.info("minicity: wrote %d images (%d files) in %.1f s (%.1f img/s)", len(jobs), n_files, elapsed,
             len(jobs) / max(elapsed, 1e-9))
    for line in summary_lines(out, manifest):
        log.info("%s", line)
    return manifest


def _manifest(opts: Options, totals: dict[str, np.ndarray]) -> dict:
    def fractions(c: np.ndarray) -> dict:
        total = max(int(c.sum()), 1)
        return {"pixels": c[:NUM_CLASSES].tolist(), "ignored": int(c[NUM_CLASSES]),
                "fractions": [round(float(v) / total, 6) for v in c[:NUM_CLASSES]]}

    o = asdict(opts)
    o.pop("out")
    return {
        "generator": "domains.minicity", "format_version": FORMAT_VERSION, "options": o,
        "datasets": {
            "gta5": {"root": "gta5", "count": opts.n_source, "size": list(opts.gta5_size)},
            "synthia": {"root": "synthia", "count": opts.n_source, "size": list(opts.synthia_size)},
            "cityscapes": {"root": "cityscapes", "splits": {"train": opts.n_train, "val": opts.n_val},
                           "size": list(opts.cityscapes_size)},
        },
        # Cityscapes trainId pixel counts over all pixels of the GTA5 labels and the target splits
        "class_stats": {"source": fractions(totals["source"]), "target_train": fractions(totals["train"]),
                        "target_val": fractions(totals["val"])},
    }


def summary_lines(out: Path, manifest: dict) -> list[str]:
    """Human-readable summary: where each dataset went and how many images."""
    d = manifest["datasets"]
    cs = d["cityscapes"]
    return [
        f"GTA5       {out / 'gta5'}: {d['gta5']['count']} images {d['gta5']['size'][0]}x{d['gta5']['size'][1]} "
        f"(images/, labels/ palette PNGs of Cityscapes ids)",
        f"SYNTHIA    {out / 'synthia'}: {d['synthia']['count']} images {d['synthia']['size'][0]}x{d['synthia']['size'][1]} "
        f"(RGB/, GT/LABELS/ 16-bit, class id in R)",
        f"Cityscapes {out / 'cityscapes'}: train {cs['splits']['train']}, val {cs['splits']['val']} images "
        f"{cs['size'][0]}x{cs['size'][1]} (leftImg8bit/, gtFine/ *_gtFine_labelIds.png)",
    ]
