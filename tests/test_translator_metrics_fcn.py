"""FCN-score and semantic distortion: hand-computed confusions and an end-to-end run on ``tiny_prepared``."""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from domains.prepared import PreparedDataError, PreparedDataset
from translators.metrics.__main__ import main as cli
from translators.metrics.distortion import (distortion_matrix, plot_heatmap, row_normalise, semantic_distortion,
                                            summary, top_flows)
from translators.metrics.fcn_score import fcn_scores, select_evenly, source_samples


# ------------------------------------------------------------------------------------ hand-made cases

def test_fcn_scores_on_a_hand_made_confusion():
    cm = np.array([[3, 1, 0, 0],
                   [0, 2, 2, 0],
                   [0, 0, 0, 0],     # class 2: never in the labels but predicted twice -> IoU 0, acc NaN
                   [0, 0, 0, 0]])    # class 3: absent everywhere -> NaN (excluded) / 0 (eps)
    row = fcn_scores(cm)
    assert row["pixel_acc"] == pytest.approx(100 * 5 / 8)
    assert row["mean_class_acc"] == pytest.approx(100 * (3 / 4 + 2 / 4) / 2)
    assert row["mIoU"] == pytest.approx(100 * (3 / 4 + 2 / 5 + 0) / 3)
    assert row["IoU_class_1"] == pytest.approx(40.0) and math.isnan(row["IoU_class_3"])
    eps = fcn_scores(cm, convention="eps")
    assert eps["pixel_acc"] == pytest.approx(62.5)
    assert eps["mean_class_acc"] == pytest.approx(100 * (3 / 4 + 2 / 4) / 4)
    assert eps["mIoU"] == pytest.approx(100 * (3 / 4 + 2 / 5) / 4)


def test_fcn_scores_synthia_subsets_use_class_names():
    cm = np.zeros((19, 19), dtype=np.int64)
    cm[0, 0], cm[9, 9], cm[3, 3], cm[3, 0] = 10, 5, 1, 1          # terrain (9) is outside both subsets
    row = fcn_scores(cm, class_set=16)
    assert row["IoU_road"] == pytest.approx(100 * 10 / 11) and row["IoU_wall"] == pytest.approx(50.0)
    assert row["mIoU"] == pytest.approx(100 * (10 / 11 + 1 + 0.5) / 3)
    assert row["mIoU16"] == pytest.approx(100 * (10 / 11 + 0.5) / 2)    # wall (3) is in the 16 subset
    assert row["mIoU13"] == pytest.approx(100 * 10 / 11)                # ... but not in the 13 subset


def test_select_evenly():
    assert select_evenly(range(10), None) == list(range(10))
    assert select_evenly(range(10), 3) == [0, 4, 9]                 # rounds 4.5 to even
    assert select_evenly(range(10), 4) == [0, 3, 6, 9]
    assert select_evenly(range(3), 10) == [0, 1, 2]


def test_distortion_difference_and_top_flows():
    ref = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    refined = np.array([[5, 5, 0], [1, 8, 1], [0, 0, 0]])
    p = row_normalise(ref)
    assert np.allclose(p[:2], [[0.8, 0.2, 0], [0.1, 0.9, 0]]) and np.isnan(p[2]).all()
    d = distortion_matrix(refined, ref)
    assert np.allclose(d[:2], [[-0.3, 0.3, 0], [0, -0.1, 0.1]]) and np.isnan(d[2]).all()
    names = ("a", "b", "c")
    flows = top_flows(d, k=5, class_names=names)
    assert [(f.src, f.dst) for f in flows] == [(0, 1), (1, 2)]            # only increases, largest first
    assert flows[0].delta == pytest.approx(0.3) and str(flows[0]) == "a\u2192b +30.0 %"
    both = top_flows(-d, k=2, order="abs", class_names=names)            # removed confusions rank too
    assert [(f.src, f.dst, round(f.delta, 6)) for f in both] == [(0, 1, -0.3), (1, 2, -0.1)]
    row = summary(d, flows)
    assert row["classes_present"] == 2
    assert row["mean_diag_change_pp"] == pytest.approx(-20.0) and row["mean_flip_pp"] == pytest.approx(20.0)
    assert row["flow_1"] == "a\u2192b" and row["flow_2_pp"] == pytest.approx(10.0) and "flow_3" not in row
    with pytest.raises(ValueError, match="differ in shape"):
        distortion_matrix(ref, np.zeros((4, 4)))


