"""PreparedSegDataset / UDADataset over the prepared contract (segmenters/datasets.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
from domains.prepared import PreparedDataError, PreparedDataset
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from segmenters.datasets import PreparedSegDataset, UDADataset, val_pipeline, train_pipeline

SCALE = (48, 24)  # (w, h)
CROP = (24, 48)   # (h, w): the whole resized image


@pytest.fixture(autouse=True)
def _mmseg_scope():
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield


def _refined_dir(tmp_path: Path, source: Path, size: tuple[int, int]) -> Path:
    """Refined copies of the source images at another size (w, h), same stems and suffix."""
    ds = PreparedDataset.load(source)
    out = tmp_path / "refined"
    for s in ds.samples("train"):
        dst = ds.image_path("train", s.stem, image_dir=out)
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.open(s.image).resize(size, Image.BICUBIC).save(dst)
    return out


def test_refined_images_of_another_size_stay_aligned_with_labels(tiny_prepared, tmp_path):
    source = tiny_prepared["source"]
    refined = _refined_dir(tmp_path, source, (100, 37))  # odd size and aspect vs the 64x32 labels
    ds = PreparedSegDataset(str(source), "train", image_dir=str(refined),
                            pipeline=train_pipeline(SCALE, CROP, flip_prob=0.0))
    assert len(ds) == 8
    prepared = PreparedDataset.load(source)
    for i in range(len(ds)):
        item = ds[i]
        img, gt = item["inputs"], item["data_samples"].gt_sem_seg.data
        assert tuple(img.shape[1:]) == tuple(gt.shape[1:]) == CROP
        assert item["data_samples"].img_path.startswith(str(refined))
        # the label went through a nearest resize of the prepared label (not the image's size)
        stem = ds.get_data_info(i)["stem"]
        label = cv2.resize(np.array(Image.open(prepared.label_path("train", stem))), SCALE,
                           interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(gt[0].numpy(), label)


def test_val_pipeline_keeps_full_resolution_labels(tiny_prepared):
    ds = PreparedSegDataset(str(tiny_prepared["target"]), "val", test_mode=True, pipeline=val_pipeline(SCALE))
    item = ds[0]
    assert tuple(item["inputs"].shape[1:]) == (SCALE[1], SCALE[0])
    assert tuple(item["data_samples"].gt_sem_seg.data.shape[1:]) == (32, 64)
    assert item["data_samples"].ori_shape == (32, 64)
    assert ds.metainfo["classes"][13] == "car" and len(ds.metainfo["classes"]) == 19


def test_unlabelled_target_packs_all_ignore_labels(tiny_prepared):
    ds = PreparedSegDataset(str(tiny_prepared["target"]), "train", labelled=False,
                            pipeline=train_pipeline(SCALE, CROP))
    gt = ds[3]["data_samples"].gt_sem_seg.data
    assert tuple(gt.shape[1:]) == CROP and bool((gt == 255).all())


def test_pseudo_label_folder_is_used(tiny_prepared, tmp_path):
    target = PreparedDataset.load(tiny_prepared["target"])
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for i, stem in enumerate(target.stems("train")):
        Image.fromarray(np.full((16, 32), i, dtype=np.uint8)).save(pseudo / f"{stem}.png")
    ds = PreparedSegDataset(str(target.root), "train", label_dir=str(pseudo), labelled=False,
                            pipeline=train_pipeline(SCALE, CROP, flip_prob=0.0))
    for i in (0, 5):
        gt = ds[i]["data_samples"].gt_sem_seg.data
        assert bool((gt == i).all()) and tuple(gt.shape[1:]) == CROP


def test_pseudo_label_folder_errors(tiny_prepared, tmp_path):
    target = PreparedDataset.load(tiny_prepared["target"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PreparedDataError, match="empty"):
        PreparedSegDataset(str(target.root), "train", label_dir=str(empty), pipeline=[])
    with pytest.raises(PreparedDataError, match="does not exist"):
        PreparedSegDataset(str(target.root), "train", label_dir=str(tmp_path / "nope"), pipeline=[])
    partial = tmp_path / "partial"
    partial.mkdir()
    stems = target.stems("train")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(partial / f"{stems[0]}.png")
    with pytest.raises(PreparedDataError) as err:
        PreparedSegDataset(str(target.root), "train", label_dir=str(partial), pipeline=[])
    msg = str(err.value)
    assert "7 of 8 pseudo-labels missing" in msg
    assert all(s in msg for s in stems[1:6]) and stems[6] not in msg and "2 more" in msg


def test_missing_refined_images_and_unlabelled_split_errors(tiny_prepared, tmp_path):
    source = tiny_prepared["source"]
    refined = _refined_dir(tmp_path, source, (64, 32))
    victim = next(refined.iterdir())
    victim.unlink()
    with pytest.raises(PreparedDataError, match=f"1 of 8 images missing: {victim.stem}"):
        PreparedSegDataset(str(source), "train", image_dir=str(refined), pipeline=[])
    # a split whose meta says it has no labels cannot be used as labelled
    copy = tmp_path / "unlab"
    shutil.copytree(tiny_prepared["target"], copy)
    meta = (copy / "meta.json").read_text().replace('"labelled": true', '"labelled": false')
    (copy / "meta.json").write_text(meta)
    with pytest.raises(PreparedDataError, match="has no labels"):
        PreparedSegDataset(str(copy), "val", pipeline=[])
    with pytest.raises(PreparedDataError, match="not a prepared dataset"):
        PreparedSegDataset(str(tmp_path / "missing"), "train", pipeline=[])


def test_uda_dataset_pairs_deterministically_and_collates(tiny_prepared):
    src = PreparedSegDataset(str(tiny_prepared["source"]), "train", pipeline=train_pipeline(SCALE, CROP))
    trg = PreparedSegDataset(str(tiny_prepared["target"]), "val", labelled=False, pipeline=train_pipeline(SCALE, CROP))
    uda = UDADataset(src, trg, seed=3, length=24)
    assert len(uda) == 24 and uda.metainfo["classes"] == src.metainfo["classes"]
    idx = [uda.target_index(i) for i in range(24)]
    assert idx == [UDADataset(src, trg, seed=3, length=24).target_index(i) for i in range(24)]
    assert idx != [UDADataset(src, trg, seed=4, length=24).target_index(i) for i in range(24)]
    # each source pass (8 indices) uses every one of the 4 targets twice, paired differently per pass
    for e in range(3):
        assert sorted(idx[8 * e: 8 * e + 8]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert idx[:8] != idx[8:16] or idx[8:16] != idx[16:24]
    batch = pseudo_collate([uda[0], uda[9]])
    assert set(batch) == {"src", "trg"}
    assert len(batch["src"]["inputs"]) == 2 and len(batch["trg"]["data_samples"]) == 2
    assert batch["src"]["data_samples"][1].img_path.endswith("00001.png")
    assert bool((batch["trg"]["data_samples"][0].gt_sem_seg.data == 255).all())
