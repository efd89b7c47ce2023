"""Report figures: per-round mIoU plot, translated-sample grid, pseudo-label examples (matplotlib)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402


def _save_atomic(fig, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def miou_plot(table: pd.DataFrame, path: str | os.PathLike, title: str) -> None:
    """Mean scores per round; the best round is marked."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for column in ("mIoU", "mIoU16", "mIoU13"):
        if column in table:
            ax.plot(table["round"], table[column], marker="o", label=column)
    best = table.loc[table["best"]]
    if len(best) and "mIoU" in table:
        ax.scatter(best["round"], best["mIoU"], s=160, facecolors="none", edgecolors="red", label="best round")
    ax.set_xlabel("round")
    ax.set_ylabel("target val score (%)")
    ax.set_xticks(table["round"].tolist())
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save_atomic(fig, path)


def _prepared(root: str | os.PathLike) -> dict:
    return json.loads((Path(root) / "meta.json").read_text())


def _stems(root: str | os.PathLike, split: str, n: int) -> list[str]:
    lines = (Path(root) / f"{split}.txt").read_text().split()
    return lines[:n]


def _thumb(path: Path, width: int = 320) -> np.ndarray:
    img = Image.open(path)
    img = img.convert("RGB") if img.mode not in ("P", "L") else img
    if img.width > width:
        img = img.resize((width, max(1, round(img.height * width / img.width))),
                         Image.NEAREST if img.mode in ("P", "L") else Image.BILINEAR)
    return np.asarray(img)


def _find_image(folder: Path, stem: str) -> Path:
    for suffix in ("", ".png", ".jpg", "_leftImg8bit.png"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    matches = sorted(folder.glob(f"{stem}.*"))
    if not matches:
        raise FileNotFoundError(f"no image for stem {stem!r} in {folder}")
    return matches[0]


def _grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], path: str | os.PathLike, suptitle: str) -> None:
    ncols = len(titles)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.2 * ncols, 1.9 * len(rows) + 0.6), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.suptitle(suptitle, fontsize=10)
    _save_atomic(fig, path)


def sample_grid(source_root: str | os.PathLike, refined_dir: str | os.PathLike, path: str | os.PathLike, n: int = 4) -> None:
    """Rows of (source image, refined image) for the first ``n`` stems of the source train split."""
    meta = _prepared(source_root)
    split = meta["splits"]["train"]
    rows = []
    for stem in _stems(source_root, "train", n):
        src = Path(split["image_dir"]) / f"{stem}{split['img_suffix']}"
        rows.append([_thumb(src), _thumb(_find_image(Path(refined_dir), stem))])
    _grid(rows, ["input", "refined"], path, f"translated samples: {refined_dir}")


def pseudo_grid(target_root: str | os.PathLike, pseudo_dir: str | os.PathLike, path: str | os.PathLike,
                split: str = "train", n: int = 4) -> None:
    """Rows of (target image, pseudo-label, ground truth when the split is labelled)."""
    from domains.labels import colorize

    meta = _prepared(target_root)
    info = meta["splits"][split]
    suffix = meta.get("label_suffix", "_labelTrainIds.png")
    rows = []
    for stem in _stems(target_root, split, n):
        image = _thumb(Path(info["image_dir"]) / f"{stem}{info['img_suffix']}")
        pseudo = colorize(np.asarray(Image.open(Path(pseudo_dir) / f"{stem}.png")))
        row = [image, pseudo]
        if info.get("labelled"):
            row.append(colorize(np.asarray(Image.open(Path(target_root) / "labels" / split / f"{stem}{suffix}"))))
        rows.append(row)
    titles = ["target image", "pseudo-label (255 = ignored, black)"] + (["ground truth"] if info.get("labelled") else [])
    _grid(rows, titles, path, f"pseudo-labels: {pseudo_dir}")
