"""Semantic distortion of a translator: which source classes the refined images turn into what.

Definition (our reading of the issue's "source-trained reference"): one reference segmenter --
by default the target oracle's ``final.pth``, the same one the FCN-score uses -- segments

* the refined images -> confusion ``C_ref`` (rows = source label, columns = prediction), and
* the reference set, by default the **untranslated source images** of the same split -> ``C_0``.

With ``P = C / rowsum`` (row-normalised: P[i, j] = share of label-i pixels predicted as j),
``D = P(refined) - P(reference)``. ``D[i, j] > 0`` off the diagonal means the translation made
label-i pixels look more like class j (e.g. "sky->vegetation +12.3 %": 12.3 % more of the sky
pixels are segmented as vegetation after translation); ``D[i, i] < 0`` means class i lost
consistency. Subtracting the reference removes the segmenter's own confusions (domain gap),
leaving what the translator changed. The reference set is configurable (another image folder,
e.g. a baseline translator's refined set, or a saved confusion ``.npy``). Rows of classes absent
from the labels are NaN.

Summary columns (percentage points): ``mean_diag_change_pp`` (mean over present classes of
D[i, i]) and ``mean_flip_pp`` (mean over present classes of the sum of positive off-diagonal
D[i, j]: the share of a class's pixels newly assigned elsewhere), then the top flows.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from domains.io import atomic_path
from domains.labels import CLASSES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flow:
    """A change of the label-``src`` -> predicted-``dst`` share by ``delta`` (fraction, refined - reference)."""

    src: int
    dst: int
    delta: float
    src_name: str
    dst_name: str

    def __str__(self) -> str:
        return f"{self.src_name}\u2192{self.dst_name} {100.0 * self.delta:+.1f} %"


def class_names_for(num_classes: int) -> tuple[str, ...]:
    return CLASSES if num_classes == len(CLASSES) else tuple(f"class_{c}" for c in range(num_classes))


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """P[i, j] = cm[i, j] / sum_j cm[i, j]; rows with no pixels are NaN."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, cm / np.where(rows > 0, rows, 1.0), np.nan)


def distortion_matrix(cm_refined: np.ndarray, cm_reference: np.ndarray) -> np.ndarray:
    """D = rownorm(cm_refined) - rownorm(cm_reference) (fractions; NaN rows where a label is absent)."""
    cm_refined, cm_reference = np.asarray(cm_refined), np.asarray(cm_reference)
    if cm_refined.shape != cm_reference.shape:
        raise ValueError(f"confusion matrices differ in shape: {cm_refined.shape} vs {cm_reference.shape}")
    return row_normalise(cm_refined) - row_normalise(cm_reference)


