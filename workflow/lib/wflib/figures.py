"""Report figures: per-round mIoU plot, translated-sample grid, pseudo-label examples, method comparison
(mIoU per round + gap closed, confusion heat maps) (matplotlib)."""
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
    from domains.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:  # the suffix makes matplotlib write a PNG
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)


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


# ------------------------------------------------------------------------ method comparison (compare)

def _png_bytes(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def comparison_plot(summary: pd.DataFrame, path: str | os.PathLike, title: str,
                    references: Sequence[str] = ("source_only_none", "oracle_none")) -> None:
    """Left: mIoU per round of every row of a ``wflib.compare.summarize`` frame (colour = UDA method,
    line style and marker = translator; error bars = std over seeds; hollow markers: rounds that ran in
    only some seeds), the reference rows as horizontal lines at their
    best-round mean (shaded ± std with > 1 seed). Right: gap closed per row (bars: of the means;
    error bars: std of the per-seed values)."""
    rounds = sorted(int(c[1:-len("_mIoU_mean")]) for c in summary if c.startswith("r") and c.endswith("_mIoU_mean"))
    refs = summary[summary["row"].isin(references)]
    rows = summary[~summary["row"].isin(references)].reset_index(drop=True)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.6, 1]})
    ref_styles = {references[0]: ("dimgray", "--"), references[-1]: ("black", ":")}
    for rec in refs.to_dict("records"):
        color, style = ref_styles.get(rec["row"], ("gray", "-."))
        ax.axhline(rec["best_mIoU_mean"], color=color, ls=style, lw=1.4, label=f"{rec['row']} (best)")
        if rec["n_seeds"] > 1 and np.isfinite(rec["best_mIoU_std"]):
            ax.axhspan(rec["best_mIoU_mean"] - rec["best_mIoU_std"], rec["best_mIoU_mean"] + rec["best_mIoU_std"],
                       color=color, alpha=0.12, lw=0)
    udas = list(dict.fromkeys(rows["uda"])) if len(rows) else []
    translators = list(dict.fromkeys(rows["translator"])) if len(rows) else []
    colors = plt.get_cmap("tab10")
    color_of = {r: colors(udas.index(u) % 10) for r, u in zip(rows["row"], rows["uda"])}
    styles, markers = ("-", "--", "-.", ":"), ("o", "s", "^", "D", "v", "P")
    width = 0.25 / max(len(rows), 1)
    partial = False
    for i, rec in enumerate(rows.to_dict("records")):
        ks = [k for k in rounds if rec.get(f"r{k}_n", 0) > 0]
        xs = np.array(ks, dtype=float) + (i - (len(rows) - 1) / 2) * width
        ys = np.array([rec[f"r{k}_mIoU_mean"] for k in ks])
        es = np.nan_to_num(np.array([rec[f"r{k}_mIoU_std"] for k in ks]), nan=0.0)
        t = translators.index(rec["translator"])
        color = color_of[rec["row"]]
        ax.errorbar(xs, ys, yerr=es, marker=markers[t % len(markers)], ms=5, capsize=3, lw=1.3, color=color,
                    ls=styles[t % len(styles)], label=rec["row"])
        few = np.array([rec[f"r{k}_n"] < rec["n_seeds"] for k in ks], dtype=bool)
        if few.any():          # rounds that ran in only some seeds: hollow markers
            partial = True
            ax.plot(xs[few], ys[few], ls="none", marker=markers[t % len(markers)], ms=5, mfc="white", mec=color)
    if partial:
        ax.plot([], [], ls="none", marker="o", mfc="white", mec="gray", label="hollow: ran in fewer seeds")
    ax.set_xticks(rounds)
    ax.set_xticklabels([f"r{k}" for k in rounds])
    ax.set_xlabel("round")
    ax.set_ylabel("target val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, frameon=False)
    ax.set_title(title, fontsize=10)
    y = np.arange(len(rows))
    gaps = 100.0 * rows["gap_closed"].astype(float).to_numpy() if len(rows) else np.array([])
    errs = 100.0 * np.nan_to_num(rows["gap_closed_seed_std"].astype(float).to_numpy(), nan=0.0) if len(rows) else None
    bx.barh(y, np.nan_to_num(gaps), xerr=errs, capsize=3, color=[color_of[r] for r in rows["row"]])
    for yi, g, e in zip(y, gaps, errs if errs is not None else []):
        x = 0.0 if not np.isfinite(g) else g + (e if g >= 0 else -e)
        bx.annotate("n/a" if not np.isfinite(g) else f"{g:.0f} %", (x, yi), textcoords="offset points",
                    xytext=(5 if g >= 0 or not np.isfinite(g) else -5, -3), ha="left" if g >= 0 or not np.isfinite(g) else "right",
                    fontsize=7)
    bx.set_yticks(y)
    bx.set_yticklabels(rows["row"].tolist(), fontsize=8)
    bx.invert_yaxis()
    bx.axvline(0, color="dimgray", lw=1)
    bx.axvline(100, color="black", ls=":", lw=1)
    bx.set_xlabel("gap closed (%) = (mIoU − source-only) / (oracle − source-only)")
    bx.set_title("best round, source-only → oracle gap", fontsize=10)
    bx.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save_atomic(fig, path)


def confusion_heatmap_png(cm: np.ndarray, rows: Sequence[int], names: Sequence[str], title: str) -> bytes:
    """PNG bytes of a row-normalised confusion heat map (percent of each GT class): rows = the classes
    ``rows`` (ground truth), columns = every class (prediction), class names on both axes."""
    cm = np.asarray(cm, dtype=np.float64)[np.asarray(rows, dtype=np.int64)]
    totals = cm.sum(axis=1, keepdims=True)
    pct = 100.0 * cm / np.where(totals > 0, totals, 1.0)
    fig, ax = plt.subplots(figsize=(0.34 * len(names) + 2.2, 0.34 * len(rows) + 1.6))
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([names[i] for i in rows], fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for r in range(pct.shape[0]):
        for c in range(pct.shape[1]):
            if pct[r, c] >= 10:
                ax.text(c, r, f"{pct[r, c]:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if pct[r, c] > 55 else "black")
    fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02, label="% of GT pixels")
    ax.set_title(title, fontsize=9)
    return _png_bytes(fig)
