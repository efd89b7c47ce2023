"""``python -m segmenters evaluate`` end to end on a tiny DeepLab-V2 and the ``tiny_prepared`` target."""
from __future__ import annotations

import json
import logging
import math
import re
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
from segmenters.evaluate import build_parser, evaluate_samples, labelled_samples, run, write_result
from segmenters.evaluate import main as evaluate_main
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


def test_evaluate_errors(tiny_prepared, tiny_checkpoint, tmp_path, capsys):
    # a split without labels: copy the prepared folder and mark val unlabelled
    target = tmp_path / "unlabelled"
    shutil.copytree(tiny_prepared["target"], target)
    meta = json.loads((target / "meta.json").read_text())
    meta["splits"]["val"]["labelled"] = False
    (target / "meta.json").write_text(json.dumps(meta))
    argv = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--target", str(target), "--split", "val",
            "--out", str(tmp_path / "x.csv")]
    with pytest.raises(PreparedDataError, match=r"split 'val' of the prepared dataset .*unlabelled has no labels"):
        cli([*argv, "--debug"])                       # --debug: the exception itself
    assert cli(argv) == 2                             # else one message, exit 2 (docs/errors.md)
    assert re.search(r"split 'val' of the prepared dataset .*unlabelled has no labels", capsys.readouterr().err)
    # not a final.pth: the loader's error names the file
    bad = tmp_path / "bad.pth"
    torch.save({"weights": torch.zeros(1)}, bad)
    argv = ["evaluate", "--checkpoint", str(bad), "--target", str(tiny_prepared["target"]), "--split", "val",
            "--out", str(tmp_path / "x.csv")]
    with pytest.raises(ValueError, match="bad.pth"):
        cli([*argv, "--debug"])
    assert cli(argv) == 2 and "bad.pth: not a segmenter final.pth" in capsys.readouterr().err
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


# --------------------------------------------------------------------------- errors, options, defaults
def _edit_meta(target: Path, edit) -> None:
    meta = json.loads((target / "meta.json").read_text())
    edit(meta)
    (target / "meta.json").write_text(json.dumps(meta))


def test_labelled_samples_errors_name_the_fix(tiny_prepared, tmp_path):
    target = tmp_path / "t"
    shutil.copytree(tiny_prepared["target"], target)
    shutil.copy(target / "train.txt", target / "extra.txt")
    (target / "empty.txt").write_text("")

    def add_splits(meta):
        meta["splits"]["extra"] = dict(meta["splits"]["train"])
        meta["splits"]["empty"] = dict(meta["splits"]["train"], count=0)
        meta["splits"]["val"]["labelled"] = False
    _edit_meta(target, add_splits)
    with pytest.raises(PreparedDataError) as err:
        labelled_samples(target, "val")
    msg = str(err.value)
    assert f"({target / 'meta.json'}: splits.val.labelled is false)" in msg
    assert msg.endswith("evaluate needs a labelled split, e.g. train, extra, empty")
    with pytest.raises(PreparedDataError, match=re.escape(f"split 'empty' of {target} is empty ({target / 'empty.txt'})")):
        labelled_samples(target, "empty")

    def unlabel_all(meta):
        for info in meta["splits"].values():
            info["labelled"] = False
    _edit_meta(target, unlabel_all)
    with pytest.raises(PreparedDataError, match=r"needs a labelled split, e.g\. none available$"):
        labelled_samples(target, "train")


@pytest.fixture(scope="module")
def checkpoint_21(tmp_path_factory) -> Path:
    """A tiny DeepLab-V2 ``final.pth`` with 21 output classes (not the 19 Cityscapes classes)."""
    from segmenters.checkpoint import build_segmentor, save_final
    from segmenters.configs import load_config

    cfg = load_config("deeplabv2", "tiny")
    model_cfg = cfg.model.to_dict()
    model_cfg["decode_head"]["num_classes"] = 21
    torch.manual_seed(0)
    model = build_segmentor(model_cfg)
    meta = {"arch": "deeplabv2", "preset": "tiny", "num_classes": 21, "uda": "source_only", "iter": 0,
            "test_scale": list(cfg.test_scale), "model_cfg": model_cfg}
    return save_final(model, meta, tmp_path_factory.mktemp("ckpt21") / "final.pth")


