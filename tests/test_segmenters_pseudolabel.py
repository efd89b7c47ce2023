"""Pseudo-labels: exact SSL.py thresholds from float16 counts vs brute force, BDL's cap, and the CLI's outputs."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from segmenters.pseudolabel import (CODES, accumulate_counts, apply_thresholds, class_order_statistics,
                                    class_thresholds, empty_counts, order_statistic_index)

REPO = Path(__file__).resolve().parents[1]


def ssl_threshold(values: np.ndarray, q: float = 0.5) -> float:
    """BDL SSL.py's per-class threshold written out by sorting: ``x[int(np.round(len(x) * q))]`` of the
    ascending values (clamped to the last one, where SSL.py would raise IndexError); 0 without values."""
    x = np.sort(np.asarray(values).ravel())
    if len(x) == 0:
        return 0.0
    return float(x[min(int(np.round(len(x) * q)), len(x) - 1)])


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


def test_order_statistics_equal_ssl_brute_force():
    """Random float16 confidences of 5 classes (one never predicted, one with a single pixel): the
    thresholds read from the counts are exactly SSL.py's sorted-array values at several percentiles."""
    rng = np.random.default_rng(0)
    preds, confs = _fake_predictions(rng)
    preds[0][0, 0], preds[0][0, 1] = 4, 4          # class 4: exactly two pixels (upper median of an even n)
    counts = empty_counts(5)
    for pred, conf in zip(preds, confs):
        accumulate_counts(counts, pred, conf)
    all_pred = np.concatenate([p.ravel() for p in preds])
    all_conf = np.concatenate([c.ravel() for c in confs])
    assert counts.shape == (5, CODES) and counts.sum() == all_pred.size
    for q in (0.5, 0.3, 0.75, 0.999, 1.0):
        got = class_order_statistics(counts, q)
        expected = [ssl_threshold(all_conf[all_pred == c], q) for c in range(5)]
        np.testing.assert_array_equal(got, expected, err_msg=f"q={q}")
    two = np.sort(all_conf[all_pred == 4].astype(np.float64))
    assert len(two) == 2 and class_order_statistics(counts)[4] == two[1]

    thr = class_thresholds(counts, "bdl")
    med = class_order_statistics(counts, 0.5)
    assert thr[0] == 0.9 and thr[3] == 0.9    # medians ~0.95 / ~0.98 are capped at 0.9
    assert thr[1] == med[1] and thr[1] < 0.9
    np.testing.assert_array_equal(class_thresholds(counts, "fixed", threshold=0.8), np.full(5, 0.8))
    with pytest.raises(ValueError, match="rule"):
        class_thresholds(counts, "median")


@pytest.mark.parametrize("values, expected_index", [
    ([0.7], 0),                               # n = 1: round(0.5) = 0
    ([0.7, 0.2], 1),                          # n = 2: x[1], the upper of the two
    ([0.3, 0.9, 0.6], 2),                     # n = 3: round(1.5) = 2 (half to even): the largest value
    ([0.4, 0.1, 0.8, 0.6], 2),                # n = 4: x[2], upper median
    ([0.5, 0.1, 0.9, 0.3, 0.7], 2),           # n = 5: round(2.5) = 2, the true median
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], 3),      # n = 6: x[3]
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], 4),  # n = 7: round(3.5) = 4, above the true median
    ([0.5, 0.5, 0.5, 0.25], 2),               # ties: the value itself
    ([0.0, 1.0], 1),                          # the ends of [0, 1] are counted
])
def test_order_statistic_hand_made_cases(values, expected_index):
    """SSL.py's median on small classes, where the upper median, half-to-even rounding and ties decide;
    each case also against the sorting brute force."""
    conf = np.array(values, np.float16)
    counts = accumulate_counts(empty_counts(2), np.zeros(len(values), np.int64), conf)
    expected = float(np.sort(conf)[expected_index])
    assert order_statistic_index(len(values), 0.5) == expected_index
    assert class_order_statistics(counts)[0] == expected == ssl_threshold(conf)
    assert class_order_statistics(counts)[1] == 0.0                    # never predicted


def test_order_statistic_index_clamps_and_quantile_range():
    assert order_statistic_index(4, 1.0) == 3 and order_statistic_index(1, 1.0) == 0    # SSL.py: IndexError
    assert order_statistic_index(10, 0.3) == 3 and order_statistic_index(10, 0.25) == 2  # round(2.5) = 2
    counts = accumulate_counts(empty_counts(1), np.zeros(3, np.int64), np.array([0.25, 0.5, 1.0]))
    assert class_order_statistics(counts, 1.0)[0] == 1.0
    for q in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\], got"):
            class_order_statistics(counts, q)


