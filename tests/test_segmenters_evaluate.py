"""``python -m segmenters evaluate`` end to end on a tiny DeepLab-V2 and the ``tiny_prepared`` target."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from domains.labels import CLASSES, TRAINID_TO_CITYSCAPES_ID, lookup_table
from domains.prepared import PreparedDataError
from segmenters.__main__ import main as cli
from segmenters.metrics import confusion_matrix, per_class_iou


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A ``final.pth`` of a randomly initialised tiny DeepLab-V2 (seg-core's config and writer)."""
    from segmenters.checkpoint import build_segmentor, save_final
    from segmenters.configs import load_config

    cfg = load_config("deeplabv2", "tiny")
    torch.manual_seed(0)
    model = build_segmentor(cfg.model)
    meta = {"arch": "deeplabv2", "preset": "tiny", "num_classes": 19, "uda": "source_only", "iter": 0,
            "test_scale": list(cfg.test_scale), "model_cfg": cfg.model.to_dict()}
    return save_final(model, meta, tmp_path_factory.mktemp("ckpt") / "final.pth")


def _labels(target: Path, split: str) -> dict[str, np.ndarray]:
    return {p.name[: -len("_labelTrainIds.png")]: np.array(Image.open(p))
            for p in sorted((target / "labels" / split).glob("*_labelTrainIds.png"))}


def test_evaluate_cli_writes_row_confusion_and_predictions(tiny_prepared, tiny_checkpoint, tmp_path):
    target = tiny_prepared["target"]
    out = tmp_path / "results" / "r1.csv"
    preds = tmp_path / "preds"
    assert cli(["evaluate", "--checkpoint", str(tiny_checkpoint), "--target", str(target), "--split", "val",
                "--out", str(out), "--round", "1", "--class-set", "16", "--save-predictions", str(preds),
                "--batch-size", "2"]) == 0

    table = pd.read_csv(out)
    assert len(table) == 1
    assert list(table.columns) == [*CLASSES, "mIoU", "mIoU16", "mIoU13", "aAcc", "mAcc", "round", "checkpoint"]
    row = table.iloc[0]
    assert row["round"] == 1 and row["checkpoint"] == str(tiny_checkpoint)
    cm = np.load(out.with_name("r1.confusion.npy"))
    assert cm.shape == (19, 19) and cm.dtype == np.int64
    assert not list(out.parent.glob(".*"))                        # no temporary files left

    # the saved predictions (at label size) reproduce the confusion matrix and the row
    labels = _labels(target, "val")
    assert cm.sum() == sum(int((lab != 255).sum()) for lab in labels.values())
    recomputed = np.zeros_like(cm)
    for stem, lab in labels.items():
        pred = np.array(Image.open(preds / f"{stem}.png"))
        assert pred.shape == lab.shape and pred.dtype == np.uint8 and pred.max() < 19
        recomputed += confusion_matrix(pred, lab)
    np.testing.assert_array_equal(recomputed, cm)
    iou = per_class_iou(cm)
    for c, name in enumerate(CLASSES):
        assert (math.isnan(row[name]) and math.isnan(iou[c])) or row[name] == pytest.approx(100 * iou[c])
    assert row["aAcc"] == pytest.approx(100 * np.trace(cm) / cm.sum())