def test_flow_text_uses_cityscapes_names_and_heatmap_is_written(tmp_path):
    ref, refined = np.eye(19, dtype=np.int64) * 100, np.eye(19, dtype=np.int64) * 100
    refined[10, 10], refined[10, 8] = 877, 123                          # sky -> vegetation +12.3 %
    ref[10, 10] = 1000
    ref[4], refined[4] = 0, 0                                           # fence absent from the labels
    d = distortion_matrix(refined, ref)
    (flow,) = top_flows(d, k=10)
    assert str(flow) == "sky\u2192vegetation +12.3 %"
    out = plot_heatmap(d, tmp_path / "sub" / "heat.png", title="test")
    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[0] > 300 and img.std() > 0
    assert [p.name for p in out.parent.iterdir()] == ["heat.png"]


def test_row_normalise_single_pixel_rows_shares_and_errors():
    cm = np.array([[0, 1, 0], [2, 2, 0], [0, 0, 0]])           # label 0 holds a single pixel; label 2 none
    p = row_normalise(cm)
    np.testing.assert_array_equal(p[:2], [[0, 1, 0], [0.5, 0.5, 0]])
    assert np.isnan(p[2]).all()
    np.testing.assert_allclose(row_normalise(cm / cm.sum()), p)  # pixel shares (row sums < 1): same result
    # a float32 confusion is normalised in float64 (2**24 + 1 is not a float32)
    p32 = row_normalise(np.array([[2 ** 24, 1], [0, 0]], dtype=np.float32))
    assert p32.dtype == np.float64 and p32[0, 0] == 2 ** 24 / (2 ** 24 + 1) and p32[0, 1] == 1 / (2 ** 24 + 1)
    with pytest.raises(ValueError, match=r"confusion matrix must be square, got shape \(2, 3\)"):
        row_normalise(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"confusion matrix must be square, got shape \(3,\)"):
        row_normalise(np.ones(3))


def test_top_flows_defaults_k_and_generic_class_names():
    d = np.full((4, 4), 0.05)                                   # 12 tied off-diagonal increases
    np.fill_diagonal(d, -0.15)
    flows = top_flows(d)
    assert len(flows) == 10                                     # default k
    assert [(f.src, f.dst) for f in flows] == [(i, j) for i in range(4) for j in range(4) if i != j][:10]
    assert (flows[0].src_name, flows[0].dst_name, flows[-1].src_name) == ("class_0", "class_1", "class_3")
    assert top_flows(d, k=0) == [] and top_flows(d, k=-3) == []
    assert len(top_flows(d, k=50)) == 12
    with pytest.raises(ValueError, match=r"unknown order 'bogus'; use 'increase' or 'abs'"):
        top_flows(d, order="bogus")
    # a raw pixel-count difference (integers) ranks the same way
    cm_ref = np.array([[10, 0, 0], [0, 10, 0], [0, 0, 10]])
    cm_new = np.array([[7, 3, 0], [2, 8, 0], [0, 5, 5]])
    assert [(f.src, f.dst, f.delta) for f in top_flows(cm_new - cm_ref, k=2)] == [(2, 1, 5.0), (0, 1, 3.0)]


def test_top_flows_ties_keep_row_major_order_on_19_classes():
    d = np.full((19, 19), 0.01)
    np.fill_diagonal(d, -0.18)
    d[4] = np.nan                                               # fence absent from the labels
    d[7, 3] = 0.02
    expected = [(7, 3)] + [(i, j) for i in range(19) for j in range(19) if i != j and i != 4 and (i, j) != (7, 3)]
    assert [(f.src, f.dst) for f in top_flows(d, k=1000)] == expected
    assert [(f.src, f.dst) for f in top_flows(-d, k=1000, order="abs")] == expected
    assert str(top_flows(d, k=1)[0]) == "traffic sign\u2192wall +2.0 %"


