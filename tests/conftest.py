"""Shared pytest setup and fixtures.

``tiny_prepared`` writes two small datasets straight in the prepared-dataset contract
(domains/prepared.py) so translator and segmenter tests need neither minicity nor ``prepare``:
a labelled source (split ``train``) and a target with ``train`` and ``val`` splits.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import torch
from PIL import Image

# One intra-op thread for the in-process tests, set once (never toggled: MKL's batched LU breaks
# after set_num_threads changes, see translators/losses/rsmi.py). The tests run tiny models, for
# which one thread is fastest on the 2-core CI machines (two spinning OpenMP threads made tiny
# steps 5-50x slower when the cores were shared). Subprocess tests inherit OMP_NUM_THREADS.
torch.set_num_threads(int(os.environ.get("TEST_TORCH_THREADS", "1")))


def _write_prepared(root: Path, name: str, splits: dict[str, int], size: tuple[int, int], seed: int,
                    tint: tuple[int, int, int]) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    out = root / "prepared" / name
    meta = {"dataset": name, "raw_root": str(root / "raw" / name), "label_suffix": "_labelTrainIds.png",
            "num_classes": 19, "splits": {}}
    stats = {}
    for split, count in splits.items():
        img_dir = root / "raw" / name / split
        lab_dir = out / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        stems = []
        pixels = np.zeros(19, dtype=np.int64)
        for i in range(count):
            stem = f"{i:05d}"
            # simple structured scene: sky on top, building band, road at the bottom, a car blob
            label = np.full((h, w), 2, dtype=np.uint8)
            horizon = h // 3 + int(rng.integers(-3, 4))
            label[:horizon] = 10
            label[2 * h // 3:] = 0
            cx = int(rng.integers(w // 8, 7 * w // 8))
            label[2 * h // 3 - h // 8: 2 * h // 3 + h // 16, max(cx - w // 10, 0): cx + w // 10] = 13
            label[0, 0] = 255
            colours = np.array([tint] * 256, dtype=np.int16)
            colours[10] += (60, 90, 150)
            colours[0] += (40, 40, 40)
            colours[13] += (10, 10, 120)
            img = np.clip(colours[label] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(img_dir / f"{stem}.png")
            Image.fromarray(label).save(lab_dir / f"{stem}_labelTrainIds.png")
            pixels += np.bincount(label[label != 255], minlength=19)[:19]
            stems.append(stem)
        (out / f"{split}.txt").write_text("\n".join(stems) + "\n")
        meta["splits"][split] = {"image_dir": str(img_dir), "img_suffix": ".png", "count": count, "labelled": True}
        stats[split] = {"pixels": pixels.tolist(), "ignored": count,
                        "fractions": (pixels / max(pixels.sum(), 1)).tolist()}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    (out / "class_stats.json").write_text(json.dumps(stats, indent=2))
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> dict[str, Path]:
    """Paths of a tiny prepared source (``source``: split train) and target (``target``: train, val)."""
    root = tmp_path_factory.mktemp("tiny_data")
    return {
        "source": _write_prepared(root, "tiny_source", {"train": 8}, (64, 32), seed=1, tint=(90, 60, 40)),
        "target": _write_prepared(root, "tiny_target", {"train": 8, "val": 4}, (64, 32), seed=2, tint=(50, 70, 60)),
    }