def top_flows(delta: np.ndarray, k: int = 10, order: str = "increase",
              class_names: Sequence[str] | None = None) -> list[Flow]:
    """The ``k`` largest off-diagonal changes of ``delta``.

    ``order="increase"``: largest positive D[i, j] first (new confusions; only positive ones);
    ``order="abs"``: largest |D[i, j]| first (also confusions the translation removed).
    """
    delta = np.asarray(delta, dtype=np.float64)
    n = delta.shape[0]
    names = tuple(class_names) if class_names is not None else class_names_for(n)
    off = delta.copy()
    np.fill_diagonal(off, np.nan)
    if order == "increase":
        key = np.where(off > 0, off, np.nan)
    elif order == "abs":
        key = np.abs(off)
    else:
        raise ValueError(f"unknown order {order!r}; use 'increase' or 'abs'")
    flat = np.where(np.isnan(key), -np.inf, key).ravel()
    ranked = np.argsort(-flat, kind="stable")
    ranked = ranked[np.isfinite(flat[ranked])][: max(int(k), 0)]
    return [Flow(int(i // n), int(i % n), float(delta.flat[i]), names[i // n], names[i % n]) for i in ranked]


def summary(delta: np.ndarray, flows: Sequence[Flow]) -> dict:
    """One result row (percentage points): ``mean_diag_change_pp``, ``mean_flip_pp``, ``flow_<r>`` and
    ``flow_<r>_pp`` for each top flow ``r`` (1-based)."""
    delta = np.asarray(delta, dtype=np.float64)
    present = ~np.all(np.isnan(delta), axis=1)
    off = delta.copy()
    np.fill_diagonal(off, 0.0)
    row = {
        "classes_present": int(present.sum()),
        "mean_diag_change_pp": 100.0 * float(np.nanmean(np.diag(delta)[present])) if present.any() else float("nan"),
        "mean_flip_pp": 100.0 * float(np.clip(off[present], 0, None).sum(axis=1).mean()) if present.any()
        else float("nan"),
    }
    for r, flow in enumerate(flows, start=1):
        row[f"flow_{r}"] = f"{flow.src_name}\u2192{flow.dst_name}"
        row[f"flow_{r}_pp"] = 100.0 * flow.delta
    return row


def plot_heatmap(delta: np.ndarray, path: str | os.PathLike, class_names: Sequence[str] | None = None,
                 title: str | None = None, annotate_pp: float = 1.0) -> Path:  # pragma: no mutate block (a figure)
    """Heat map of ``delta`` in percentage points (rows = source label, columns = prediction) with a
    diverging colormap centred at 0; absent label rows are grey; cells with |value| >= ``annotate_pp``
    are labelled. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    delta = 100.0 * np.asarray(delta, dtype=np.float64)
    n = delta.shape[0]
    names = tuple(class_names) if class_names is not None else class_names_for(n)
    bound = float(np.nanmax(np.abs(delta))) if np.any(np.isfinite(delta)) else 0.0
    bound = max(bound, 1e-3)
    cmap = matplotlib.colormaps["RdBu_r"].copy()
    cmap.set_bad("0.85")
    side = max(4.0, 0.38 * n + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    try:
        im = ax.imshow(np.ma.masked_invalid(delta), cmap=cmap, norm=TwoSlopeNorm(0.0, -bound, bound))
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("source label")
        if title:
            ax.set_title(title, fontsize=9)
        rows, cols = np.nonzero(np.isfinite(delta) & (np.abs(delta) >= annotate_pp))
        for i, j in zip(rows, cols):
            ax.text(j, i, f"{delta[i, j]:+.0f}", ha="center", va="center", fontsize=6,
                    color="white" if abs(delta[i, j]) > 0.6 * bound else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="\u0394 % of label pixels (refined \u2212 reference)")
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def semantic_distortion(segmenter_path: str | os.PathLike, source: str | os.PathLike, images: str | os.PathLike,
                        reference_images: str | os.PathLike | None = None,
                        reference_confusion: str | os.PathLike | None = None, split: str = "train",
                        limit: int | None = None, top: int = 10, order: str = "increase", batch_size: int = 1,
                        workers: int = 0, device: str | None = None,
                        amp: bool = True) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, list[Flow]]:
    """Segment ``images`` and the reference set with one segmenter; returns
    (row, delta, cm_refined, cm_reference, flows). Reference: ``reference_confusion`` (.npy) if given,
    else ``reference_images`` (folder with the source stems), else the raw source images."""
    from .fcn_score import segment_confusion, source_samples

    refined = source_samples(source, split, images, limit)
    reference = None
    if reference_confusion is None:
        reference = source_samples(source, split, reference_images, limit)
    from segmenters.io import default_device
    from segmenters.loader import load_segmenter

    segmenter = load_segmenter(segmenter_path, device=device or default_device(), amp=amp)
    n = segmenter.num_classes
    if reference_confusion is not None:
        cm_reference = np.load(reference_confusion)
        if cm_reference.shape != (n, n):
            raise ValueError(f"{reference_confusion}: confusion of shape {cm_reference.shape}, the segmenter "
                             f"{segmenter_path} has {n} classes; pass the .confusion.npy of the same segmenter")
        reference_name = str(reference_confusion)
    else:
        cm_reference = segment_confusion(segmenter, reference, batch_size, workers)
        reference_name = str(reference_images) if reference_images is not None else "source"
    cm_refined = segment_confusion(segmenter, refined, batch_size, workers)
    delta = distortion_matrix(cm_refined, cm_reference)
    flows = top_flows(delta, top, order, class_names_for(n))
    row = summary(delta, flows)
    row = {"images": str(images), "reference": reference_name, "n_images": len(refined),
           "segmenter": str(segmenter_path), **row}
    return row, delta, cm_refined, cm_reference, flows


__all__ = ["Flow", "distortion_matrix", "plot_heatmap", "row_normalise", "semantic_distortion", "summary",
           "top_flows"]
