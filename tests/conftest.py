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


#: ``probe_segmenter``'s test scale (w, h): unlike the 64x32 ``tiny_prepared`` images in both
#: directions and by non-integer ratios, so a prediction path that skips or swaps it is visible
PROBE_TEST_SCALE = (88, 48)
#: the scene classes of ``tiny_prepared`` (road, building, sky, car); the probe predicts only these
PROBE_CLASSES = (0, 2, 10, 13)


@pytest.fixture(scope="session")
def probe_segmenter(tiny_prepared, tmp_path_factory) -> dict:
    """An informative tiny DeepLab-V2 ``final.pth`` whose predictions are known to the tests.

    Random (seeded) ResNet backbone; the DLV2Head is reduced to one linear read-out of the layer-4
    features (the centre tap of the first dilated branch; the other branches are zero) fitted by
    class-balanced least squares to the target ``train`` labels of :data:`PROBE_CLASSES`, times a
    gain of 5; every other class has bias -30 and is never predicted. On the conftest scenes it is
    right on most pixels but not all (coarse output stride 8), and its per-class confidences
    differ: roughly median max-probability 0.92 sky, 0.88 road, 0.73 building, 0.64 car.
    ``test_scale`` is :data:`PROBE_TEST_SCALE`.

    Returns ``{"path": final.pth, "model": the same EncoderDecoder in eval mode (do not modify),
    "test_scale": (w, h)}``; tests compute expected predictions with ``model`` directly.
    """
    import cv2

    import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
    from segmenters.checkpoint import build_segmentor, save_final
    from segmenters.configs import load_config

    cfg = load_config("deeplabv2", "tiny")
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).eval()
    target = tiny_prepared["target"]
    meta = json.loads((target / "meta.json").read_text())
    image_dir = Path(meta["splits"]["train"]["image_dir"])
    stems = (target / "train.txt").read_text().split()
    w, h = PROBE_TEST_SCALE
    images = [cv2.resize(np.array(Image.open(image_dir / f"{s}.png").convert("RGB")), (w, h),
                         interpolation=cv2.INTER_LINEAR) for s in stems]
    pre = cfg.model.data_preprocessor
    x = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
         - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = model.extract_feat(x)[model.decode_head.in_index]
    n, dim, fh, fw = feats.shape
    labels = np.stack([cv2.resize(np.array(Image.open(target / "labels" / "train" / f"{s}_labelTrainIds.png")),
                                  (fw, fh), interpolation=cv2.INTER_NEAREST) for s in stems]).ravel()
    design = np.concatenate([feats.permute(0, 2, 3, 1).reshape(-1, dim).double().numpy(),
                             np.ones((labels.size, 1))], axis=1)
    keep = np.isin(labels, PROBE_CLASSES)
    design, labels = design[keep], labels[keep]
    onehot = (labels[:, None] == np.array(PROBE_CLASSES)[None]).astype(np.float64)
    weight = 1.0 / onehot.sum(0)[np.searchsorted(PROBE_CLASSES, labels)]     # class-balanced
    readout = np.linalg.solve(design.T @ (design * weight[:, None]) + 1e-4 * np.eye(dim + 1),
                              (design * weight[:, None]).T @ onehot) * 5.0
    with torch.no_grad():
        for branch in model.decode_head.aspp_modules:
            branch.conv.weight.zero_()
            branch.conv.bias.zero_()
        conv = model.decode_head.aspp_modules[0].conv
        conv.bias.fill_(-30.0)
        for j, c in enumerate(PROBE_CLASSES):
            conv.weight[c, :, 1, 1] = torch.from_numpy(readout[:dim, j]).float()
            conv.bias[c] = float(readout[dim, j])
    meta = {"arch": "deeplabv2", "preset": "tiny", "num_classes": 19, "uda": "source_only", "iter": 0,
            "test_scale": list(PROBE_TEST_SCALE), "model_cfg": cfg.model.to_dict()}
    path = save_final(model, meta, tmp_path_factory.mktemp("probe") / "final.pth")
    return {"path": path, "model": model, "test_scale": PROBE_TEST_SCALE}
