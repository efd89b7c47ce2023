"""FCN-score and semantic distortion: hand-computed confusions and an end-to-end run on ``tiny_prepared``."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from domains.prepared import PreparedDataError, PreparedDataset
from translators.metrics.__main__ import main as cli
from translators.metrics.distortion import distortion_matrix, plot_heatmap, row_normalise, summary, top_flows
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