def test_summary_counts_positive_flips_only_and_absent_rows():
    nan = np.nan
    d = np.array([[-0.2, 0.3, -0.1], [0.1, 0.0, -0.1], [nan, nan, nan]])
    row = summary(d, [])
    assert row == {"classes_present": 2, "mean_diag_change_pp": pytest.approx(-10.0),
                   "mean_flip_pp": pytest.approx(100 * (0.3 + 0.1) / 2)}   # the -0.1 changes are not flips
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # no "Mean of empty slice"
        empty = summary(np.full((3, 3), nan), [])
    assert empty["classes_present"] == 0
    assert math.isnan(empty["mean_diag_change_pp"]) and math.isnan(empty["mean_flip_pp"])
    # a float32 delta gives the float64 result
    d32 = (np.random.default_rng(4).random((19, 19)) - 0.5).astype(np.float32)
    d64 = d32.astype(np.float64)
    row32 = summary(d32, [])
    assert row32["mean_diag_change_pp"] == 100.0 * float(np.mean(np.diag(d64)))
    assert row32["mean_flip_pp"] == 100.0 * float(np.mean(np.clip(d64 - np.diag(np.diag(d64)), 0, None).sum(axis=1)))


# ------------------------------------------------------- semantic distortion with stand-in inference

def _hand_made_confusions():
    """Source reference: 100 correct pixels per class, fence (4) absent. Refined: label i loses i+1 of its
    pixels to class i+1 (mod 19), so D[i, i] = -(i+1) %, D[i, i+1] = +(i+1) %."""
    cm_source = 100 * np.eye(19, dtype=np.int64)
    cm_source[4, 4] = 0
    cm_refined = cm_source.copy()
    expected = np.zeros((19, 19))
    for i in range(19):
        if i != 4:
            cm_refined[i, i] -= i + 1
            cm_refined[i, (i + 1) % 19] += i + 1
            expected[i, i], expected[i, (i + 1) % 19] = -(i + 1) / 100, (i + 1) / 100
    expected[4] = np.nan
    return cm_source, cm_refined, expected


