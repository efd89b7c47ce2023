"""Sample strip and class-fraction table of a minicity (or real) GTA5/SYNTHIA/Cityscapes tree.

    python -m domains.minicity.strip --root data/raw/minicity --out docs/minicity_strip.png \
        [--table docs/minicity_classes.md] [--n 4]

The strip has one row pair per domain (images, then their label colour maps in the Cityscapes
trainId colours). The table gives per-class pixel fractions (over all pixels, with an
"ignored" row) computed from the label files themselves with the id -> trainId tables.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from domains.io import atomic_path
from domains.labels import (CITYSCAPES_ID_TO_TRAINID, CLASSES, NUM_CLASSES, SYNTHIA_ID_TO_TRAINID,
                            colorize, lookup_table)

log = logging.getLogger(__name__)

_CS_LUT = lookup_table(CITYSCAPES_ID_TO_TRAINID)
_SYN_LUT = lookup_table(SYNTHIA_ID_TO_TRAINID, size=65536)


def read_gta5_train_ids(path: Path) -> np.ndarray:
    """trainIds of a GTA5 palette label PNG (the indices are Cityscapes ids)."""
    return _CS_LUT[np.asarray(Image.open(path))]


def read_synthia_train_ids(path: Path) -> np.ndarray:
    """trainIds of a SYNTHIA 16-bit label PNG (class id in the R channel = cv2's last channel)."""
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 3:
        raise ValueError(f"{path}: not a multi-channel SYNTHIA label PNG")
    return _SYN_LUT[arr[:, :, 2]]


def read_cityscapes_train_ids(path: Path) -> np.ndarray:
    return _CS_LUT[np.asarray(Image.open(path))]


def domain_files(root: Path) -> dict[str, list[tuple[Path, Path]]]:
    """(image, label) pairs of every domain present under ``root``, sorted."""
    out: dict[str, list[tuple[Path, Path]]] = {}
    gta = root / "gta5"
    if (gta / "labels").is_dir():
        out["gta5"] = [(gta / "images" / p.name, p) for p in sorted((gta / "labels").glob("*.png"))]
    syn = root / "synthia"
    if (syn / "GT" / "LABELS").is_dir():
        out["synthia"] = [(syn / "RGB" / p.name, p) for p in sorted((syn / "GT" / "LABELS").glob("*.png"))]
    cs = root / "cityscapes"
    for split in ("train", "val"):
        gt = cs / "gtFine" / split
        if gt.is_dir():
            pairs = []
            for p in sorted(gt.glob("*/*_gtFine_labelIds.png")):
                stem = p.name[: -len("_gtFine_labelIds.png")]
                pairs.append((cs / "leftImg8bit" / split / p.parent.name / f"{stem}_leftImg8bit.png", p))
            out[f"cityscapes_{split}"] = pairs
    return out


_READERS = {"gta5": read_gta5_train_ids, "synthia": read_synthia_train_ids,
            "cityscapes_train": read_cityscapes_train_ids, "cityscapes_val": read_cityscapes_train_ids}


def class_pixels(pairs: list[tuple[Path, Path]], domain: str) -> np.ndarray:
    """Pixel counts per trainId (19) followed by the ignored count."""
    read = _READERS[domain]
    counts = np.zeros(256, dtype=np.int64)
    for _, lab in pairs:
        counts += np.bincount(read(lab).ravel(), minlength=256)
    return np.concatenate([counts[:NUM_CLASSES], [counts[NUM_CLASSES:].sum()]])


def class_fractions(root: str | Path) -> dict[str, np.ndarray]:
    """Per-domain fraction of all label pixels per trainId (19) plus ignored (last entry)."""
    fr = {}
    for domain, pairs in domain_files(Path(root)).items():
        c = class_pixels(pairs, domain)
        fr[domain] = c / max(int(c.sum()), 1)
    return fr


def markdown_table(fractions: dict[str, np.ndarray]) -> str:
    names = list(fractions)
    lines = ["| class | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for i, cls in enumerate(list(CLASSES) + ["(ignored)"]):
        lines.append(f"| {cls} | " + " | ".join(f"{100 * fractions[n][i]:.2f}%" for n in names) + " |")
    return "\n".join(lines) + "\n"


def make_strip(root: str | Path, n: int = 4, tile_width: int = 256) -> np.ndarray:
    """RGB strip: per domain a row of ``n`` images and a row of their label colour maps."""
    files = domain_files(Path(root))
    if not files:
        raise FileNotFoundError(f"{root}: no gta5/, synthia/ or cityscapes/ label folders found")
    rows = []
    for domain, pairs in files.items():
        if domain == "cityscapes_val" and "cityscapes_train" in files:
            continue
        pick = [pairs[i] for i in np.linspace(0, len(pairs) - 1, min(n, len(pairs))).astype(int)]
        imgs, labs = [], []
        for img_p, lab_p in pick:
            img = np.asarray(Image.open(img_p).convert("RGB"))
            th = max(1, round(img.shape[0] * tile_width / img.shape[1]))
            imgs.append(cv2.resize(img, (tile_width, th), interpolation=cv2.INTER_AREA))
            lab = _READERS[domain](lab_p)
            labs.append(cv2.resize(colorize(lab), (tile_width, th), interpolation=cv2.INTER_NEAREST))
        th = max(i.shape[0] for i in imgs)
        pad = [np.pad(i, ((0, th - i.shape[0]), (0, 0), (0, 0))) for i in imgs]
        padl = [np.pad(i, ((0, th - i.shape[0]), (0, 0), (0, 0))) for i in labs]
        while len(pad) < n:
            pad.append(np.zeros_like(pad[0]))
            padl.append(np.zeros_like(pad[0]))
        sep = np.full((th, 2, 3), 255, np.uint8)
        rows.append(np.concatenate(sum(([p, sep] for p in pad), [])[:-1], 1))
        rows.append(np.concatenate(sum(([p, sep] for p in padl), [])[:-1], 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    gap = np.full((2, width, 3), 255, np.uint8)
    return np.concatenate(sum(([r, gap] for r in rows), [])[:-1], 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m domains.minicity.strip", description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="tree with gta5/, synthia/, cityscapes/ (e.g. data/raw/minicity)")
    p.add_argument("--out", required=True, help="strip PNG to write (e.g. docs/minicity_strip.png)")
    p.add_argument("--table", help="also write the class-fraction table (markdown) here")
    p.add_argument("--n", type=int, default=4, help="images per domain (default 4)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        strip = make_strip(args.root, args.n)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    with atomic_path(out, suffix=".png") as tmp:  # the suffix makes PIL write a PNG
        Image.fromarray(strip).save(tmp)
    log.info("wrote %s (%dx%d; rows: images and labels per domain)", out, strip.shape[1], strip.shape[0])
    table = markdown_table(class_fractions(args.root))
    print(table)
    if args.table:
        t = Path(args.table)
        with atomic_path(t) as tt:
            tt.write_text(table)
        log.info("wrote %s", t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
