"""Cityscapes as it ships: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
``gtFine/<split>/<city>/*_gtFine_labelIds.png``.

Stems keep the city folder (``aachen/aachen_000000_000019``) so they are unique and the image
is ``<image_dir>/<stem>_leftImg8bit.png`` (mmseg's ``CityscapesDataset`` convention). Splits are
the folders found under ``leftImg8bit``; a split without ``gtFine/<split>`` is unlabelled. The
``test`` split is always treated as unlabelled: its public gtFine files are placeholders (the
test annotations are withheld for the benchmark server); ``placeholder_splits`` changes that.
labelIds PNGs are uint8, so the license-plate id -1 never occurs; ids outside
``cityscapesscripts.helpers.labels`` (0..33) are an error.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from domains.io import RawDataset, RawSample, id_tables, list_files, pair_files, read_index_png, require_dir
from domains.labels import CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_VALID_IDS

log = logging.getLogger(__name__)

IMG_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(RawDataset):
    """Reader of a Cityscapes root (leftImg8bit + gtFine)."""

    name = "cityscapes"
    img_suffix = IMG_SUFFIX
    table_name = "Cityscapes"
    layout = ("<root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
              "<root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png (Cityscapes as it ships)")
    lut, valid = id_tables(CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_VALID_IDS, 256)

    def __init__(self, root: str | os.PathLike, skip_missing: bool = False, unknown_ids: str = "error",
                 placeholder_splits: tuple[str, ...] = ("test",)) -> None:
        super().__init__(root, skip_missing, unknown_ids)
        self.placeholder_splits = tuple(placeholder_splits)

    def splits(self) -> list[str]:
        images = require_dir(self.root / "leftImg8bit", self.layout)
        return sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))

    def is_labelled(self, split: str) -> bool:
        return split not in self.placeholder_splits and (self.root / "gtFine" / split).is_dir()

    def image_dir(self, split: str) -> Path:
        return self.root / "leftImg8bit" / split

    def samples(self, split: str) -> list[RawSample]:
        self._check_split(split)
        images = list_files(self.image_dir(split), IMG_SUFFIX, recursive=True)
        if not self.is_labelled(split):
            if (self.root / "gtFine" / split).is_dir():
                log.info("cityscapes split '%s': gtFine labels are placeholders, preparing it unlabelled", split)
            return [RawSample(stem, images[stem], None) for stem in sorted(images)]
        labels = list_files(self.root / "gtFine" / split, LABEL_SUFFIX, recursive=True)
        return pair_files(images, labels, self.skip_missing, "re-extract leftImg8bit/gtFine")

    def read_ids(self, path: Path) -> np.ndarray:
        return read_index_png(path)