@pytest.fixture()
def stand_in_inference(tiny_prepared, tmp_path, monkeypatch):
    """load_segmenter / segment_confusion replaced by recorders returning hand-made confusions per image
    folder (the real inference is covered end to end below); default_device pretends a GPU."""
    import segmenters.io
    import segmenters.loader
    import translators.metrics.fcn_score as fcn_score

    source = tiny_prepared["source"]
    stems = [s.stem for s in PreparedDataset.load(source).samples("train")]
    folders = {}
    for name in ("refined", "other"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        for stem in stems:
            (folders[name] / f"{stem}.png").touch()
    cm_source, cm_refined, expected = _hand_made_confusions()
    cm_other = cm_refined.copy()
    cm_other[0, 0], cm_other[0, 1] = 80, 20                   # label 0: 20 % road->sidewalk already
    confusions = {folders["refined"]: cm_refined, folders["other"]: cm_other}
    calls = {"load": [], "segment": []}

    def load(path, device="cpu", expect_num_classes=None, expect_arch=None, amp=True):
        calls["load"].append({"path": path, "device": device, "amp": amp})
        return SimpleNamespace(num_classes=19)

    def segment(segmenter, samples, batch_size=1, workers=0):
        folder = Path(samples[0].image).parent
        calls["segment"].append({"folder": folder if folder in confusions else "source",
                                 "stems": [s.stem for s in samples], "batch_size": batch_size, "workers": workers})
        return confusions.get(folder, cm_source).copy()

    monkeypatch.setattr(segmenters.loader, "load_segmenter", load)
    monkeypatch.setattr(fcn_score, "segment_confusion", segment)
    monkeypatch.setattr(segmenters.io, "default_device", lambda: "cuda")
    return SimpleNamespace(source=source, stems=stems, calls=calls, cm_source=cm_source, cm_refined=cm_refined,
                           expected=expected, **folders)


def test_semantic_distortion_defaults_on_hand_made_confusions(stand_in_inference):
    t = stand_in_inference
    row, delta, cm_refined, cm_reference, flows = semantic_distortion("oracle/final.pth", t.source, t.refined)
    np.testing.assert_allclose(delta, t.expected)              # NaN row of the absent class included
    assert np.array_equal(cm_refined, t.cm_refined) and np.array_equal(cm_reference, t.cm_source)
    # defaults: whole train split, raw source as reference, the 10 largest increases, one image per batch,
    # no loader workers, autocast on, the default device
    assert [(f.src, f.dst) for f in flows] == [(i, (i + 1) % 19) for i in range(18, 8, -1)]
    assert str(flows[0]) == "bicycle\u2192road +19.0 %" and flows[-1].delta == pytest.approx(0.10)
    assert t.calls["load"] == [{"path": "oracle/final.pth", "device": "cuda", "amp": True}]
    assert t.calls["segment"] == [{"folder": "source", "stems": t.stems, "batch_size": 1, "workers": 0},
                                  {"folder": t.refined, "stems": t.stems, "batch_size": 1, "workers": 0}]
    assert list(row)[:7] == ["images", "reference", "n_images", "segmenter", "classes_present",
                             "mean_diag_change_pp", "mean_flip_pp"]
    assert (row["images"], row["reference"], row["n_images"], row["segmenter"]) == (
        str(t.refined), "source", 8, "oracle/final.pth")
    present = [i + 1 for i in range(19) if i != 4]
    assert row["classes_present"] == 18
    assert row["mean_diag_change_pp"] == pytest.approx(-np.mean(present))
    assert row["mean_flip_pp"] == pytest.approx(np.mean(present))
    assert row["flow_1"] == "bicycle\u2192road" and row["flow_1_pp"] == pytest.approx(19.0)
    assert row["flow_10"] == "terrain\u2192sky" and "flow_11" not in row


def test_semantic_distortion_reference_images_and_options(stand_in_inference):
    t = stand_in_inference
    row, delta, _, cm_reference, flows = semantic_distortion(
        "seg.pth", t.source, t.refined, reference_images=t.other, split="train", limit=3, top=1, order="abs",
        batch_size=4, workers=2, device="cpu", amp=False)
    # refined vs the other folder: only label 0 differs (0.99/0.01 against 0.80/0.20)
    expected = np.zeros((19, 19))
    expected[0, :2] = 0.19, -0.19
    expected[4] = np.nan
    np.testing.assert_allclose(delta, expected, atol=1e-12)
    assert cm_reference[0, 1] == 20
    assert [(f.src, f.dst, round(f.delta, 6)) for f in flows] == [(0, 1, -0.19)]   # a decrease ranks by size
    assert (row["images"], row["reference"], row["n_images"], row["segmenter"]) == (
        str(t.refined), str(t.other), 3, "seg.pth")
    assert t.calls["load"] == [{"path": "seg.pth", "device": "cpu", "amp": False}]
    chosen = t.calls["segment"][0]["stems"]
    assert len(chosen) == 3 and chosen[0] == t.stems[0] and chosen[-1] == t.stems[-1]
    assert t.calls["segment"] == [{"folder": t.other, "stems": chosen, "batch_size": 4, "workers": 2},
                                  {"folder": t.refined, "stems": chosen, "batch_size": 4, "workers": 2}]
    with pytest.raises(ValueError, match="unknown order 'INCREASE'"):
        semantic_distortion("seg.pth", t.source, t.refined, order="INCREASE")


def test_semantic_distortion_reference_confusion_via_cli(stand_in_inference, tmp_path, caplog):
    t = stand_in_inference
    ref = tmp_path / "raw.confusion.npy"
    np.save(ref, t.cm_source)
    out = tmp_path / "res" / "d.csv"
    assert cli(["distortion", "--segmenter", "seg.pth", "--source", str(t.source), "--images", str(t.refined),
                "--reference-confusion", str(ref), "--out", str(out), "--heatmap", str(tmp_path / "res" / "d.png"),
                "--top", "3", "--translator", "t1"]) == 0
    assert [c["folder"] for c in t.calls["segment"]] == [t.refined]     # the reference is not segmented again
    np.testing.assert_allclose(np.load(tmp_path / "res" / "d.distortion.npy"), t.expected)
    assert np.array_equal(np.load(tmp_path / "res" / "d.reference_confusion.npy"), t.cm_source)
    assert np.array_equal(np.load(tmp_path / "res" / "d.confusion.npy"), t.cm_refined)
    r = pd.read_csv(out).iloc[0]
    assert (r["translator"], r["reference"], r["images"], r["n_images"]) == ("t1", str(ref), str(t.refined), 8)
    assert [r[f"flow_{k}"] for k in (1, 2, 3)] == ["bicycle\u2192road", "motorcycle\u2192bicycle",
                                                     "train\u2192motorcycle"]
    assert [r[f"flow_{k}_pp"] for k in (1, 2, 3)] == pytest.approx([19.0, 18.0, 17.0]) and "flow_4" not in r
    # a reference confusion of another class count names the file and the segmenter
    bad = tmp_path / "four.npy"
    np.save(bad, np.eye(4))
    message = (f"{bad}: confusion of shape (4, 4), the segmenter seg.pth has 19 classes; "
               "pass the .confusion.npy of the same segmenter")
    with pytest.raises(ValueError, match=re.escape(message)):
        semantic_distortion("seg.pth", t.source, t.refined, reference_confusion=bad)
    assert cli(["distortion", "--segmenter", "seg.pth", "--source", str(t.source), "--images", str(t.refined),
                "--reference-confusion", str(bad), "--out", str(tmp_path / "x.csv"),
                "--heatmap", str(tmp_path / "x.png")]) == 2
    assert message in caplog.text and not (tmp_path / "x.csv").exists()


# ---------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory) -> Path:
    """A final.pth of a tiny DeepLab-V2 with a random but non-trivial head."""
    from segmenters.checkpoint import build_segmentor, save_final
    from segmenters.configs import load_config

    cfg = load_config("deeplabv2", "tiny")
    torch.manual_seed(0)
    model = build_segmentor(cfg.model)
    model.init_weights()
    for p in model.decode_head.parameters():
        torch.nn.init.normal_(p, std=0.05)
    meta = {"arch": "deeplabv2", "preset": "tiny", "num_classes": 19, "uda": "oracle", "iter": 0,
            "test_scale": list(cfg.test_scale), "model_cfg": cfg.model.to_dict()}
    return save_final(model, meta, tmp_path_factory.mktemp("oracle") / "final.pth")


def _refined_copy(source: Path, out: Path, transform) -> Path:
    ds = PreparedDataset.load(source)
    for s in ds.samples("train"):
        img = np.asarray(Image.open(s.image).convert("RGB"))
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(transform(img)).save(out / f"{s.stem}.png")
    return out


def _direct_confusion(segmenter_path: Path, samples) -> np.ndarray:
    """The protocol written out independently: resize to test_scale, logits to label size, argmax, bincount."""
    from segmenters.loader import load_segmenter

    seg = load_segmenter(segmenter_path)
    w, h = seg.test_scale
    images = [cv2.resize(np.asarray(Image.open(s.image).convert("RGB")), (w, h), interpolation=cv2.INTER_LINEAR)
              for s in samples]
    with torch.no_grad():
        logits = seg.predict_logits(torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()).float())
    cm = np.zeros((19, 19), dtype=np.int64)
    for s, lg in zip(samples, logits):
        label = np.asarray(Image.open(s.label)).astype(np.int64)
        pred = F.interpolate(lg[None], size=label.shape, mode="bilinear", align_corners=False).argmax(1)[0].numpy()
        keep = label != 255
        cm += np.bincount(19 * label[keep] + pred[keep], minlength=361).reshape(19, 19)
    return cm


