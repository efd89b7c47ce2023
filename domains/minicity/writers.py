"""Writers of minicity samples in the real datasets' on-disk layouts.

* GTA5: ``images/00001.png`` (RGB) + ``labels/00001.png``, a palette ('P') PNG whose pixel
  indices are Cityscapes label ids, with the Cityscapes colours of those ids as palette.
* SYNTHIA-RAND-CITYSCAPES: ``RGB/0000000.png`` + ``GT/LABELS/0000000.png``, a 16-bit
  3-channel PNG with the SYNTHIA class id in R and an instance id in G (written with cv2 from a
  BGR array, so ``cv2.imread(p, cv2.IMREAD_UNCHANGED)[:, :, -1]`` is the class id).
* Cityscapes: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` +
  ``gtFine/<split>/<city>/<same>_gtFine_labelIds.png`` (uint8 'L' label ids).

Labels arrive in Cityscapes ids plus the internal ``LANE`` id; the lookup tables below turn
them into each dataset's ids (SYNTHIA: the inverse of ``labels.SYNTHIA_ID_TO_TRAINID``, with the
classes SYNTHIA lacks -- terrain, truck, train -- and every non-evaluated id written as void 0).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.helpers import labels as cs_labels
from PIL import Image

from domains.labels import CITYSCAPES_ID_TO_TRAINID, SYNTHIA_ID_TO_TRAINID
from domains.minicity import scene as S

PNG_LEVEL = 1  # fast PNG compression; output stays lossless

TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt")
VAL_CITIES = ("frankfurt", "lindau", "munster")
#: SYNTHIA has (almost) no pixels of these Cityscapes classes: written as void like the real set
SYNTHIA_ABSENT = frozenset({S.TERRAIN, S.TRUCK, S.TRAIN})
SYNTHIA_LANEMARKING = 22


def _cityscapes_lut() -> np.ndarray:
    """Internal ids -> Cityscapes/GTA5 label ids (lane markings are road)."""
    lut = np.arange(256, dtype=np.uint8)
    lut[S.LANE] = S.ROAD
    return lut


def _synthia_lut() -> np.ndarray:
    """Internal ids -> SYNTHIA class ids (void 0 for everything SYNTHIA does not label)."""
    train_to_synthia = {t: s for s, t in SYNTHIA_ID_TO_TRAINID.items()}
    lut = np.zeros(256, dtype=np.uint16)
    for cs_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        if cs_id not in SYNTHIA_ABSENT:
            lut[cs_id] = train_to_synthia[train_id]
    lut[S.LANE] = SYNTHIA_LANEMARKING
    return lut


CITYSCAPES_LUT = _cityscapes_lut()
SYNTHIA_LUT = _synthia_lut()


def gta5_palette() -> list[int]:
    """768-entry PIL palette: index = Cityscapes label id, colour = its Cityscapes colour."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for lab in cs_labels.labels:
        if 0 <= lab.id < 256:
            pal[lab.id] = lab.color
    return pal.ravel().tolist()


_GTA5_PALETTE = gta5_palette()


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb, "RGB").save(path, compress_level=PNG_LEVEL)


def write_gta5(root: Path, index: int, rgb: np.ndarray, label: np.ndarray) -> tuple[Path, Path]:
    """Write sample ``index`` (0-based; files number from 00001 like GTA5)."""
    name = f"{index + 1:05d}.png"
    img_p, lab_p = root / "images" / name, root / "labels" / name
    _save_rgb(img_p, rgb)
    lab = Image.fromarray(CITYSCAPES_LUT[label], "L").convert("P")
    lab.putpalette(_GTA5_PALETTE)
    lab.save(lab_p, compress_level=PNG_LEVEL)
    return img_p, lab_p


def write_synthia(root: Path, index: int, rgb: np.ndarray, label: np.ndarray, instance: np.ndarray) -> tuple[Path, Path]:
    """Write sample ``index`` (files number from 0000000 like SYNTHIA-RAND-CITYSCAPES)."""
    name = f"{index:07d}.png"
    img_p, lab_p = root / "RGB" / name, root / "GT" / "LABELS" / name
    _save_rgb(img_p, rgb)
    bgr = np.zeros(label.shape + (3,), dtype=np.uint16)
    cls = SYNTHIA_LUT[label]
    bgr[..., 2] = cls  # R: class id
    bgr[..., 1] = np.where(cls > 0, instance, 0)  # G: instance id (none on void, e.g. trucks)
    if not cv2.imwrite(str(lab_p), bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL]):
        raise OSError(f"cv2 could not write {lab_p}")
    return img_p, lab_p


def cityscapes_stem(split: str, index: int, count: int) -> tuple[str, str]:
    """(city, file stem) of image ``index`` of ``count`` in ``split``: contiguous blocks per city."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    n_cities = max(1, min(len(cities), count))
    c = index * n_cities // max(count, 1)
    first = -(-c * count // n_cities)  # first index of city c
    seq = index - first
    city = cities[c]
    return city, f"{city}_{seq:06d}_{19:06d}"


def write_cityscapes(root: Path, split: str, index: int, count: int, rgb: np.ndarray,
                     label: np.ndarray) -> tuple[Path, Path]:
    city, stem = cityscapes_stem(split, index, count)
    img_p = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    lab_p = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
    img_p.parent.mkdir(parents=True, exist_ok=True)
    lab_p.parent.mkdir(parents=True, exist_ok=True)
    _save_rgb(img_p, rgb)
    Image.fromarray(CITYSCAPES_LUT[label], "L").save(lab_p, compress_level=PNG_LEVEL)
    return img_p, lab_p


def make_dirs(root: Path) -> None:
    """The fixed folders of the three layouts (Cityscapes city folders are made on demand)."""
    for d in ("gta5/images", "gta5/labels", "synthia/RGB", "synthia/GT/LABELS"):
        (root / d).mkdir(parents=True, exist_ok=True)
