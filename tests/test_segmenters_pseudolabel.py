"""Pseudo-labels: streaming-histogram thresholds vs brute force, BDL's cap, and the CLI's outputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segmenters.pseudolabel import (accumulate_histograms, apply_thresholds, class_thresholds,
                                    histogram_quantiles)


def _fake_predictions(rng, n=6, shape=(37, 53), num_classes=5):
    """Per-image argmax maps and float16 max-probabilities with class-dependent confidence levels."""
    preds, confs = [], []
    for _ in range(n):
        pred = rng.integers(0, num_classes - 1, shape)           # the last class is never predicted
        level = np.array([0.95, 0.7, 0.5, 0.98, 0.6])[pred]      # class 0 and 3 are very confident
        conf = np.clip(level + rng.normal(0, 0.08, shape), 1 / num_classes, 1.0).astype(np.float16)
        preds.append(pred.astype(np.uint8))
        confs.append(conf)
    return preds, confs


def test_histogram_median_matches_brute_force():
    rng = np.random.default_rng(0)
    preds, confs = _fake_predictions(rng)
    hist = np.zeros((5, 10_000), np.int64)
    for pred, conf in zip(preds, confs):
        accumulate_histograms(hist, pred, conf)
    all_pred = np.concatenate([p.ravel() for p in preds])
    all_conf = np.concatenate([c.ravel() for c in confs]).astype(np.float64)
    assert hist.sum() == all_pred.size
    med = histogram_quantiles(hist, 0.5)
    for c in range(4):
        assert med[c] == pytest.approx(np.median(all_conf[all_pred == c]), abs=1e-3)
        assert med[c] == pytest.approx(np.quantile(all_conf[all_pred == c], 0.5), abs=2e-4)
        assert histogram_quantiles(hist, 0.3)[c] == pytest.approx(np.quantile(all_conf[all_pred == c], 0.3),
                                                                  abs=2e-4)
    assert med[4] == 0.0                      # never predicted

    thr = class_thresholds(hist, "bdl")
    assert thr[0] == 0.9 and thr[3] == 0.9    # medians ~0.95 / ~0.98 are capped at 0.9
    assert thr[1] == pytest.approx(med[1]) and thr[1] < 0.9
    assert thr[4] == 0.0
    np.testing.assert_array_equal(class_thresholds(hist, "fixed", threshold=0.8), np.full(5, 0.8))
    with pytest.raises(ValueError, match="rule"):
        class_thresholds(hist, "median")


def test_histogram_edges():
    hist = np.zeros((2, 100), np.int64)
    accumulate_histograms(hist, np.array([0, 0, 0, 1]), np.array([1.0, 1.0, 0.0, 0.505]))
    assert hist[0, 99] == 2 and hist[0, 0] == 1 and hist[1, 50] == 1   # 1.0 goes into the last bin
    assert histogram_quantiles(hist, 1.0)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        histogram_quantiles(hist, 0.0)


def test_apply_thresholds_keeps_confident_pixels():
    pred = np.array([[0, 1], [2, 1]], np.uint8)
    conf = np.array([[0.5, 0.9], [0.3, 0.6]], np.float16)
    thr = np.array([0.4, 0.7, 0.0])
    np.testing.assert_array_equal(apply_thresholds(pred, conf, thr), [[0, 1], [2, 255]])
    # BDL keeps "top half per class, or p >= cap": the kept fraction of a class is ~50% below the cap
    rng = np.random.default_rng(1)
    preds, confs = _fake_predictions(rng, n=3)
    hist = np.zeros((5, 10_000), np.int64)
    for p, c in zip(preds, confs):
        accumulate_histograms(hist, p, c)
    thr = class_thresholds(hist)
    labels = [apply_thresholds(p, c, thr) for p, c in zip(preds, confs)]
    kept = sum(np.sum(lab == 1) for lab in labels) / sum(np.sum(p == 1) for p in preds)
    assert kept == pytest.approx(0.5, abs=0.02)


# --------------------------------------------------------------------------- CLI end to end
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A ``final.pth`` of a randomly initialised tiny DeepLab-V2 (seg-core's config and writer)."""
    import torch

    from segmenters.checkpoint import build_segmentor, save_final
    from segmenters.configs import load_config

    cfg = load_config("deeplabv2", "tiny")
    torch.manual_seed(0)
    model = build_segmentor(cfg.model)
    meta = {"arch": "deeplabv2", "preset": "tiny", "num_classes": 19, "uda": "source_only", "iter": 0,
            "test_scale": list(cfg.test_scale), "model_cfg": cfg.model.to_dict()}
    return save_final(model, meta, tmp_path_factory.mktemp("ckpt") / "final.pth")


def _brute_force(checkpoint, samples):
    """Argmax and max-probability of every image, computed directly with the loader (no streaming)."""
    import cv2
    import torch
    import torch.nn.functional as F

    from segmenters.loader import load_segmenter

    seg = load_segmenter(checkpoint)
    preds, confs = [], []
    with torch.inference_mode():
        for s in samples:
            img = cv2.cvtColor(cv2.imread(str(s.image)), cv2.COLOR_BGR2RGB)
            x = cv2.resize(img, seg.test_scale, interpolation=cv2.INTER_LINEAR)
            probs = seg.predict_probs(torch.from_numpy(x.transpose(2, 0, 1)).float()[None])
            probs = F.interpolate(probs, size=img.shape[:2], mode="bilinear", align_corners=False)
            conf, pred = probs.max(dim=1)
            preds.append(pred[0].numpy())
            confs.append(conf[0].numpy())
    return preds, confs