def test_fcn_score_and_distortion_end_to_end(tiny_prepared, tiny_segmenter, tmp_path, capsys):
    source = tiny_prepared["source"]
    same = _refined_copy(source, tmp_path / "identity", lambda x: x)
    inverted = _refined_copy(source, tmp_path / "inverted", lambda x: 255 - x)
    common = ["--segmenter", str(tiny_segmenter), "--source", str(source), "--limit", "4", "--batch-size", "4"]

    raw_csv = tmp_path / "res" / "raw.csv"
    assert cli(["fcn-score", *common, "--out", str(raw_csv), "--translator", "none"]) == 0
    row = pd.read_csv(raw_csv).iloc[0]
    cm_raw = np.load(tmp_path / "res" / "raw.confusion.npy")
    samples = source_samples(source, "train", limit=4)
    assert [s.stem for s in samples] == ["00000", "00002", "00005", "00007"]
    assert np.array_equal(cm_raw, _direct_confusion(tiny_segmenter, samples))
    assert cm_raw.sum() == sum(int((np.asarray(Image.open(s.label)) != 255).sum()) for s in samples)
    assert row["translator"] == "none" and row["n_images"] == 4 and row["images"] == "source"
    assert row["pixel_acc"] == pytest.approx(100 * np.trace(cm_raw) / cm_raw.sum())
    assert {"mean_class_acc", "mIoU", "IoU_sky", "segmenter"} <= set(row.index)
    assert "pixel_acc" in capsys.readouterr().out

    # the inverted set against the default reference (raw source, segmented again by the same model):
    # delta = rownorm(inverted) - rownorm(raw); rows sum to zero; heat map written
    out = tmp_path / "dist" / "inverted.csv"
    heat = tmp_path / "dist" / "inverted.png"
    assert cli(["distortion", *common, "--images", str(inverted), "--out", str(out), "--heatmap", str(heat),
                "--top", "3", "--translator", "inv"]) == 0
    assert np.array_equal(np.load(tmp_path / "dist" / "inverted.reference_confusion.npy"), cm_raw)
    cm_inv = np.load(tmp_path / "dist" / "inverted.confusion.npy")
    assert not np.array_equal(cm_inv, cm_raw) and cm_inv.sum() == cm_raw.sum()
    d = np.load(tmp_path / "dist" / "inverted.distortion.npy")
    present = cm_raw.sum(axis=1) > 0
    expected = (cm_inv[present] / cm_inv[present].sum(1, keepdims=True)
                - cm_raw[present] / cm_raw[present].sum(1, keepdims=True))
    assert np.allclose(d[present], expected) and np.allclose(d[present].sum(axis=1), 0)
    assert np.isnan(d[~present]).all()
    r = pd.read_csv(out).iloc[0]
    off = np.where(np.eye(19, dtype=bool), np.nan, d)
    assert r["flow_1_pp"] == pytest.approx(100 * np.nanmax(off)) and r["translator"] == "inv"
    assert r["reference"] == "source" and Image.open(heat).size[0] > 300
    printed = capsys.readouterr().out
    assert "\u2192" in printed and "mean_flip_pp" in printed

    # an unchanged "refined" set, with the raw fcn-score confusion reused as reference: zero distortion
    out = tmp_path / "dist" / "identity.csv"
    assert cli(["distortion", *common, "--images", str(same), "--reference-confusion",
                str(tmp_path / "res" / "raw.confusion.npy"), "--out", str(out),
                "--heatmap", str(tmp_path / "dist" / "identity.png")]) == 0
    d0 = np.load(tmp_path / "dist" / "identity.distortion.npy")
    assert np.all(d0[present] == 0) and np.isnan(d0[~present]).all()
    r0 = pd.read_csv(out).iloc[0]
    assert r0["mean_flip_pp"] == 0 and r0["mean_diag_change_pp"] == 0 and "flow_1" not in r0.index


