"""Class-balanced cropping and rare class sampling (segmenters/uda/sampling.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope

import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
from segmenters.datasets import train_pipeline
from segmenters.uda.sampling import (RareClassSampling, RCSUDADataset, box_class_counts, cbc_scores,
                                     class_balanced_crop_boxes, crop_batch, draw_crop_offsets,
                                     rcs_class_probabilities)


def _brute_score(crop: torch.Tensor, ratio: float, ignore: int = 255) -> tuple[float, bool]:
    """The reference's per-box loop (SePiCo ours_transforms.RandomCrop), written out."""
    labels, cnt = torch.unique(crop, return_counts=True)
    cnt = cnt[labels != ignore]
    if len(cnt) > 1 and cnt.max().item() / cnt.sum().item() < ratio:
        return float(cnt[cnt > 1].double().log().sum()), True
    return 0.0, False


def test_box_class_counts_match_bincount():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (2, 23, 31), generator=g)
    labels[labels == 5] = 255
    y1, x1 = draw_crop_offsets(2, 23, 31, (9, 12), 7, g)
    counts = box_class_counts(labels, y1, x1, (9, 12), num_classes=5)
    assert counts.shape == (2, 7, 5)
    for b in range(2):
        for t in range(7):
            c = labels[b, y1[b, t]:y1[b, t] + 9, x1[b, t]:x1[b, t] + 12]
            expected = torch.bincount(c[c != 255].flatten(), minlength=5)
            assert torch.equal(counts[b, t], expected)


