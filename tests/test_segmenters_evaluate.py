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
