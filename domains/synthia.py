"""SYNTHIA-RAND-CITYSCAPES as it ships: ``RGB/0000000.png`` + ``GT/LABELS/0000000.png``.

Labels are 16-bit multi-channel PNGs (class id in R, instance id in G) that PIL cannot
decode faithfully; they are read with ``cv2.IMREAD_UNCHANGED`` (BGR(A) order) and the class id
is taken from channel 2, the R channel; for the 3-channel files SYNTHIA ships that is the
``[:, :, -1]`` used by DAFormer's converter, and it stays correct if a re-save added alpha.
Ids map with the SYNTHIA -> Cityscapes-trainId table (docs/reference.md §11.4). All -> ``train``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from domains.io import (DatasetFormatError, RawDataset, RawSample, id_tables, list_files, pair_files,
                        read_png_unchanged, require_dir)
from domains.labels import SYNTHIA_ID_TO_TRAINID, SYNTHIA_VALID_IDS

#: index of the R channel in cv2's BGR(A) channel order
R_CHANNEL = 2


class Synthia(RawDataset):
    """Reader of a SYNTHIA-RAND-CITYSCAPES root; one split, ``train``."""

    name = "synthia"
    img_suffix = ".png"
    table_name = "SYNTHIA"
    layout = "<root>/RGB/0000000.png ... and <root>/GT/LABELS/0000000.png ... (SYNTHIA-RAND-CITYSCAPES as it ships)"
    lut, valid = id_tables(SYNTHIA_ID_TO_TRAINID, SYNTHIA_VALID_IDS, 65536)

    def splits(self) -> list[str]:
        return ["train"]

    def image_dir(self, split: str) -> Path:
        return self.root / "RGB"

    def samples(self, split: str) -> list[RawSample]:
        self._check_split(split)
        images = list_files(require_dir(self.root / "RGB", self.layout), ".png")
        labels = list_files(require_dir(self.root / "GT" / "LABELS", self.layout), ".png")
        return pair_files(images, labels, self.skip_missing, "re-extract the missing SYNTHIA files")

    def read_ids(self, path: Path) -> np.ndarray:
        arr = read_png_unchanged(path)
        if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
            got = f"{arr.dtype} with {arr.shape[2] if arr.ndim == 3 else 1} channel(s)"
            raise DatasetFormatError(
                path, f"is not a 16-bit multi-channel label PNG (got {got})",
                "SYNTHIA-RAND-CITYSCAPES GT/LABELS ship as 16-bit PNGs with the class id in R; "
                "use the original files (not GT/COLOR or re-saved 8-bit copies)",
            )
        return np.ascontiguousarray(arr[:, :, R_CHANNEL])