def test_cbc_picks_the_best_scoring_box_and_respects_the_ratio():
    g = torch.Generator().manual_seed(3)
    # blocky pseudo-labels: some boxes are dominated by one class, others mixed
    labels = torch.randint(0, 4, (3, 6, 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    labels[0] = 1  # image 0: one class only, no balanced box exists
    labels[1, :, :40] = 2  # image 1: mostly class 2
    crop, ratio, tries = (24, 24), 0.75, 10
    for seed in range(5):
        res = class_balanced_crop_boxes(labels, crop, 19, ratio, tries, torch.Generator().manual_seed(seed))
        # the same draws, scored one by one with the reference's loop
        y1, x1 = draw_crop_offsets(3, 48, 64, crop, tries, torch.Generator().manual_seed(seed))
        for b in range(3):
            scored = [_brute_score(labels[b, y:y + 24, x:x + 24], ratio)
                      for y, x in zip(y1[b].tolist(), x1[b].tolist())]
            best = max(range(tries), key=lambda i: (scored[i][0], -i))  # first maximum
            assert res.boxes[b].tolist() == [y1[b, best], y1[b, best] + 24, x1[b, best], x1[b, best] + 24]
            assert bool(res.balanced[b]) == scored[best][1]
            box = labels[b, res.boxes[b, 0]:res.boxes[b, 1], res.boxes[b, 2]:res.boxes[b, 3]]
            counts = torch.bincount(box.flatten(), minlength=19)
            if res.balanced[b]:
                assert counts.max() < ratio * counts.sum() and (counts > 0).sum() > 1
        assert not res.balanced[0]  # single class: the first random box, unbalanced
        assert res.boxes[0].tolist() == [y1[0, 0], y1[0, 0] + 24, x1[0, 0], x1[0, 0] + 24]
    # vectorised score equals the loop's on random counts (score 0 when unbalanced)
    counts = torch.randint(0, 50, (20, 5), generator=g)
    score, ok = cbc_scores(counts, 0.6)
    for c, s, o in zip(counts, score, ok):
        ref = _brute_score(torch.repeat_interleave(torch.arange(5), c), 0.6)
        assert math.isclose(float(s), ref[0], rel_tol=1e-9, abs_tol=1e-9) and bool(o) == ref[1]


def test_cbc_crop_batch_and_small_images():
    labels = torch.zeros(2, 10, 40, dtype=torch.long)
    labels[:, :, 20:] = 3
    res = class_balanced_crop_boxes(labels, (16, 16), 19, generator=torch.Generator().manual_seed(0))
    assert res.boxes[:, :2].tolist() == [[0, 10], [0, 10]]  # shorter side taken whole
    images = torch.arange(2 * 3 * 10 * 40, dtype=torch.float32).view(2, 3, 10, 40)
    out = crop_batch(images, res.boxes)
    assert out.shape == (2, 3, 10, 16)
    for b in range(2):
        x1 = int(res.boxes[b, 2])
        assert torch.equal(out[b], images[b, :, :, x1:x1 + 16])
    with pytest.raises(ValueError, match="cat_max_ratio"):
        class_balanced_crop_boxes(labels, (16, 16), 19, cat_max_ratio=0.0)


def test_rcs_probabilities_follow_the_formula_and_sampling_frequencies():
    pixels = np.array([5000, 0, 300, 100, 1600], dtype=np.float64)
    classes, p = rcs_class_probabilities(pixels, 0.01)
    assert classes.tolist() == [0, 2, 3, 4]
    f = pixels[classes] / pixels[classes].sum()
    expected = np.exp((1 - f) / 0.01) / np.exp((1 - f) / 0.01).sum()
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    assert p.argmax() == 2 and p[0] < 1e-10  # the rarest class dominates at T = 0.01
    # per-sample table: class 3 only in sample 2 above min_pixels; class 1 absent
    sample = np.array([[4000, 0, 0, 10, 600], [1000, 0, 300, 10, 1000], [0, 0, 0, 80, 0]])
    rcs = RareClassSampling(sample, temperature=1.0, min_pixels=50, min_crop_ratio=0.5)
    assert {c: v.tolist() for c, v in rcs.samples_with_class.items()} == {0: [0, 1], 2: [1], 3: [2], 4: [0, 1]}
    _, p_all = rcs_class_probabilities(sample.sum(0), 1.0)
    np.testing.assert_allclose(rcs.probs, p_all)
    rng = np.random.default_rng(0)
    n = 20000
    draws = [rcs.draw(rng) for _ in range(n)]
    freq = np.array([sum(c == k for c, _ in draws) for k in rcs.classes]) / n
    np.testing.assert_allclose(freq, rcs.probs, atol=4 * np.sqrt(0.25 / n))
    assert all(sample[i, c] > 50 for c, i in draws)
    # a class with no sample above min_pixels is dropped and the rest renormalised
    rcs2 = RareClassSampling(sample, temperature=1.0, min_pixels=100)
    assert 3 not in rcs2.classes and math.isclose(rcs2.probs.sum(), 1.0)
    with pytest.raises(ValueError, match="rcs_min_pixels"):
        RareClassSampling(sample, min_pixels=10**6)


def test_rcs_dataset_on_prepared_source(tiny_prepared):
    pipeline = train_pipeline((64, 32), (32, 64))
    source = dict(type="PreparedSegDataset", prepared_root=str(tiny_prepared["source"]), split="train",
                  pipeline=pipeline)
    target = dict(type="PreparedSegDataset", prepared_root=str(tiny_prepared["target"]), split="train",
                  labelled=False, pipeline=pipeline)
    with DefaultScope.overwrite_default_scope("mmseg"):
        ds = RCSUDADataset(source, target, seed=3, length=40,
                           rare_class_sampling=dict(class_temp=0.01, min_pixels=50, min_crop_ratio=0.5))
        item = ds[5]
        with pytest.raises(ValueError, match="rare_class_sampling.temp"):
            RCSUDADataset(source, target, rare_class_sampling=dict(temp=0.1))
    # per-image counts add up to the prepared dataset's class statistics
    stats = json.loads((tiny_prepared["source"] / "class_stats.json").read_text())["train"]["pixels"]
    assert ds.sample_pixels.sum(0).tolist() == stats
    assert ds.source_draw(7) == ds.source_draw(7)  # reproducible per index
    # the car (13) is the rarest class of the toy source: T = 0.01 draws it nearly always
    assert int(ds.rcs.classes[ds.rcs.probs.argmax()]) == 13
    cls, i = ds.source_draw(5)
    assert item["src"]["data_samples"].img_path == ds.source.get_data_info(i)["img_path"]
    assert int((item["src"]["data_samples"].gt_sem_seg.data == cls).sum()) > 25
    assert "trg" in item and len(ds) == 40