def test_evaluate_other_class_count(tiny_prepared, checkpoint_21, tmp_path, monkeypatch):
    """A 21-class model: a 21x21 matrix, columns class_0..class_20, and --labelids refused by name."""
    from segmenters.loader import load_segmenter

    target = tiny_prepared["target"]
    samples = labelled_samples(target, "val")
    cm = evaluate_samples(load_segmenter(checkpoint_21, device="cpu"), samples)
    assert cm.shape == (21, 21) and cm.sum() == sum(int((lab != 255).sum()) for lab in _labels(target, "val").values())
    out = tmp_path / "a" / "b" / "r.csv"  # missing parents created
    row = write_result(out, cm, 19, None, "ck")  # default convention: nan
    names = [f"class_{c}" for c in range(21)]
    assert list(pd.read_csv(out).columns) == [*names, "mIoU", "aAcc", "mAcc", "round", "checkpoint"]
    tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    for c, name in enumerate(names):
        if union[c] == 0:
            assert math.isnan(row[name]), name
        else:
            assert row[name] == pytest.approx(100 * tp[c] / union[c]), name
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "b" / "r.confusion.npy"), cm)

    seen = _spy_loader(monkeypatch)
    with pytest.raises(SystemExit, match=re.escape(f"--labelids needs a 19-class model, {checkpoint_21} has 21")):
        evaluate_main(["--checkpoint", str(checkpoint_21), "--target", str(target), "--out", str(tmp_path / "x.csv"),
                       "--save-predictions", str(tmp_path / "p"), "--labelids", "--device", "cpu"])
    assert seen[0].amp is True and seen[0].device.type == "cpu"  # autocast unless --no-amp


def _spy_loader(monkeypatch) -> list:
    """Record the segmenters the evaluate CLI loads (the real loader runs)."""
    import segmenters.loader as loader

    seen, real = [], loader.load_segmenter

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]
    monkeypatch.setattr(loader, "load_segmenter", spy)
    return seen


def test_evaluate_eps_convention_and_options(tiny_prepared, probe_segmenter, tmp_path, monkeypatch, capsys):
    target = tiny_prepared["target"]
    base = ["--checkpoint", str(probe_segmenter["path"]), "--target", str(target), "--out", str(tmp_path / "r.csv")]
    for bad in (["--class-set", "17"], ["--iou-convention", "foo"]):
        with pytest.raises(SystemExit) as err:
            build_parser().parse_args(base + bad)
        assert err.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert "--save-predictions DIR" in build_parser().format_help()
    with pytest.raises(SystemExit, match=r"^--labelids needs --save-predictions DIR$"):
        evaluate_main(base + ["--labelids"])

    seen = _spy_loader(monkeypatch)
    out = tmp_path / "x" / "y" / "eps.csv"
    row = run(build_parser().parse_args(base[:-1] + [str(out), "--iou-convention", "eps", "--class-set", "13",
                                                     "--device", "cpu:0", "--no-amp"]))
    assert seen[0].amp is False and seen[0].device == torch.device("cpu", 0)  # exactly the device asked for
    cm = np.load(out.with_name("eps.confusion.npy"))
    tp, union = np.diag(cm).astype(float), (cm.sum(0) + cm.sum(1) - np.diag(cm)).astype(float)
    assert (union == 0).sum() >= 10                              # absent classes: 0 under eps, not NaN
    want = np.where(union > 0, tp / np.maximum(union, 1), 0.0)
    table = pd.read_csv(out)
    assert list(table.columns) == [*CLASSES, "mIoU", "mIoU13", "aAcc", "mAcc", "round", "checkpoint"]
    for c, name in enumerate(CLASSES):
        assert table.iloc[0][name] == pytest.approx(100 * want[c], abs=1e-6), name
    assert row["mIoU"] == pytest.approx(100 * want.mean(), abs=1e-6)
    for split in ("nan", "eps"):  # both conventions are valid choices
        assert build_parser().parse_args(base + ["--iou-convention", split]).iou_convention == split


def test_evaluate_samples_default_writes_trainids(tiny_prepared, probe_segmenter, tmp_path):
    from segmenters.loader import load_segmenter

    target = tiny_prepared["target"]
    expected = {s: p for s, (p, _) in _predictions(probe_segmenter["model"], target, "val",
                                                    probe_segmenter["test_scale"]).items()}
    evaluate_samples(load_segmenter(probe_segmenter["path"], device="cpu"), labelled_samples(target, "val"),
                     save_dir=tmp_path / "p")
    for stem, p in expected.items():
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "p" / f"{stem}.png")), p, err_msg=stem)


def test_evaluate_main_logs_info_lines(tiny_prepared, tmp_path, monkeypatch, capsys):
    """The CLI configures logging: INFO lines as '<LEVEL> <logger>: <message>' on stderr."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])   # pytest's capture handlers would make basicConfig a no-op
    monkeypatch.setattr(root, "level", logging.WARNING)
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", "c.pth", "--target", str(tiny_prepared["target"]), "--out",
                       str(tmp_path / "r.csv"), "--labelids"])
    capsys.readouterr()
    logging.getLogger("segmenters.evaluate").info("probe message")
    assert capsys.readouterr().err == "INFO segmenters.evaluate: probe message\n"
