"""Metrics: hand-computed cases, conventions, and agreement with cityscapesscripts' official evaluator."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from PIL import Image

from domains.labels import (CITYSCAPES_ID_TO_TRAINID, CLASSES, SYNTHIA_13, SYNTHIA_16, TRAINID_TO_CITYSCAPES_ID,
                            lookup_table)
from segmenters.metrics import (class_accuracy, confusion_matrix, mean_class_accuracy, miou, per_class_iou,
                                pixel_accuracy, scores_row)

GT = np.array([[0, 0, 1], [1, 255, 2]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)


def test_confusion_matrix_hand_computed_and_ignore():
    cm = confusion_matrix(PRED, GT, num_classes=4)
    # the ignored pixel (GT 255, predicted 2) is not counted anywhere
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64 and cm.sum() == 5
    # dataset-level accumulation = confusion of the concatenated images
    both = confusion_matrix(np.concatenate([PRED, PRED[::-1]]), np.concatenate([GT, GT[::-1]]), num_classes=4)
    np.testing.assert_array_equal(both, cm + confusion_matrix(PRED[::-1], GT[::-1], num_classes=4))


def test_iou_nan_convention_and_means():
    cm = confusion_matrix(PRED, GT, num_classes=4)
    iou = per_class_iou(cm)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3])  # absent from GT and never predicted
    assert miou(iou) == pytest.approx(1 / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)
    assert mean_class_accuracy(cm) == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_iou_eps_convention_divides_by_all_classes():
    cm = confusion_matrix(PRED, GT, num_classes=4)
    iou = per_class_iou(cm, convention="eps")
    assert not np.isnan(iou).any() and iou[3] == 0.0
    assert miou(iou) == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="convention"):
        per_class_iou(cm, convention="bogus")


def test_predicted_but_absent_class_counts_as_zero():
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 0], [0, 3]], np.uint8)
    iou = per_class_iou(confusion_matrix(pred, gt, num_classes=4))
    assert iou[3] == 0.0 and math.isnan(iou[1]) and iou[0] == pytest.approx(3 / 4)
    assert miou(iou) == pytest.approx(3 / 8)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED, GT[:, :2])
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.full_like(GT, 7), GT, num_classes=4)
    # out-of-range predictions on ignored pixels are fine (never counted)
    pred = PRED.copy()
    pred[1, 1] = 200
    np.testing.assert_array_equal(confusion_matrix(pred, GT, 4), confusion_matrix(PRED, GT, 4))


def test_synthia_subsets_and_scores_row():
    iou = np.full(19, np.nan)
    iou[list(SYNTHIA_13)] = np.linspace(0.1, 0.9, len(SYNTHIA_13))
    iou[3], iou[4], iou[5] = 0.2, 0.4, 0.3  # wall, fence, pole: in 16, not in 13
    iou[9] = 1.0                       # terrain: not in 16 nor 13
    assert miou(iou, 16) == pytest.approx(np.mean(iou[list(SYNTHIA_16)]))
    assert miou(iou, 13) == pytest.approx(np.mean(iou[list(SYNTHIA_13)]))
    assert miou(iou) == pytest.approx(np.nanmean(iou))
    iou[5] = np.nan                    # pole (in 16) missing: dropped from the 16-class mean
    assert miou(iou, 16) == pytest.approx(np.mean(iou[[c for c in SYNTHIA_16 if c != 5]]))
    with pytest.raises(ValueError, match="class set"):
        miou(iou, 7)

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 19, (40, 50)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 19, gt.shape)).astype(np.uint8)
    cm = confusion_matrix(pred, gt)
    row = scores_row(cm, class_set=16)
    assert list(row)[:19] == list(CLASSES)
    assert list(row)[19:] == ["mIoU", "mIoU16", "mIoU13", "aAcc", "mAcc"]
    full = per_class_iou(cm)
    assert row["mIoU"] == pytest.approx(100 * np.nanmean(full))
    assert row["mIoU16"] == pytest.approx(100 * np.mean(full[list(SYNTHIA_16)]))
    assert row["car"] == pytest.approx(100 * full[13])
    assert row["aAcc"] == pytest.approx(100 * np.mean(pred == gt))
    assert list(scores_row(cm))[19:] == ["mIoU", "aAcc", "mAcc"]
    assert list(scores_row(cm, class_set=13))[19:] == ["mIoU", "mIoU13", "aAcc", "mAcc"]


def _fake_cityscapes_val(rng: np.random.Generator, n: int, h: int, w: int):
    """GT label-id maps (eval and ignored ids, blocky) and trainId predictions (GT with structured errors)."""
    ignored_ids = [i for i in range(34) if i not in CITYSCAPES_ID_TO_TRAINID]
    # a vocabulary that leaves some classes out of GT entirely (train, motorcycle) to exercise NaN / zero IoU
    gt_vocab = [i for i in CITYSCAPES_ID_TO_TRAINID if i not in (31, 32)] + ignored_ids
    gts, preds = [], []
    for _ in range(n):
        blocks = rng.choice(gt_vocab, size=(h // 8, w // 8))
        gt_ids = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
        train = lookup_table(CITYSCAPES_ID_TO_TRAINID)[gt_ids]
        pred = np.where(train == 255, rng.integers(0, 19, train.shape), train)       # predictions on ignored GT
        wrong = np.kron(rng.random((h // 4, w // 4)) < 0.35, np.ones((4, 4), bool))  # blocky errors
        # errors never produce 'train' (16), so it is absent from GT and predictions -> NaN
        pred = np.where(wrong, rng.choice([c for c in range(19) if c != 16], size=train.shape), pred).astype(np.uint8)
        gts.append(gt_ids)
        preds.append(pred)
    return gts, preds


def test_miou_equals_cityscapesscripts(tmp_path, monkeypatch):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    rng = np.random.default_rng(3)
    gts, preds = _fake_cityscapes_val(rng, n=3, h=64, w=128)
    id_lut = lookup_table(TRAINID_TO_CITYSCAPES_ID, fill=0)
    gt_lut = lookup_table(CITYSCAPES_ID_TO_TRAINID)
    pred_files, gt_files = [], []
    cm = np.zeros((19, 19), np.int64)
    for i, (gt_ids, pred) in enumerate(zip(gts, preds)):
        gt_file = tmp_path / "gtFine" / "val" / "city" / f"city_000000_{i:06d}_gtFine_labelIds.png"
        pred_file = tmp_path / "results" / f"city_000000_{i:06d}_pred.png"
        gt_file.parent.mkdir(parents=True, exist_ok=True)
        pred_file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt_ids).save(gt_file)
        Image.fromarray(id_lut[pred]).save(pred_file)   # our trainIds -> label ids for the evaluator
        gt_files.append(str(gt_file))
        pred_files.append(str(pred_file))
        cm += confusion_matrix(pred, gt_lut[gt_ids])

    export = tmp_path / "export" / "result.json"
    for key, value in {"evalInstLevelScore": False, "quiet": True, "JSONOutput": True,
                       "exportFile": str(export), "evalPixelAccuracy": False}.items():
        monkeypatch.setattr(cs_eval.args, key, value, raising=False)
    result = cs_eval.evaluateImgLists(pred_files, gt_files, cs_eval.args)
    from_json = json.loads(export.read_text())

    iou = per_class_iou(cm)
    assert math.isnan(iou[16]) and iou[17] == 0.0   # the NaN and zero cases are exercised
    for scores in (result, from_json):
        for trainid, name in enumerate(CLASSES):
            theirs = scores["classScores"][name]
            if math.isnan(iou[trainid]):
                assert theirs is None or math.isnan(theirs), name
            else:
                assert theirs == pytest.approx(iou[trainid], abs=1e-6), name
        assert scores["averageScoreClasses"] == pytest.approx(miou(iou), abs=1e-6)
    assert scores_row(cm)["mIoU"] == pytest.approx(100 * result["averageScoreClasses"], abs=1e-4)


# ------------------------------------------------------------------------- edge cases and conventions

def test_confusion_matrix_drops_every_out_of_range_gt_not_only_ignore_index():
    gt = np.array([[0, 4, 7], [255, 3, 1]])       # 4 (== num_classes) and 7 are not classes of a 4-class matrix
    pred = np.array([[0, 9, 200], [5, 3, 2]])     # predictions on dropped pixels never count or raise
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = expected[3, 3] = expected[1, 2] = 1
    np.testing.assert_array_equal(confusion_matrix(pred, gt, num_classes=4), expected)
    # an in-range ignore index drops that class's GT pixels instead
    expected[3, 3] = 0
    np.testing.assert_array_equal(confusion_matrix(pred, gt, num_classes=4, ignore_index=3), expected)


def test_confusion_matrix_errors_name_the_bad_value():
    gt = np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3\) differs from ground-truth shape \(3, 2\); "
                                         r"resize the logits to the label size before argmax"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)))
    # class == num_classes is already out of range; correct (class 0) predictions come first in pixel order
    with pytest.raises(ValueError, match=r"prediction holds class 4 outside \[0, 4\) on a labelled pixel"):
        confusion_matrix(np.array([[0, 0, 0], [0, 4, 0]]), gt, num_classes=4)
    with pytest.raises(ValueError, match=r"class 6 outside \[0, 4\)"):   # the first bad pixel is named
        confusion_matrix(np.array([[0, 0, 6], [5, 0, 0]]), gt, num_classes=4)
    with pytest.raises(ValueError, match=r"class -1 outside \[0, 4\)"):
        confusion_matrix(np.array([[0, 0, 0], [0, 0, -1]]), gt, num_classes=4)


def test_iou_eps_default_and_custom_eps():
    from segmenters.metrics import DEFAULT_EPS

    assert DEFAULT_EPS == 1e-10
    cm = confusion_matrix(PRED, GT, num_classes=4)
    # eps is added to the denominator: TP / (TP + FP + FN + eps)
    np.testing.assert_allclose(per_class_iou(cm, "eps", eps=0.5), [1 / 3.5, 2 / 3.5, 0.0, 0.0])
    iou = per_class_iou(cm, "eps")
    assert iou[3] == 0.0 and not np.signbit(iou[3])
    # with pixel shares the default eps shows: a class with share 1e-10 and perfect IoU scores 0.5
    assert per_class_iou(np.array([[1e-10]]), "eps")[0] == pytest.approx(0.5)
    row = scores_row(cm, class_names=("a", "b", "c", "d"), convention="eps", eps=0.5)
    assert row["a"] == pytest.approx(100 / 3.5) and row["mIoU"] == pytest.approx(100 * 3 / 3.5 / 4)


def test_metrics_are_scale_invariant_and_handle_single_pixel_classes():
    cm = np.array([[3, 1, 0], [0, 1, 0], [0, 0, 0]])        # class 1 holds one pixel
    share = cm / cm.sum()                                    # the same confusion as pixel shares (< 1)
    for m in (cm, share):
        np.testing.assert_allclose(per_class_iou(m)[:2], [3 / 4, 1 / 2])
        assert np.isnan(per_class_iou(m)[2])
        acc = class_accuracy(m)
        np.testing.assert_allclose(acc[:2], [3 / 4, 1.0])
        assert np.isnan(acc[2])
        assert mean_class_accuracy(m) == pytest.approx(7 / 8)
        assert pixel_accuracy(m) == pytest.approx(4 / 5)
    assert pixel_accuracy(np.array([[1, 0], [0, 0]])) == 1.0   # one counted pixel, correct
    assert pixel_accuracy(np.array([[0, 1], [0, 0]])) == 0.0   # one counted pixel, wrong


def test_float32_confusions_are_computed_in_float64():
    # 2**24 + 1 is not a float32: summing in float32 would round the one error away
    cm = np.array([[2 ** 24, 1], [0, 0]], dtype=np.float32)
    exact = 2 ** 24 / (2 ** 24 + 1)
    iou = per_class_iou(cm)
    assert iou.dtype == np.float64 and iou[0] == exact and iou[1] == 0.0
    assert per_class_iou(cm, "eps")[0] == pytest.approx(exact, rel=1e-14, abs=0)
    assert pixel_accuracy(cm) == exact
    acc = class_accuracy(cm)
    assert acc[0] == exact and np.isnan(acc[1])
    assert mean_class_accuracy(cm) == exact
    ious = np.random.default_rng(1).random(19).astype(np.float32)
    assert miou(ious) == float(np.mean(ious.astype(np.float64)))


def test_empty_and_all_nan_selections_are_nan_without_warnings():
    empty = np.zeros((3, 3), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # e.g. numpy's "Mean of empty slice" fails the test
        assert math.isnan(pixel_accuracy(empty))
        assert math.isnan(mean_class_accuracy(empty))
        assert np.isnan(class_accuracy(empty)).all() and np.isnan(per_class_iou(empty)).all()
        assert math.isnan(miou(per_class_iou(empty)))
        iou = np.array([0.5, np.nan, np.nan, 0.25])
        assert math.isnan(miou(iou, [1, 2]))             # every selected class NaN
        assert math.isnan(miou(iou, []))                 # nothing selected
        assert miou(iou, [3]) == 0.25                    # a single class is its own mean
        assert miou(iou, [0, 1]) == 0.5                  # NaN entries are skipped


def test_scores_row_rejects_bad_inputs_with_clear_messages():
    cm4 = np.eye(4, dtype=np.int64)
    names = ("a", "b", "c", "d")
    with pytest.raises(ValueError, match=r"confusion matrix must be square, got shape \(19, 20\)"):
        scores_row(np.zeros((19, 20)))
    with pytest.raises(ValueError, match=r"confusion matrix must be square, got shape \(19,\)"):
        scores_row(np.zeros(19))
    with pytest.raises(ValueError, match=r"19 class names for a 4-class confusion matrix"):
        scores_row(cm4)
    with pytest.raises(ValueError, match=r"class set must be one of \[13, 16, 19\], got 7"):
        scores_row(cm4, class_set=7, class_names=names)
    with pytest.raises(ValueError, match=r"class set 16 is defined on the 19 Cityscapes trainIds, "
                                         r"not on a 4-class matrix"):
        scores_row(cm4, class_set=16, class_names=names)
    row = scores_row(cm4, class_names=names)
    assert list(row) == [*names, "mIoU", "aAcc", "mAcc"] and all(v == 100.0 for v in row.values())
