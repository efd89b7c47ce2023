"""GTA5 ("Playing for Data") as it ships: ``images/00001.png`` + ``labels/00001.png``.

Labels are palette ('P') PNGs whose pixel *indices* are Cityscapes label ids (0..33), so they
are read with PIL (cv2 would return the palette colours) and mapped with the Cityscapes
id -> trainId table (docs/reference.md §11.3). Every frame goes to split ``train`` (BDL uses all
24,966). Some downloads lack a few frames: a missing pair is an error unless ``skip_missing``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from domains.io import RawDataset, RawSample, id_tables, list_files, pair_files, read_index_png, require_dir
from domains.labels import CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_VALID_IDS


class GTA5(RawDataset):
    """Reader of a GTA5 root; one split, ``train``, holding every frame."""

    name = "gta5"
    img_suffix = ".png"
    table_name = "Cityscapes/GTA5"
    layout = "<root>/images/00001.png ... and <root>/labels/00001.png ... (GTA5 as it ships)"
    lut, valid = id_tables(CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_VALID_IDS, 256)

    def splits(self) -> list[str]:
        return ["train"]

    def image_dir(self, split: str) -> Path:
        return self.root / "images"

    def samples(self, split: str) -> list[RawSample]:
        self._check_split(split)
        images = list_files(require_dir(self.root / "images", self.layout), ".png")
        labels = list_files(require_dir(self.root / "labels", self.layout), ".png")
        return pair_files(images, labels, self.skip_missing, "re-extract the missing GTA5 files")

    def read_ids(self, path: Path) -> np.ndarray:
        return read_index_png(path)