def test_accumulate_counts_rounds_to_float16_and_refuses_non_probabilities():
    """Confidences are counted as the float16 values confidences.h5 stores (two float64 values that
    round to one float16 share a count); NaN or values outside [0, 1] are refused, naming the value."""
    counts = empty_counts(2)
    a = 0.3
    b = float(np.nextafter(np.float64(a), 1.0))                 # the same float16 as 0.3
    accumulate_counts(counts, np.array([0, 0, 1, 1]), np.array([a, b, 0.0, 1.0]))
    code = int(np.array(a, np.float16).view(np.uint16))
    assert counts[0, code] == 2 and counts[0].sum() == 2
    assert counts[1, 0] == 1 and counts[1, CODES - 1] == 1      # 0.0 and 1.0 are the first and last codes
    assert float(np.array(CODES - 1, np.uint16).view(np.float16)) == 1.0
    assert empty_counts(3).dtype == np.int64 and empty_counts(3).shape == (3, CODES)   # exact counts
    for bad in (np.nan, 1.5, -0.25):
        with pytest.raises(ValueError, match="not a probability"):
            accumulate_counts(empty_counts(2), np.array([0]), np.array([bad]))
    # the message names the first value outside [0, 1], after valid values at both ends of the range
    with pytest.raises(ValueError) as err:
        accumulate_counts(empty_counts(2), np.zeros(5, np.int64), np.array([0.0, 0.5, 1.0, 1.5, -0.25]))
    assert str(err.value) == ("confidence 1.5 is not a probability in [0, 1]: the model's outputs are not "
                              "finite or not a softmax")


def test_apply_thresholds_keeps_confident_pixels():
    pred = np.array([[0, 1], [2, 1]], np.uint8)
    conf = np.array([[0.5, 0.9], [0.3, 0.6]], np.float16)
    thr = np.array([0.4, 0.7, 0.0])
    np.testing.assert_array_equal(apply_thresholds(pred, conf, thr), [[0, 1], [2, 255]])
    # BDL keeps "top half per class, or p >= cap": the kept fraction of a class is ~50% below the cap
    rng = np.random.default_rng(1)
    preds, confs = _fake_predictions(rng, n=3)
    counts = empty_counts(5)
    for p, c in zip(preds, confs):
        accumulate_counts(counts, p, c)
    thr = class_thresholds(counts)
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