def test_evaluate_matches_cityscapesscripts_on_labelids(tiny_prepared, tiny_checkpoint, tmp_path, monkeypatch):
    """Predictions written with --labelids, scored by the official evaluator, give the CSV's IoUs."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    target = tiny_prepared["target"]
    out, preds = tmp_path / "r0.csv", tmp_path / "labelids"
    cli(["evaluate", "--checkpoint", str(tiny_checkpoint), "--target", str(target), "--split", "val",
         "--out", str(out), "--save-predictions", str(preds), "--labelids", "--workers", "1"])
    id_lut = lookup_table(TRAINID_TO_CITYSCAPES_ID, fill=0)     # GT 255 -> id 0 'unlabeled' (ignored)
    pred_files, gt_files = [], []
    for stem, lab in _labels(target, "val").items():
        gt = tmp_path / "gt" / f"{stem}_gtFine_labelIds.png"
        gt.parent.mkdir(exist_ok=True)
        Image.fromarray(id_lut[lab]).save(gt)
        pred_files.append(str(preds / f"{stem}.png"))
        gt_files.append(str(gt))
    for key, value in {"evalInstLevelScore": False, "quiet": True, "JSONOutput": False,
                       "evalPixelAccuracy": False}.items():
        monkeypatch.setattr(cs_eval.args, key, value, raising=False)
    official = cs_eval.evaluateImgLists(pred_files, gt_files, cs_eval.args)
    row = pd.read_csv(out).iloc[0]
    for name in CLASSES:
        theirs = official["classScores"][name]
        if math.isnan(theirs):
            assert math.isnan(row[name]), name
        else:
            assert row[name] == pytest.approx(100 * theirs, abs=1e-4), name
    assert row["mIoU"] == pytest.approx(100 * official["averageScoreClasses"], abs=1e-4)


def test_evaluate_errors(tiny_prepared, tiny_checkpoint, tmp_path):
    # a split without labels: copy the prepared folder and mark val unlabelled
    target = tmp_path / "unlabelled"
    shutil.copytree(tiny_prepared["target"], target)
    meta = json.loads((target / "meta.json").read_text())
    meta["splits"]["val"]["labelled"] = False
    (target / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PreparedDataError, match=r"split 'val' of the prepared dataset .*unlabelled has no labels"):
        cli(["evaluate", "--checkpoint", str(tiny_checkpoint), "--target", str(target), "--split", "val",
             "--out", str(tmp_path / "x.csv")])
    # not a final.pth: the loader's error names the file
    bad = tmp_path / "bad.pth"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        cli(["evaluate", "--checkpoint", str(bad), "--target", str(tiny_prepared["target"]), "--split", "val",
             "--out", str(tmp_path / "x.csv")])
    assert not (tmp_path / "x.csv").exists()


# --------------------------------------------------------------------------- scores of a known model
def _predictions(model, target: Path, split: str, scale_wh) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The protocol written out with the in-memory model (no segmenters.io / loader / evaluate code):
    RGB image -> bilinear resize to ``scale_wh`` (None: no resize) -> normalise -> logits -> bilinear
    resize of the LOGITS to the label size -> argmax. Returns stem -> (that prediction, the argmax
    taken at the inference size and resized nearest, a wrong order the test must tell apart)."""
    import cv2
    import torch.nn.functional as F

    meta = json.loads((target / "meta.json").read_text())
    image_dir = Path(meta["splits"][split]["image_dir"])
    pre = model.data_preprocessor
    out = {}
    for stem, label in _labels(target, split).items():
        img = np.array(Image.open(image_dir / f"{stem}.png").convert("RGB"))
        if scale_wh is not None:
            img = cv2.resize(img, tuple(scale_wh), interpolation=cv2.INTER_LINEAR)
        x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() - pre.mean.view(1, 3, 1, 1)) / pre.std.view(1, 3, 1, 1)
        with torch.no_grad():
            logits = model.encode_decode(x, [dict(img_shape=x.shape[-2:], ori_shape=x.shape[-2:])])
        assert logits.shape == (1, 19, *x.shape[-2:])
        up = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)
        argmax_first = F.interpolate(logits.argmax(1, keepdim=True).float(), size=label.shape, mode="nearest")
        out[stem] = (up.argmax(1)[0].numpy(), argmax_first[0, 0].long().numpy())
    return out


def _confusion(preds: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> np.ndarray:
    cm = np.zeros((19, 19), np.int64)
    for stem, lab in labels.items():
        valid = lab != 255
        cm += np.bincount(19 * lab[valid].astype(np.int64) + preds[stem][valid], minlength=19 * 19).reshape(19, 19)
    return cm


def test_evaluate_scores_a_known_model_exactly(tiny_prepared, probe_segmenter, tmp_path):
    """``segmenters evaluate`` of the probe model = a confusion matrix computed here from the model's
    own logits at the checkpoint's test scale, resized to the label size before the argmax."""
    target = tiny_prepared["target"]
    model, scale = probe_segmenter["model"], probe_segmenter["test_scale"]
    labels = _labels(target, "val")
    both = _predictions(model, target, "val", scale)
    expected = {s: p for s, (p, _) in both.items()}
    cm = _confusion(expected, labels)

    # the data tells the wrong protocols apart: argmax before the resize, no test-scale resize and a
    # (h, w)-swapped test scale each give another matrix, and the score is far from 0 and 100
    assert not np.array_equal(_confusion({s: a for s, (_, a) in both.items()}, labels), cm)
    for wrong_scale in (None, scale[::-1]):
        wrong = {s: p for s, (p, _) in _predictions(model, target, "val", wrong_scale).items()}
        assert not np.array_equal(_confusion(wrong, labels), cm), wrong_scale
    tp, gt, pred = np.diag(cm).astype(float), cm.sum(1).astype(float), cm.sum(0).astype(float)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(gt > 0, tp / gt, np.nan)
    assert 30.0 < 100 * np.nanmean(iou) < 95.0
    assert sum(0.0 < v < 1.0 for v in iou[~np.isnan(iou)]) >= 3

    out, preds = tmp_path / "r2.csv", tmp_path / "preds"
    assert cli(["evaluate", "--checkpoint", str(probe_segmenter["path"]), "--target", str(target), "--split", "val",
                "--out", str(out), "--round", "2", "--save-predictions", str(preds), "--batch-size", "2",
                "--device", "cpu"]) == 0
    np.testing.assert_array_equal(np.load(out.with_name("r2.confusion.npy")), cm)
    for stem, p in expected.items():
        np.testing.assert_array_equal(np.array(Image.open(preds / f"{stem}.png")), p, err_msg=stem)
    row = pd.read_csv(out).iloc[0]
    for c, name in enumerate(CLASSES):
        if np.isnan(iou[c]):
            assert math.isnan(row[name]), name
        else:
            assert row[name] == pytest.approx(100 * iou[c], abs=1e-9), name
    assert row["mIoU"] == pytest.approx(100 * np.nanmean(iou), abs=1e-9)
    assert row["aAcc"] == pytest.approx(100 * tp.sum() / cm.sum(), abs=1e-9)
    assert row["mAcc"] == pytest.approx(100 * np.nanmean(recall), abs=1e-9)
    assert row["round"] == 2
