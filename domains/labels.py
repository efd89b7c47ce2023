"""Label definitions shared by every dataset: Cityscapes' 19 train classes and the id maps.

The Cityscapes table comes from ``cityscapesscripts.helpers.labels`` (the official one);
GTA5 uses Cityscapes label ids, SYNTHIA has its own ids (docs/reference.md §11.3, §11.4).
"""
from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers import labels as cs_labels

IGNORE_INDEX = 255
NUM_CLASSES = 19

_TRAIN_LABELS = sorted(
    (lab for lab in cs_labels.labels if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId
)
#: the 19 evaluation class names, in trainId order
CLASSES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN_LABELS)
#: RGB colour of each trainId
PALETTE: tuple[tuple[int, int, int], ...] = tuple(tuple(lab.color) for lab in _TRAIN_LABELS)
#: Cityscapes label id -> trainId for the 19 classes (others map to IGNORE_INDEX)
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {lab.id: lab.trainId for lab in _TRAIN_LABELS}
#: trainId -> Cityscapes label id (for the official evaluator, which wants label ids)
TRAINID_TO_CITYSCAPES_ID: dict[int, int] = {v: k for k, v in CITYSCAPES_ID_TO_TRAINID.items()}
#: every id a Cityscapes/GTA5 labelIds image may hold (0..33 plus -1 for license plate)
CITYSCAPES_VALID_IDS: frozenset[int] = frozenset(lab.id for lab in cs_labels.labels if lab.id >= 0)

#: SYNTHIA-RAND-CITYSCAPES class ids (R channel of GT/LABELS) -> 19 Cityscapes trainIds
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}
SYNTHIA_VALID_IDS: frozenset[int] = frozenset(range(23))
#: trainIds of the SYNTHIA 16- and 13-class evaluation subsets
SYNTHIA_16: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
SYNTHIA_13: tuple[int, ...] = (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)


def lookup_table(mapping: dict[int, int], size: int = 256, fill: int = IGNORE_INDEX) -> np.ndarray:
    """A uint8 lookup table ``lut[id] = trainId`` (``fill`` elsewhere) for vectorised mapping."""
    lut = np.full(size, fill, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """RGB colour image (H, W, 3) of a trainId map; ignore pixels are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(PALETTE)] = np.asarray(PALETTE, dtype=np.uint8)
    return lut[train_ids]
