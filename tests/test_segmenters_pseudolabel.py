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


def _brute_force(checkpoint, samples, soft_hw=None):
    """Argmax and max-probability of every image at its native size (and, with ``soft_hw``, the
    softmax at the test scale resized bilinearly to ``soft_hw``), computed directly with the loader
    (no streaming)."""
    import cv2
    import torch
    import torch.nn.functional as F

    from segmenters.loader import load_segmenter

    seg = load_segmenter(checkpoint)
    preds, confs, softs = [], [], []
    with torch.inference_mode():
        for s in samples:
            img = cv2.cvtColor(cv2.imread(str(s.image)), cv2.COLOR_BGR2RGB)
            x = cv2.resize(img, seg.test_scale, interpolation=cv2.INTER_LINEAR)
            probs_test = seg.predict_probs(torch.from_numpy(x.transpose(2, 0, 1)).float()[None])
            probs = F.interpolate(probs_test, size=img.shape[:2], mode="bilinear", align_corners=False)
            conf, pred = probs.max(dim=1)
            preds.append(pred[0].numpy())
            confs.append(conf[0].numpy())
            if soft_hw is not None:
                softs.append(F.interpolate(probs_test, size=soft_hw, mode="bilinear", align_corners=False)[0].numpy())
    return (preds, confs, softs) if soft_hw is not None else (preds, confs)


#: float16 storage: |x - float16(x)| <= 2**-12 for x in [0, 1]; plus float32 noise between two computations
F16_ATOL = 2.0 ** -12 + 1e-5


def _quantile_bounds(values: np.ndarray, q: float, bins: int) -> tuple[float, float]:
    """(value, tolerance) for the streaming per-class quantile of float16 ``values``.

    The CLI's quantile lies in the histogram bin of the order statistic of rank ceil(q * n), so
    within one bin width (1 / bins) of it; one float16 step (np.spacing) more allows for a
    confidence that this test's own inference rounded to the neighbouring float16 value.
    """
    ordered = np.sort(values.astype(np.float16))
    value = ordered[int(np.ceil(q * ordered.size)) - 1]
    return float(value), 1.0 / bins + float(np.spacing(value)) + 1e-6   # meta rounds to 6 decimals


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

    preds, confs, softs = _brute_force(tiny_checkpoint, samples, soft_hw=(8, 16))
    all_pred = np.concatenate([p.ravel() for p in preds])
    all_conf = np.concatenate([c.ravel() for c in confs])
    thresholds = np.array(list(meta["thresholds"].values()))
    predicted = np.bincount(all_pred, minlength=19)
    assert (predicted > 0).sum() >= 3                       # several classes exercise the rule
    for c in range(19):
        if predicted[c] == 0:
            assert thresholds[c] == 0.0
        else:
            median, tol = _quantile_bounds(all_conf[all_pred == c], 0.5, meta["histogram_bins"])
            expected = min(median, 0.9)
            assert thresholds[c] == pytest.approx(expected, abs=tol), CLASSES[c]
    assert meta["pixels_predicted"][CLASSES[int(np.argmax(predicted))]] == predicted.max()

    with h5py.File(out / "confidences.h5", "r") as h5:
        assert h5.attrs["num_classes"] == 19
        for s, pred, conf, soft_expected in zip(samples, preds, confs, softs):
            label = np.array(Image.open(out / f"{s.stem}.png"))
            assert label.dtype == np.uint8 and label.shape == (32, 64)       # native image size
            stored = h5[f"maxprob/{s.stem}"][()]
            assert stored.dtype == np.float16 and stored.shape == (32, 64)
            np.testing.assert_allclose(stored, conf, rtol=0, atol=F16_ATOL)
            soft = h5[f"soft/{s.stem}"][()]
            assert soft.dtype == np.float16 and soft.shape == (19, 8, 16)
            # the model's own softmax at the test scale, resized to 1/4 of the native size
            np.testing.assert_allclose(soft.astype(np.float32), soft_expected, rtol=0, atol=F16_ATOL)
            # kept pixels carry the argmax; dropped ones are below their class threshold
            kept = label != 255
            far = np.abs(conf - thresholds[pred]) > 2e-3                 # away from float16 rounding
            np.testing.assert_array_equal(label[kept], pred[kept])
            np.testing.assert_array_equal(kept[far], (conf >= thresholds[pred])[far])
    kept_total = sum(meta["pixels_kept"].values()) / sum(meta["pixels_predicted"].values())
    assert 0.0 < kept_total < 1.0 and meta["fraction_kept_total"] == pytest.approx(kept_total)


def _model_probs(model, image: Path, scale_wh):
    """Softmax of the in-memory model at ``scale_wh`` (1, C, h, w) and the native size (H, W) of ``image``,
    written out without segmenters.io / loader code: RGB -> bilinear resize -> normalise -> logits."""
    import cv2
    import torch
    from PIL import Image

    img = np.array(Image.open(image).convert("RGB"))
    x = torch.from_numpy(cv2.resize(img, tuple(scale_wh), interpolation=cv2.INTER_LINEAR)).permute(2, 0, 1)[None]
    pre = model.data_preprocessor
    x = (x.float() - pre.mean.view(1, 3, 1, 1)) / pre.std.view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.encode_decode(x, [dict(img_shape=x.shape[-2:], ori_shape=x.shape[-2:])])
    return torch.softmax(logits, dim=1), img.shape[:2]