def test_pseudolabel_cli_outputs_and_thresholds(tiny_prepared, tiny_checkpoint, tmp_path):
    import h5py
    from PIL import Image

    from domains.labels import CLASSES
    from domains.prepared import PreparedDataset
    from segmenters.__main__ import main as cli

    target = tiny_prepared["target"]
    out = tmp_path / "pseudo" / "r1"
    out.mkdir(parents=True)
    (out / "stale.png").write_bytes(b"old result")   # an older result is replaced as a whole
    assert cli(["pseudolabel", "--checkpoint", str(tiny_checkpoint), "--target", str(target), "--split", "train",
                "--out", str(out), "--soft-scale", "0.25", "--batch-size", "3"]) == 0
    assert not (out / "stale.png").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["r1"]      # no temporary folder left

    samples = PreparedDataset.load(target).samples("train")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["rule"] == "bdl" and meta["num_images"] == len(samples) == 8
    assert meta["checkpoint"] == str(tiny_checkpoint) and list(meta["thresholds"]) == list(CLASSES)

    preds, confs = _brute_force(tiny_checkpoint, samples)
    all_pred = np.concatenate([p.ravel() for p in preds])
    all_conf = np.concatenate([c.ravel() for c in confs])
    thresholds = np.array(list(meta["thresholds"].values()))
    predicted = np.bincount(all_pred, minlength=19)
    assert (predicted > 0).sum() >= 3                       # several classes exercise the rule
    for c in range(19):
        if predicted[c] == 0:
            assert thresholds[c] == 0.0
        else:
            expected = min(np.median(all_conf[all_pred == c]), 0.9)
            assert thresholds[c] == pytest.approx(expected, abs=1e-3), CLASSES[c]
    assert meta["pixels_predicted"][CLASSES[int(np.argmax(predicted))]] == predicted.max()

    with h5py.File(out / "confidences.h5", "r") as h5:
        assert h5.attrs["num_classes"] == 19
        for s, pred, conf in zip(samples, preds, confs):
            label = np.array(Image.open(out / f"{s.stem}.png"))
            assert label.dtype == np.uint8 and label.shape == (32, 64)       # native image size
            stored = h5[f"maxprob/{s.stem}"][()]
            assert stored.dtype == np.float16 and stored.shape == (32, 64)
            np.testing.assert_allclose(stored, conf, atol=1e-3)
            soft = h5[f"soft/{s.stem}"][()]
            assert soft.dtype == np.float16 and soft.shape == (19, 8, 16)
            np.testing.assert_allclose(soft.astype(np.float32).sum(0), 1.0, atol=1e-2)
            # kept pixels carry the argmax; dropped ones are below their class threshold
            kept = label != 255
            far = np.abs(conf - thresholds[pred]) > 2e-3                 # away from float16 rounding
            np.testing.assert_array_equal(label[kept], pred[kept])
            np.testing.assert_array_equal(kept[far], (conf >= thresholds[pred])[far])
    kept_total = sum(meta["pixels_kept"].values()) / sum(meta["pixels_predicted"].values())
    assert 0.0 < kept_total < 1.0 and meta["fraction_kept_total"] == pytest.approx(kept_total)


def test_pseudolabel_fixed_rule_and_subfolder_stems(tiny_prepared, tiny_checkpoint, tmp_path):
    """Stems with sub-folders (Cityscapes' city folders) keep them; --rule fixed uses one threshold."""
    import h5py
    from PIL import Image

    from segmenters.__main__ import main as cli

    src = tiny_prepared["target"]
    target = tmp_path / "prepared"
    shutil.copytree(src, target)
    meta = json.loads((target / "meta.json").read_text())
    img_dir = tmp_path / "images"
    (img_dir / "aachen").mkdir(parents=True)
    for i, path in enumerate(sorted(Path(meta["splits"]["train"]["image_dir"]).glob("*.png"))[:2]):
        shutil.copy(path, img_dir / "aachen" / f"aachen_{i:06d}_000019.png")
    meta["splits"]["train"].update(image_dir=str(img_dir), count=2, labelled=False)
    (target / "meta.json").write_text(json.dumps(meta))
    (target / "train.txt").write_text("aachen/aachen_000000_000019\naachen/aachen_000001_000019\n")

    out = tmp_path / "pseudo"
    cli(["pseudolabel", "--checkpoint", str(tiny_checkpoint), "--target", str(target), "--split", "train",
         "--out", str(out), "--rule", "fixed", "--threshold", "0.2"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["rule"] == "fixed" and set(meta["thresholds"].values()) == {0.2}
    with h5py.File(out / "confidences.h5", "r") as h5:
        assert "soft" not in h5
        for stem in ("aachen/aachen_000000_000019", "aachen/aachen_000001_000019"):
            label = np.array(Image.open(out / f"{stem}.png"))
            conf = h5[f"maxprob/{stem}"][()].astype(np.float32)
            np.testing.assert_array_equal(label == 255, conf < 0.2)


def test_pseudolabel_failure_leaves_nothing(tiny_prepared, tiny_checkpoint, tmp_path):
    from segmenters.__main__ import main as cli
    from segmenters.io import ImageReadError

    target = tmp_path / "prepared"
    shutil.copytree(tiny_prepared["target"], target)
    (target / "train.txt").write_text("00000\nmissing_image\n")
    with pytest.raises(ImageReadError, match="missing_image"):
        cli(["pseudolabel", "--checkpoint", str(tiny_checkpoint), "--target", str(target), "--split", "train",
             "--out", str(tmp_path / "pseudo")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
