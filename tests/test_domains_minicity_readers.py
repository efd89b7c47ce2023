"""The dataset readers on files written by minicity: every layout prepares, and the two
source layouts (GTA5 and SYNTHIA) of the same scenes agree pixel-wise after the id maps."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from domains.labels import IGNORE_INDEX, SYNTHIA_16
from domains.minicity import Options, generate
from domains.prepare import prepare


@pytest.fixture(scope="module")
def prepared_minicity(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    generate(Options(out=str(root / "raw"), n_source=6, n_train=4, n_val=3, seed=3), workers=1)
    return {name: prepare(name, root / "raw" / name, root / "prepared" / name, workers=1)
            for name in ("gta5", "synthia", "cityscapes")}


def test_every_minicity_layout_prepares_with_the_expected_splits(prepared_minicity):
    assert prepared_minicity["gta5"].splits == ["train"]
    assert prepared_minicity["synthia"].splits == ["train"]
    assert sorted(prepared_minicity["cityscapes"].splits) == ["train", "val"]
    counts = {name: {s: len(ds.stems(s)) for s in ds.splits} for name, ds in prepared_minicity.items()}
    assert counts == {"gta5": {"train": 6}, "synthia": {"train": 6}, "cityscapes": {"train": 4, "val": 3}}
    for ds in prepared_minicity.values():
        for split in ds.splits:
            for sample in ds.samples(split):
                label = np.asarray(Image.open(sample.label))
                assert label.dtype == np.uint8
                assert Image.open(sample.image).size == label.shape[::-1]
                assert set(np.unique(label)) <= set(range(19)) | {IGNORE_INDEX}


def test_gta5_and_synthia_layouts_of_the_same_scene_agree(prepared_minicity):
    gta, syn = prepared_minicity["gta5"], prepared_minicity["synthia"]
    keep = np.isin(np.arange(256), SYNTHIA_16)
    for g, s in zip(gta.samples("train"), syn.samples("train")):
        lg = np.asarray(Image.open(g.label))
        ls = np.asarray(Image.open(s.label))
        both = keep[lg] & keep[ls]  # classes both datasets label (SYNTHIA lacks terrain/truck/train)
        assert both.mean() > 0.8
        assert (lg[both] == ls[both]).mean() > 0.99


def test_class_stats_match_the_label_files(prepared_minicity):
    ds = prepared_minicity["cityscapes"]
    stats = ds.class_stats()["val"]
    counts = np.zeros(19, dtype=np.int64)
    for sample in ds.samples("val"):
        label = np.asarray(Image.open(sample.label))
        counts += np.bincount(label[label != IGNORE_INDEX], minlength=19)[:19]
    assert stats["pixels"] == counts.tolist()