def _ssl_expected(values: np.ndarray, q: float) -> tuple[float, float]:
    """(value, tolerance) for the CLI's threshold of a class: SSL.py's order statistic of the float16
    ``values``, within one float16 step (np.spacing) for a confidence that this test's own inference
    rounded to the neighbouring float16 value."""
    value = ssl_threshold(values.astype(np.float16), q)
    return value, float(np.spacing(np.float16(value))) + 1e-9


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
            median, tol = _ssl_expected(all_conf[all_pred == c], 0.5)
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
    target, cap = tiny_prepared["target"], 0.8
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
        median, tol[c] = _ssl_expected(all_conf[all_pred == c], 0.5)
        expected[c] = min(median, cap)
    capped = [c for c in range(19) if predicted[c] and expected[c] == cap]
    free = sorted({round(float(v), 3) for c, v in enumerate(expected) if predicted[c] and c not in capped})
    # the data exercises the rule: >= 1 capped class, >= 2 uncapped ones, all > 100 tolerances apart
    assert capped and len(free) >= 2
    assert np.diff(sorted({*free, cap})).min() > 100 * tol.max()

    out = tmp_path / "pseudo"
    assert cli(["pseudolabel", "--checkpoint", str(probe_segmenter["path"]), "--target", str(target),
                "--split", "train", "--out", str(out), "--cap", str(cap), "--soft-scale", "0.25",
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
            # within a float16 step of an uncapped class's threshold this test's rounding may differ
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


def test_pseudolabel_failure_leaves_nothing(tiny_prepared, tiny_checkpoint, tmp_path, capsys):
    from segmenters.__main__ import main as cli
    from segmenters.io import ImageReadError

    target = tmp_path / "prepared"
    shutil.copytree(tiny_prepared["target"], target)
    (target / "train.txt").write_text("00000\nmissing_image\n")
    argv = ["pseudolabel", "--checkpoint", str(tiny_checkpoint), "--target", str(target), "--split", "train",
            "--out", str(tmp_path / "pseudo")]
    with pytest.raises(ImageReadError, match="missing_image"):
        cli([*argv, "--debug"])                                  # --debug: the exception itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
    assert cli(argv) == 2 and "missing_image" in capsys.readouterr().err   # else one message, exit 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


# --------------------------------------------------------------------------- hand-made counts
def test_class_thresholds_defaults_and_percentile():
    counts = empty_counts(3)
    accumulate_counts(counts, np.array([0, 0, 0, 0, 1, 1]), np.array([0.125, 0.25, 0.375, 0.5, 0.9375, 0.96875]))
    # fixed rule: 0.9 for every class unless told otherwise
    np.testing.assert_array_equal(class_thresholds(counts, "fixed"), [0.9, 0.9, 0.9])
    # bdl at the 75th percentile: class 0 x[round(3.0)] = 0.5; class 1 x[round(1.5)] = x[2] -> clamped x[1]
    # = 0.96875, capped at 0.9 (or at 0.95); class 2 never predicted
    np.testing.assert_array_equal(class_thresholds(counts, "bdl", percentile=75.0), [0.5, 0.9, 0.0])
    np.testing.assert_array_equal(class_thresholds(counts, "bdl", percentile=75.0, cap=0.95), [0.5, 0.95, 0.0])
    # the default percentile is SSL.py's median: x[round(2.0)] = 0.375 and x[round(1.0)] = 0.96875 -> 0.9
    np.testing.assert_array_equal(class_thresholds(counts), [0.375, 0.9, 0.0])


def test_apply_thresholds_at_equal_confidences():
    """A confidence equal to its class threshold is kept; the comparison runs in float32, so a
    float32 confidence 0.9 meets the threshold 0.9 (a float64 decimal), and float64 confidences give
    the same labels as their float32 values."""
    pred = np.array([0, 0, 1, 1, 1])
    thr = np.array([0.625, 0.9])
    f32_09 = float(np.float32(0.9))                   # 0.89999997..., below the float64 0.9
    conf = np.array([0.625, float(np.nextafter(np.float16(0.625), np.float16(0))), f32_09,
                     f32_09 - 1e-9, 0.89], np.float64)   # f32_09 - 1e-9 rounds to f32_09 in float32
    expected = [0, 255, 1, 1, 255]
    for dtype in (np.float64, np.float32):
        label = apply_thresholds(pred, conf.astype(dtype), thr)
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, expected, err_msg=str(dtype))
    label16 = apply_thresholds(pred[:2], conf[:2].astype(np.float16), thr)
    np.testing.assert_array_equal(label16, [0, 255])


# --------------------------------------------------------------------------- generate() on a known model
class _CodedSegmenter:
    """Stand-in for a loaded segmenter whose softmax is written in the image: a pixel (R, G, B)
    predicts class R with probability G / 256 and the other classes share the rest equally; its
    ``test_scale`` is the images' own size, so the maps are not resized."""

    device = "cpu"

    def __init__(self, num_classes: int, size_wh: tuple[int, int], meta: dict | None = None):
        self.num_classes, self.test_scale, self.meta = num_classes, size_wh, meta or {}

    def predict_logits(self, images):
        import torch

        cls = images[:, 0].long()
        p = images[:, 1] / 256.0
        probs = ((1.0 - p) / (self.num_classes - 1))[:, None].repeat(1, self.num_classes, 1, 1)
        probs.scatter_(1, cls[:, None], p[:, None])
        return torch.log(probs)


def _coded_samples(folder: Path, images: dict[str, list[list[tuple[int, int]]]]):
    """Write each image (rows of (class, 256 * probability) pixels) as an RGB PNG; their Samples."""
    from PIL import Image

    from domains.prepared import Sample

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for stem, rows in images.items():
        rgb = np.array([[(c, g, 0) for c, g in row] for row in rows], np.uint8)
        Image.fromarray(rgb).save(folder / f"{stem}.png")
        samples.append(Sample(stem, folder / f"{stem}.png", None))
    return samples


#: two 1x5 images, 3 classes. Class 0: confidences 0.5 (4x), 0.625 (3x), 0.75 (2x); class 1: one pixel
#: at 0.96875 (= 248 / 256); class 2 never predicted. All values are exact in float16.
CODED = {"a": [[(0, 128), (0, 160), (0, 192), (1, 248), (0, 128)]],
         "b": [[(0, 160), (0, 128), (0, 192), (0, 160), (0, 128)]]}
CODED_CONF = {"a": [0.5, 0.625, 0.75, 0.96875, 0.5], "b": [0.625, 0.5, 0.75, 0.625, 0.5]}
CODED_PRED = {"a": [0, 0, 0, 1, 0], "b": [0, 0, 0, 0, 0]}


@pytest.fixture
def loader_calls(monkeypatch):
    """Records the effective batch_size and workers of every inference loop pseudolabel starts."""
    import inspect

    import segmenters.pseudolabel as pl

    real, calls = pl.batched_probabilities, []

    def spy(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append((bound.arguments["batch_size"], bound.arguments["workers"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(pl, "batched_probabilities", spy)
    return calls


def _layout(h5) -> dict[str, str]:
    """confidences.h5's ``layout`` attribute as {dataset pattern: "dtype (axes)"}."""
    return dict(entry.split(": ", 1) for entry in h5.attrs["layout"].split("; "))


def _labels(out: Path, stems) -> dict[str, list[int]]:
    """The (1, 5) uint8 pseudo-label PNGs of ``stems`` as lists."""
    from PIL import Image

    labels = {s: np.array(Image.open(out / f"{s}.png")) for s in stems}
    assert all(lab.dtype == np.uint8 and lab.shape == (1, 5) for lab in labels.values())
    return {s: lab[0].tolist() for s, lab in labels.items()}


def _labels_any(path: Path) -> list:
    from PIL import Image

    lab = np.array(Image.open(path))
    assert lab.dtype == np.uint8
    return lab.tolist()


def test_generate_defaults_follow_bdl(tmp_path, loader_calls):
    """generate() with its defaults: BDL's rule (SSL.py's median, cap 0.9), thresholds and kept pixels
    worked out by hand, and the documented meta.json / confidences.h5 contents."""
    import h5py

    from segmenters.pseudolabel import generate

    samples = _coded_samples(tmp_path / "img", CODED)
    out = tmp_path / "pseudo"
    meta = generate(_CodedSegmenter(3, (5, 1)), samples, out)
    assert loader_calls == [(1, 0)]                     # one image at a time, decoded in-process
    assert json.loads((out / "meta.json").read_text()) == meta
    # class 0: 9 sorted values 0.5 (4x), 0.625 (3x), 0.75 (2x); SSL.py's x[round(4.5)] = x[4] = 0.625
    # (halves round to even). class 1: its one value 0.96875 (x[round(0.5)] = x[0]), capped at 0.9. class 2: 0.
    assert meta["thresholds"] == {"class_0": 0.625, "class_1": 0.9, "class_2": 0.0}
    assert {k: meta[k] for k in ("rule", "percentile", "cap", "threshold", "confidence_dtype", "soft_scale",
                                 "num_images", "ignore_index")} == {
        "rule": "bdl", "percentile": 50.0, "cap": 0.9, "threshold": None, "confidence_dtype": "float16",
        "soft_scale": None, "num_images": 2, "ignore_index": 255}
    assert meta["threshold_statistic"] == ("x[int(np.round(n * percentile / 100))] of the class's n sorted "
                                           "float16 confidences, capped (BDL SSL.py)")
    # kept: class 0 its 0.625 and 0.75 pixels (5 of 9: a confidence equal to the threshold is kept),
    # class 1 its pixel (0.96875 >= 0.9)
    assert _labels(out, "ab") == {"a": [255, 0, 0, 1, 255], "b": [0, 255, 0, 0, 255]}
    assert meta["pixels_predicted"] == {"class_0": 9, "class_1": 1, "class_2": 0}
    assert meta["pixels_kept"] == {"class_0": 5, "class_1": 1, "class_2": 0}
    assert all(type(v) is int for k in ("pixels_predicted", "pixels_kept") for v in meta[k].values())
    assert meta["fraction_kept"] == {"class_0": 0.555556, "class_1": 1.0, "class_2": None}   # 5/9; never predicted
    assert meta["fraction_kept_total"] == pytest.approx(0.6)
    assert meta["quality_vs_ground_truth"] is None          # the samples have no labels
    with h5py.File(out / "confidences.h5", "r") as h5:
        assert h5.attrs["num_classes"] == 3 and h5.attrs["soft_scale"] == 0.0 and "soft" not in h5
        assert "maxprob/<stem>" in _layout(h5)
        for s in "ab":
            assert h5[f"maxprob/{s}"].dtype == np.float16
            np.testing.assert_array_equal(h5[f"maxprob/{s}"][()], [CODED_CONF[s]])


def test_generate_scores_the_pseudo_labels_against_ground_truth(tmp_path):
    """A labelled split gets quality_vs_ground_truth, worked out by hand; the labels it writes are
    the same as without ground truth (the scores are a diagnostic)."""
    from PIL import Image

    from domains.prepared import Sample
    from segmenters.pseudolabel import generate

    samples = _coded_samples(tmp_path / "img", CODED)          # writes a: [255, 0, 0, 1, 255], b: [0, 255, 0, 0, 255]
    gt = {"a": [0, 0, 2, 1, 255], "b": [255, 1, 0, 2, 0]}
    for stem, row in gt.items():
        Image.fromarray(np.array([row], np.uint8)).save(tmp_path / "img" / f"{stem}_gt.png")
    labelled = [Sample(s.stem, s.image, tmp_path / "img" / f"{s.stem}_gt.png") for s in samples]
    meta = generate(_CodedSegmenter(3, (5, 1)), labelled, tmp_path / "pseudo")
    assert _labels(tmp_path / "pseudo", "ab") == {"a": [255, 0, 0, 1, 255], "b": [0, 255, 0, 0, 255]}
    quality = meta["quality_vs_ground_truth"]
    # 8 labelled pixels; 5 of them kept (b's first kept pixel has no ground truth): a 0/0, 0/2, 1/1;
    # b 0/0, 0/2 (pseudo/gt). Confusion cm[gt, pseudo]: (0,0) 2, (2,0) 2, (1,1) 1.
    assert quality["images"] == 2 and quality["coverage"] == pytest.approx(5 / 8)
    assert quality["precision"] == pytest.approx(3 / 5)
    assert quality["precision_per_class"] == {"class_0": 0.5, "class_1": 1.0, "class_2": None}
    assert quality["mIoU"] == pytest.approx((2 / 4 + 1 + 0) / 3)           # class 2: 0 of its 2 pixels
    assert "not a training input" in quality["note"]
    # the demo's table (workflow/scripts/show_table.py) prints these figures under the round they fed
    import importlib.util

    spec = importlib.util.spec_from_file_location("show_table", REPO / "workflow/scripts/show_table.py")
    show_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(show_table)
    line = show_table.pseudo_quality(f"segmenter r1/final.pth; source src; pseudo {tmp_path / 'pseudo'}; translator t")
    assert line.endswith("62.5 % of labelled target pixels kept, 60.0 % of them right, mIoU of the kept pixels 50.0")
    assert show_table.pseudo_quality("segmenter r0/final.pth; source src") is None
    unscored = generate(_CodedSegmenter(3, (5, 1)), samples, tmp_path / "unscored")   # no ground truth given
    assert unscored["quality_vs_ground_truth"] is None
    assert show_table.pseudo_quality(f"segmenter x; pseudo {tmp_path / 'unscored'}") is None


def test_generate_fixed_rule_batches_workers_and_small_soft_maps(tmp_path, loader_calls):
    """--rule fixed keeps confidences equal to the threshold; batch_size / workers reach the loop;
    a soft scale that rounds a side to 0 still stores one pixel per side."""
    import h5py

    from segmenters.pseudolabel import generate

    samples = _coded_samples(tmp_path / "img", CODED)
    out = tmp_path / "pseudo"
    meta = generate(_CodedSegmenter(3, (5, 1)), samples, out, rule="fixed", threshold=0.625, soft_scale=0.1,
                    batch_size=2, workers=1)
    assert loader_calls == [(2, 1)]
    assert (meta["rule"], meta["threshold"], meta["percentile"], meta["cap"], meta["soft_scale"]) == (
        "fixed", 0.625, None, None, 0.1)
    assert meta["thresholds"] == {"class_0": 0.625, "class_1": 0.625, "class_2": 0.625}
    assert meta["threshold_statistic"] is None
    expected = {s: [c if conf >= 0.625 else 255 for c, conf in zip(CODED_PRED[s], CODED_CONF[s])] for s in "ab"}
    assert expected == {"a": [255, 0, 0, 1, 255], "b": [0, 255, 0, 0, 255]}
    assert _labels(out, "ab") == expected
    assert meta["pixels_kept"] == {"class_0": 5, "class_1": 1, "class_2": 0}
    assert meta["fraction_kept"] == {"class_0": 0.555556, "class_1": 1.0, "class_2": None}   # 5/9
    with h5py.File(out / "confidences.h5", "r") as h5:
        assert h5.attrs["soft_scale"] == pytest.approx(0.1)
        # the file describes itself: native-size maxprob maps, soft maps at the reduced size
        layout = _layout(h5)
        assert layout["maxprob/<stem>"] == "float16 (H, W)" and layout["soft/<stem>"].startswith("float16 (C, h, w)")
        for s in "ab":
            np.testing.assert_array_equal(h5[f"maxprob/{s}"][()], [CODED_CONF[s]])
            soft = h5[f"soft/{s}"][()]
            # (1, 5) * 0.1 rounds to (0, 0) -> (1, 1): the centre pixel (class 0 at 0.75) of the row
            assert soft.dtype == np.float16 and soft.shape == (3, 1, 1)
            np.testing.assert_allclose(soft[:, 0, 0], [0.75, 0.125, 0.125], atol=1e-3)


def test_generate_single_pixel_split_at_full_soft_scale(tmp_path):
    """Edge case: a one-pixel image, --soft-scale 1.0 (allowed) and the fixed rule's default threshold."""
    import h5py

    from segmenters.pseudolabel import generate

    samples = _coded_samples(tmp_path / "img", {"one": [[(0, 248)]]})
    meta = generate(_CodedSegmenter(3, (1, 1)), samples, tmp_path / "pseudo", rule="fixed", soft_scale=1.0)
    assert meta["threshold"] == 0.9 and set(meta["thresholds"].values()) == {0.9}
    assert meta["pixels_kept"]["class_0"] == 1 and meta["fraction_kept_total"] == 1.0    # 0.96875 >= 0.9
    with h5py.File(tmp_path / "pseudo" / "confidences.h5", "r") as h5:
        assert h5.attrs["soft_scale"] == 1.0
        np.testing.assert_allclose(h5["soft/one"][()], [[[0.96875]], [[0.015625]], [[0.015625]]], atol=1e-4)


def test_generate_class_count_limits(tmp_path):
    """255 classes fit uint8 PNGs next to the ignore value 255; 256 do not."""
    from segmenters.pseudolabel import generate

    samples = _coded_samples(tmp_path / "img", {"x": [[(254, 200)]]})
    meta = generate(_CodedSegmenter(255, (1, 1)), samples, tmp_path / "p255")
    # one pixel at 0.78125 (200 / 256): its own threshold, kept as class 254
    assert list(meta["thresholds"]) == [f"class_{c}" for c in range(255)]
    assert meta["thresholds"]["class_254"] == 0.78125
    assert _labels_any(tmp_path / "p255" / "x.png") == [[254]]
    with pytest.raises(ValueError, match="256 classes do not fit uint8"):
        generate(_CodedSegmenter(256, (1, 1)), samples, tmp_path / "p256")
    assert not (tmp_path / "p256").exists()


@pytest.mark.parametrize("options, message", [
    ({"rule": "median"}, "unknown pseudo-label rule 'median'"),
    ({"percentile": 0.0}, r"--percentile must be in \(0, 100\], got 0.0"),
    ({"percentile": 150.0}, r"--percentile must be in \(0, 100\], got 150.0"),
    ({"soft_scale": 0.0}, r"--soft-scale must be in \(0, 1\], got 0.0"),
    ({"soft_scale": 1.5}, r"--soft-scale must be in \(0, 1\], got 1.5"),
])
def test_generate_rejects_bad_options(tmp_path, options, message):
    from segmenters.pseudolabel import generate

    with pytest.raises(ValueError, match=message):
        generate(_CodedSegmenter(3, (1, 1)), [], tmp_path / "pseudo", **options)
    assert not (tmp_path / "pseudo").exists()


# --------------------------------------------------------------------------- the CLI's plumbing
@pytest.fixture
def coded_cli(tmp_path, monkeypatch):
    """A prepared target of the CODED images and a checkpoint loader that returns the coded model
    (recording what it was asked for)."""
    import inspect

    import segmenters.loader as loader

    _coded_samples(tmp_path / "img", CODED)
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "meta.json").write_text(json.dumps({"dataset": "coded", "num_classes": 3, "splits": {"train": {
        "image_dir": str(tmp_path / "img"), "img_suffix": ".png", "count": 2, "labelled": False}}}))
    (target / "train.txt").write_text("a\nb\n")
    ckpt_meta = {"arch": "deeplabv2", "preset": "tiny", "uda": "bdl", "iter": 7, "test_scale": [5, 1],
                 "model_cfg": {"not": "recorded"}}
    segmenter = _CodedSegmenter(3, (5, 1), meta=ckpt_meta)
    signature, calls = inspect.signature(loader.load_segmenter), []

    def load(*args, **kwargs):
        calls.append(dict(signature.bind(*args, **kwargs).arguments))     # the arguments given
        return segmenter

    monkeypatch.setattr(loader, "load_segmenter", load)
    return {"target": target, "load_calls": calls, "ckpt": str(tmp_path / "final.pth")}


def test_pseudolabel_cli_passes_its_options_through(coded_cli, loader_calls, tmp_path):
    from segmenters.pseudolabel import main

    out = tmp_path / "pseudo"
    assert main(["--checkpoint", coded_cli["ckpt"], "--target", str(coded_cli["target"]), "--split", "train",
                 "--out", str(out), "--percentile", "75", "--batch-size", "2", "--workers", "1",
                 "--device", "cpu", "--no-amp"]) == 0
    assert coded_cli["load_calls"] == [{"path": coded_cli["ckpt"], "device": "cpu", "amp": False}]
    assert loader_calls == [(2, 1)]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["percentile"] == 75.0
    # class 0 at the 75th percentile: x[round(9 * 0.75)] = x[round(6.75)] = x[7] = 0.75 (the median is 0.625);
    # class 1's only value 0.96875 (index round(0.75) = 1, clamped to 0), capped at 0.9
    assert meta["thresholds"] == {"class_0": 0.75, "class_1": 0.9, "class_2": 0.0}
    assert _labels(out, "ab") == {"a": [255, 255, 0, 1, 255], "b": [255, 255, 0, 255, 255]}
    assert meta["checkpoint"] == coded_cli["ckpt"]
    assert meta["checkpoint_meta"] == {"arch": "deeplabv2", "preset": "tiny", "uda": "bdl", "iter": 7,
                                       "test_scale": [5, 1]}
    assert (meta["target"], meta["split"]) == (str(coded_cli["target"]), "train")


def test_pseudolabel_cli_reports_at_info_level(coded_cli, tmp_path, capsys):
    """Run as a program (root logger unconfigured), the CLI logs at INFO on stderr: level, logger, message."""
    import logging

    from segmenters.pseudolabel import main

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    for handler in saved_handlers:             # pytest's capture handlers would make basicConfig a no-op
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)             # a fresh interpreter's default
    try:
        main(["--checkpoint", coded_cli["ckpt"], "--target", str(coded_cli["target"]),
              "--out", str(tmp_path / "pseudo")])
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    err = capsys.readouterr().err
    assert f"INFO segmenters.pseudolabel: wrote {tmp_path / 'pseudo'}: 60.0% of pixels kept" in err.splitlines()


def test_pseudolabel_cli_arguments(capsys):
    from segmenters.pseudolabel import build_parser

    parser = build_parser()
    base = ["--checkpoint", "c", "--target", "t", "--out", "o"]
    defaults = parser.parse_args(base)
    assert (defaults.batch_size, defaults.workers, defaults.soft_scale, defaults.flip) == (1, 0, None, False)
    assert parser.parse_args(base + ["--flip"]).flip is True
    assert [parser.parse_args(base + ["--rule", r]).rule for r in ("bdl", "fixed")] == ["bdl", "fixed"]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(base + ["--rule", "median"])
    assert exc.value.code == 2 and "invalid choice: 'median'" in capsys.readouterr().err


def test_pseudolabel_cli_empty_split_names_its_file(coded_cli, tmp_path):
    from domains.prepared import PreparedDataError
    from segmenters.pseudolabel import main

    (coded_cli["target"] / "train.txt").write_text("")
    split_file = re.escape(str(coded_cli["target"] / "train.txt"))
    with pytest.raises(PreparedDataError, match=f"split 'train' of .* is empty \\({split_file}\\)"):
        main(["--checkpoint", coded_cli["ckpt"], "--target", str(coded_cli["target"]),
              "--out", str(tmp_path / "pseudo")])
    assert coded_cli["load_calls"] == [] and not (tmp_path / "pseudo").exists()


@pytest.mark.parametrize("percentile, kept_class_0", [(0.5, 9), (100.0, 2)])
def test_generate_accepts_the_ends_of_the_percentile_range(tmp_path, percentile, kept_class_0):
    """--percentile is valid in (0, 100]: 0.5 takes x[round(0.045)] = the smallest value (all 9 pixels of
    class 0 kept), 100 the largest (x[round(9)] clamped to x[8] = 0.75: its 2 pixels kept)."""
    from segmenters.pseudolabel import generate

    samples = _coded_samples(tmp_path / "img", CODED)
    meta = generate(_CodedSegmenter(3, (5, 1)), samples, tmp_path / "pseudo", percentile=percentile)
    assert meta["pixels_kept"]["class_0"] == kept_class_0
    with pytest.raises(ValueError, match=r"--percentile must be in \(0, 100\], got 100.5"):
        generate(_CodedSegmenter(3, (1, 1)), [], tmp_path / "bad", percentile=100.5)


def test_pseudo_label_quality_benchmark_scores_folders(tiny_prepared, tmp_path, capsys):
    """benchmarks/pseudo_label_quality.py: a folder holding the ground truth itself scores 100 %,
    one with every label on a single class scores that class's pixel share, on the real split."""
    import importlib.util

    from domains.prepared import PreparedDataset
    from segmenters.io import read_label, write_png

    spec = importlib.util.spec_from_file_location("plq", REPO / "benchmarks" / "pseudo_label_quality.py")
    plq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plq)
    dataset = PreparedDataset.load(tiny_prepared["target"])
    samples = dataset.samples("train")
    for name, fill in (("perfect", None), ("road", 0)):
        for s in samples:
            gt = read_label(s.label)
            (tmp_path / name / s.stem).parent.mkdir(parents=True, exist_ok=True)
            write_png(tmp_path / name / f"{s.stem}.png", gt if fill is None else np.full_like(gt, fill))
    perfect = plq.folder_quality(tmp_path / "perfect", dataset, "train")
    assert perfect["coverage"] == 1.0 and perfect["precision"] == 1.0 and perfect["mIoU"] == 1.0
    road = plq.folder_quality(tmp_path / "road", dataset, "train")
    gts = np.concatenate([read_label(s.label).ravel() for s in samples])
    gts = gts[gts < 19]
    assert road["coverage"] == 1.0 and road["precision"] == pytest.approx(np.mean(gts == 0), abs=1e-6)
    assert plq.main(["--target", str(tiny_prepared["target"]), str(tmp_path / "perfect")]) == 0
    assert "100.0" in capsys.readouterr().out


class _LeftRightSegmenter(_CodedSegmenter):
    """Not mirror-equivariant: class 0's logit is the pixel's column, class 1's is 0, whatever the image."""

    def predict_logits(self, images):
        import torch

        b, _, h, w = images.shape
        col = torch.arange(w, dtype=torch.float32).expand(b, h, w)
        return torch.stack([col, torch.zeros_like(col)], dim=1)


def test_flip_averages_the_mirrored_prediction(tmp_path):
    """--flip (flip test-time augmentation): the probabilities are the mean of the image's and its
    mirror's, mirrored back; a mirror-equivariant model's labels do not change, and meta.json says so."""
    import torch

    from segmenters.io import InferenceSet, batched_probabilities
    from segmenters.pseudolabel import generate

    samples = _coded_samples(tmp_path / "img", CODED)
    dataset = InferenceSet([s.image for s in samples], (5, 1))
    plain = [p for _, p in batched_probabilities(_LeftRightSegmenter(2, (5, 1)), dataset, softmax=True)]
    flipped = [p for _, p in batched_probabilities(_LeftRightSegmenter(2, (5, 1)), dataset, softmax=True, flip=True)]
    p0 = torch.sigmoid(torch.arange(5.0))                      # softmax([j, 0])[0] at column j
    torch.testing.assert_close(plain[0][0, 0, 0], p0)
    torch.testing.assert_close(flipped[0][0, 0, 0], (p0 + p0.flip(0)) / 2)
    torch.testing.assert_close(flipped[0].sum(dim=1), torch.ones(1, 1, 5))
    out = tmp_path / "pseudo"
    meta = generate(_CodedSegmenter(3, (5, 1)), samples, out, flip=True)
    assert meta["flip"] is True and meta["thresholds"] == {"class_0": 0.625, "class_1": 0.9, "class_2": 0.0}
    assert _labels(out, "ab") == {"a": [255, 0, 0, 1, 255], "b": [0, 255, 0, 0, 255]}   # as without --flip