def test_pseudolabel_per_class_thresholds_and_cap_of_a_known_model(tiny_prepared, probe_segmenter, tmp_path):
    """BDL rule on the probe model, whose classes differ in confidence: each class gets its own median
    (differences far above the tolerance, so one global threshold fails) and the confident classes
    stop at --cap (a non-default 0.8, so an ignored or hard-coded cap fails); kept pixels, maxprob and
    soft labels follow from the model's own softmax computed here."""
    import h5py
    import torch.nn.functional as F
    from PIL import Image

    from domains.labels import CLASSES
    from domains.prepared import PreparedDataset
    from segmenters.__main__ import main as cli
    from segmenters.pseudolabel import build_parser

    defaults = build_parser().parse_args(["--checkpoint", "c", "--target", "t", "--out", "o"])
    assert (defaults.rule, defaults.percentile, defaults.cap) == ("bdl", 50.0, 0.9)     # BDL SSL.py's rule
    target, cap, bins = tiny_prepared["target"], 0.8, 10_000
    samples = PreparedDataset.load(target).samples("train")
    model, scale = probe_segmenter["model"], probe_segmenter["test_scale"]
    preds, confs, softs = [], [], []
    for s in samples:
        probs, size = _model_probs(model, s.image, scale)
        conf, pred = F.interpolate(probs, size=size, mode="bilinear", align_corners=False).max(dim=1)
        preds.append(pred[0].numpy())
        confs.append(conf[0].numpy().astype(np.float16))            # what confidences.h5 stores
        softs.append(F.interpolate(probs, size=(8, 16), mode="bilinear", align_corners=False)[0].numpy())
    all_pred = np.concatenate([p.ravel() for p in preds])
    all_conf = np.concatenate([c.ravel() for c in confs])
    predicted = np.bincount(all_pred, minlength=19)
    assert set(np.flatnonzero(predicted)) == {0, 2, 10, 13}
    expected, tol = np.zeros(19), np.zeros(19)
    for c in np.flatnonzero(predicted):
        median, tol[c] = _quantile_bounds(all_conf[all_pred == c], 0.5, bins)
        expected[c] = min(median, cap)
    capped = [c for c in range(19) if predicted[c] and expected[c] == cap]
    free = sorted({round(float(v), 3) for c, v in enumerate(expected) if predicted[c] and c not in capped})
    # the data exercises the rule: >= 1 capped class, >= 2 uncapped ones, all > 100 tolerances apart
    assert capped and len(free) >= 2
    assert np.diff(sorted({*free, cap})).min() > 100 * tol.max()

    out = tmp_path / "pseudo"
    assert cli(["pseudolabel", "--checkpoint", str(probe_segmenter["path"]), "--target", str(target),
                "--split", "train", "--out", str(out), "--cap", str(cap), "--bins", str(bins), "--soft-scale", "0.25",
                "--batch-size", "3", "--device", "cpu"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cap"] == cap and meta["percentile"] == 50.0
    thresholds = np.array([meta["thresholds"][n] for n in CLASSES])
    for c in range(19):
        assert thresholds[c] == pytest.approx(expected[c], abs=tol[c]), CLASSES[c]
        if c in capped:
            assert thresholds[c] == cap, CLASSES[c]
    assert [meta["pixels_predicted"][n] for n in CLASSES] == predicted.tolist()

    kept_expected, ambiguous = np.zeros(19, np.int64), np.zeros(19, np.int64)
    with h5py.File(out / "confidences.h5", "r") as h5:
        for s, pred, conf, soft in zip(samples, preds, confs, softs):
            np.testing.assert_allclose(h5[f"maxprob/{s.stem}"][()].astype(np.float32), conf.astype(np.float32),
                                       rtol=0, atol=float(np.spacing(np.float16(1.0))))
            np.testing.assert_allclose(h5[f"soft/{s.stem}"][()].astype(np.float32), soft, rtol=0, atol=F16_ATOL)
            label = np.array(Image.open(out / f"{s.stem}.png"))
            keep = conf.astype(np.float32) >= expected[pred].astype(np.float32)
            # near an uncapped class's threshold the streaming estimate may fall either side
            near = np.abs(conf.astype(np.float64) - expected[pred]) <= tol[pred]
            np.testing.assert_array_equal(label[~near], np.where(keep, pred, 255)[~near], err_msg=s.stem)
            np.testing.assert_array_equal(label[near & (label != 255)], pred[near & (label != 255)])
            kept_expected += np.bincount(pred[keep], minlength=19)
            ambiguous += np.bincount(pred[near], minlength=19)
    kept = np.array([meta["pixels_kept"][n] for n in CLASSES])
    assert np.all(np.abs(kept - kept_expected) <= ambiguous)
    assert ambiguous.sum() < 0.01 * predicted.sum()
    for c in np.flatnonzero(predicted):      # uncapped: about half kept (median); capped: more than half
        assert (kept[c] / predicted[c] > 0.55) if c in capped else (0.45 < kept[c] / predicted[c] < 0.55)


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