def test_missing_refined_images_are_a_clear_error(tiny_prepared, tiny_segmenter, tmp_path, caplog):
    source = tiny_prepared["source"]
    partial = _refined_copy(source, tmp_path / "partial", lambda x: x)
    (partial / "00003.png").unlink()
    with pytest.raises(PreparedDataError, match=r"1 of 8 images missing .*00003"):
        source_samples(source, "train", partial)
    out = tmp_path / "x.csv"
    assert cli(["fcn-score", "--segmenter", str(tiny_segmenter), "--source", str(source), "--images",
                str(partial), "--out", str(out)]) == 2
    assert not out.exists() and "missing" in caplog.text
    assert cli(["fcn-score", "--segmenter", str(tiny_segmenter), "--source", str(source), "--images",
                str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in caplog.text
    # a subset of the split only needs its own images
    assert [s.stem for s in source_samples(source, "train", partial, limit=2)] == ["00000", "00007"]


def test_not_a_final_pth_is_a_clear_error(tiny_prepared, tmp_path, caplog):
    bad = tmp_path / "bad.pth"
    torch.save({"weights": torch.zeros(1)}, bad)
    assert cli(["fcn-score", "--segmenter", str(bad), "--source", str(tiny_prepared["source"]),
                "--out", str(tmp_path / "x.csv")]) == 2
    assert "not a segmenter final.pth" in caplog.text
