"""Label tables of domains/labels.py against cityscapesscripts and docs/reference.md §11.3, §11.4."""
from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers import labels as cs_labels

from domains import labels

CS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
            "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
            "bicycle")
#: docs/reference.md §11.3 (AdaptSegNet/ADVENT/DAFormer GTA5 dict)
GTA5_REF = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SYNTHIA_REF = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
               18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def test_classes_and_palette_follow_cityscapesscripts():
    assert labels.NUM_CLASSES == len(labels.CLASSES) == 19 and labels.CLASSES == CS_NAMES
    for train_id, (name, colour) in enumerate(zip(labels.CLASSES, labels.PALETTE)):
        lab = cs_labels.name2label[name]
        assert lab.trainId == train_id and tuple(lab.color) == colour
    assert labels.PALETTE[0] == (128, 64, 128) and labels.PALETTE[18] == (119, 11, 32)


def test_cityscapes_id_maps():
    assert labels.CITYSCAPES_ID_TO_TRAINID == GTA5_REF
    for lab in cs_labels.labels:
        if lab.id >= 0:
            assert lab.id in labels.CITYSCAPES_VALID_IDS
            assert labels.CITYSCAPES_ID_TO_TRAINID.get(lab.id, 255) == (lab.trainId if lab.trainId != -1 else 255)
    assert labels.CITYSCAPES_VALID_IDS == frozenset(range(34))
    assert all(labels.TRAINID_TO_CITYSCAPES_ID[t] == cs_labels.trainId2label[t].id for t in range(19))


def test_synthia_tables():
    assert labels.SYNTHIA_ID_TO_TRAINID == SYNTHIA_REF
    assert labels.SYNTHIA_VALID_IDS == frozenset(range(23))
    assert labels.SYNTHIA_16 == (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    assert labels.SYNTHIA_13 == (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    dropped16 = {labels.CLASSES[i] for i in set(range(19)) - set(labels.SYNTHIA_16)}
    dropped13 = {labels.CLASSES[i] for i in set(labels.SYNTHIA_16) - set(labels.SYNTHIA_13)}
    assert dropped16 == {"terrain", "truck", "train"} and dropped13 == {"wall", "fence", "pole"}


def test_lookup_table_and_colorize():
    lut = labels.lookup_table(labels.CITYSCAPES_ID_TO_TRAINID)
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    ids = np.array([[7, 26, 0], [33, 1, 255]])
    np.testing.assert_array_equal(lut[ids], [[0, 13, 255], [18, 255, 255]])
    rgb = labels.colorize(lut[ids].astype(np.uint8))
    assert rgb.shape == (2, 3, 3) and tuple(rgb[0, 1]) == (0, 0, 142) and tuple(rgb[1, 2]) == (0, 0, 0)
