"""Class-balanced cropping (CBC) of target pseudo-labels and rare class sampling (RCS) of the source.

Both come from SePiCo's GTA->Cityscapes recipe (docs/reference.md §9.1; RCS is DAFormer's).

**CBC** (SePiCo ``ours_transforms.RandomCrop`` with ``prod=True``): the target image arrives uncropped
(the pipeline only resizes it to ``target_scale``); after the teacher has labelled it, ``tries`` (10)
random boxes of the crop size are drawn per image, each scored on its pseudo-label: with n_k the
pixel count of class k in the box (ignore excluded), a box is *balanced* when it holds more than one
class and ``max_k n_k / sum_k n_k < cat_max_ratio`` (0.75); a balanced box scores
``sum_{k: n_k > 1} log n_k``, an unbalanced one 0; the first box with the highest score wins (so
without a balanced box the first random box is kept, as in the reference). The boxes' class counts
come from one integral image (summed-area table) of the one-hot pseudo-label, so the cost does not
grow with ``tries`` and no Python loop touches pixels (:func:`class_balanced_crop_boxes`).

**RCS** (DAFormer ``UDADataset.get_rare_class_sample``): a source class c is drawn with

    P(c) = softmax_c((1 - f_c) / T),      f_c = N_c / sum_k N_k      (T = 0.01),

over the classes present in the source (N_c its pixels), then a source image uniformly among those
holding more than ``min_pixels`` (3000) pixels of c; the image is reloaded (new random crop) up to
10 times until its crop holds more than ``min_pixels * min_crop_ratio`` (0.5) pixels of c.

Choices:

* Pixel counts are taken from the prepared label files at their stored resolution, as DAFormer
  counts GTA5's 1914x1052 labels (the crop check counts the crop after the pipeline's resize, also as
  DAFormer). ``min_pixels`` is therefore in label-file pixels: 3000 of GTA5's 2.01 Mpx (0.15 % of an
  image). The tiny preset (minicity, 256x128 = 32,768 px labels) scales it by the area ratio:
  3000 * 32768 / (1914 * 1052) = 48.8 -> 50 (``segmenters/configs/*_tiny.py``).
* Per-image counts are computed once when the dataset is built (one ``cv2.imread`` + ``bincount`` per
  label, threads); their sum is exactly the split's ``class_stats.json`` pixels, which give f_c.
* A class present in the source but with no image above ``min_pixels`` is left out (DAFormer asserts
  instead) and the others' probabilities are renormalised; a warning names it.
* The draw for dataset index i is seeded by ``(seed, i)``, so a run is reproducible for any sampler
  and a resumed run draws the same classes; the target partner is :class:`UDADataset`'s.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmseg.registry import DATASETS  # noqa: E402

from domains.prepared import PreparedDataError  # noqa: E402

from ..datasets import UDADataset  # noqa: E402

logger = logging.getLogger(__name__)

from domains.labels import IGNORE_INDEX  # noqa: E402  (one definition: the label tables)
#: how many times an RCS source sample is reloaded until its crop holds enough pixels of the class
RCS_CROP_TRIES = 10
#: RCS random stream id (keeps RCS draws independent of other (seed, index)-seeded draws)
_RCS_STREAM = 0x5C5


# --------------------------------------------------------------------------------------------------
# class-balanced cropping


class CropBoxes(NamedTuple):
    """Per-image crop boxes ``(B, 4)`` long ``(y1, y2, x1, x2)`` and whether each was balanced ``(B,)``."""

    boxes: Tensor
    balanced: Tensor


def draw_crop_offsets(batch: int, height: int, width: int, crop_size: Sequence[int], tries: int,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Uniform top-left corners ``(y1, x1)``, each ``(batch, tries)``, of ``crop_size`` (h, w) boxes in
    a ``height x width`` image (mmseg ``RandomCrop.get_crop_bbox``); a side shorter than the crop gives 0."""
    ch, cw = int(crop_size[0]), int(crop_size[1])
    y1 = torch.randint(0, max(height - ch, 0) + 1, (batch, tries), generator=generator)
    x1 = torch.randint(0, max(width - cw, 0) + 1, (batch, tries), generator=generator)
    return y1, x1


def box_class_counts(labels: Tensor, y1: Tensor, x1: Tensor, crop_size: Sequence[int], num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pixels of each class in each box: ``(B, T, C)`` int64 for labels ``(B, H, W)`` and corners
    ``(B, T)``. Labels outside ``[0, num_classes)`` (``ignore_index``) are not counted.

    One summed-area table of the one-hot labels per image, four look-ups per box (memory
    ``B * C * H * W`` int32, independent of the number of boxes)."""
    if labels.dim() != 3:
        raise ValueError(f"box_class_counts: labels must be (B, H, W), got {tuple(labels.shape)}")
    b, h, w = labels.shape
    ch, cw = min(int(crop_size[0]), h), min(int(crop_size[1]), w)
    lab = labels.long()
    valid = (lab >= 0) & (lab < num_classes)
    onehot = torch.zeros(b, num_classes, h, w, dtype=torch.int32, device=labels.device)
    onehot.scatter_(1, lab.clamp(0, num_classes - 1)[:, None], valid[:, None].to(torch.int32))
    # S[y, x] = pixels in [0:y, 0:x] (a zero row and column in front)
    table = F.pad(onehot.cumsum(2, dtype=torch.int32).cumsum(3, dtype=torch.int32), (1, 0, 1, 0))
    y1, x1 = y1.to(labels.device).long(), x1.to(labels.device).long()
    y2, x2 = y1 + ch, x1 + cw
    flat = table.flatten(2)  # (B, C, (H+1)*(W+1))

    def at(y: Tensor, x: Tensor) -> Tensor:  # (B, T) corners -> (B, T, C)
        idx = (y * (w + 1) + x)[:, None, :].expand(-1, num_classes, -1)
        return flat.gather(2, idx).permute(0, 2, 1)

    return (at(y2, x2) - at(y1, x2) - at(y2, x1) + at(y1, x1)).long()


def cbc_scores(counts: Tensor, cat_max_ratio: float = 0.75) -> tuple[Tensor, Tensor]:
    """CBC score of boxes from their class counts ``(..., C)``: ``sum_{n_k > 1} log n_k`` when the box
    holds > 1 class and its largest class is < ``cat_max_ratio`` of the counted pixels, else 0.
    Returns ``(score, balanced)`` of shape ``(...)``."""
    counts = counts.double()
    total = counts.sum(-1)
    present = (counts > 0).sum(-1)
    balanced = (present > 1) & (counts.max(-1).values < cat_max_ratio * total)
    score = torch.where(counts > 1, counts.clamp(min=1).log(), torch.zeros_like(counts)).sum(-1)
    return torch.where(balanced, score, torch.zeros_like(score)), balanced


def class_balanced_crop_boxes(pseudo_labels: Tensor, crop_size: Sequence[int], num_classes: int,
                              cat_max_ratio: float = 0.75, tries: int = 10,
                              generator: torch.Generator | None = None,
                              ignore_index: int = IGNORE_INDEX) -> CropBoxes:
    """CBC boxes for a batch of pseudo-labels ``(B, H, W)`` (module docstring): ``tries`` random boxes
    per image, the first with the best :func:`cbc_scores` is kept. ``generator`` is a CPU generator."""
    if pseudo_labels.dim() != 3:
        raise ValueError(f"class_balanced_crop_boxes: pseudo_labels must be (B, H, W), got "
                         f"{tuple(pseudo_labels.shape)}")
    if tries < 1:
        raise ValueError(f"class_balanced_crop_boxes: tries must be >= 1, got {tries}")
    if not 0.0 < cat_max_ratio <= 1.0:
        raise ValueError(f"class_balanced_crop_boxes: cat_max_ratio must lie in (0, 1], got {cat_max_ratio}")
    b, h, w = pseudo_labels.shape
    y1, x1 = draw_crop_offsets(b, h, w, crop_size, tries, generator)
    counts = box_class_counts(pseudo_labels, y1, x1, crop_size, num_classes, ignore_index)
    score, balanced = cbc_scores(counts, cat_max_ratio)
    best = score.argmax(dim=1).cpu()  # first maximum (ties -> earliest try, like the reference's ">")
    rows = torch.arange(b)
    by1, bx1 = y1[rows, best], x1[rows, best]
    ch, cw = min(int(crop_size[0]), h), min(int(crop_size[1]), w)
    boxes = torch.stack([by1, by1 + ch, bx1, bx1 + cw], dim=1)
    return CropBoxes(boxes, balanced.cpu()[rows, best])


def crop_batch(tensor: Tensor, boxes: Tensor) -> Tensor:
    """``tensor[i, ..., y1:y2, x1:x2]`` for each image i (all boxes the same size), stacked."""
    if tensor.shape[0] != boxes.shape[0]:
        raise ValueError(f"crop_batch: {tensor.shape[0]} images but {boxes.shape[0]} boxes")
    return torch.stack([t[..., y1:y2, x1:x2] for t, (y1, y2, x1, x2) in zip(tensor, boxes.long().tolist())])


# --------------------------------------------------------------------------------------------------
# rare class sampling


def rcs_class_probabilities(class_pixels: Sequence[float] | np.ndarray,
                            temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, P)``: the classes with pixels and ``P(c) = softmax((1 - f_c) / T)`` over them,
    f_c = N_c / sum N (DAFormer ``get_rcs_class_probs``)."""
    if temperature <= 0:
        raise ValueError(f"rcs temperature must be > 0, got {temperature}")
    pixels = np.asarray(class_pixels, dtype=np.float64)
    classes = np.flatnonzero(pixels > 0)
    if classes.size == 0:
        raise ValueError("rare class sampling: the source has no labelled pixels")
    freq = pixels[classes] / pixels[classes].sum()
    logits = (1.0 - freq) / temperature
    p = np.exp(logits - logits.max())
    return classes, p / p.sum()


def _label_counts(path: str, num_classes: int) -> np.ndarray:
    import cv2

    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2:
        raise PreparedDataError(f"{path}: not a single-channel trainId label PNG (rare class sampling reads "
                                "the prepared labels; re-run `python -m domains prepare`)")
    return np.bincount(label.ravel(), minlength=256)[:num_classes].astype(np.int64)


def sample_class_pixels(label_paths: Sequence[str], num_classes: int, workers: int | None = None) -> np.ndarray:
    """``(N, C)`` pixels of each class in each label file (uint8 trainIds; 255 and ids >= C not counted)."""
    workers = workers or min(8, os.cpu_count() or 1)
    if not label_paths:
        return np.zeros((0, num_classes), dtype=np.int64)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # cv2 decodes without the GIL
        rows = list(pool.map(lambda p: _label_counts(p, num_classes), label_paths, chunksize=16))
    return np.stack(rows)


class RareClassSampling:
    """The RCS table: classes, their probabilities and, per class, the sample indices with more than
    ``min_pixels`` pixels of it (module docstring)."""

    def __init__(self, sample_pixels: np.ndarray, temperature: float = 0.01, min_pixels: int = 3000,
                 min_crop_ratio: float = 0.5) -> None:
        sample_pixels = np.asarray(sample_pixels)
        if sample_pixels.ndim != 2 or sample_pixels.shape[0] == 0:
            raise ValueError(f"rare class sampling needs (N, C) per-sample class pixels, got {sample_pixels.shape}")
        if min_pixels < 0 or not 0.0 <= min_crop_ratio <= 1.0:
            raise ValueError(f"rare class sampling: min_pixels must be >= 0 and min_crop_ratio in [0, 1], got "
                             f"{min_pixels}, {min_crop_ratio}")
        self.temperature, self.min_pixels = float(temperature), int(min_pixels)
        self.min_crop_ratio = float(min_crop_ratio)
        classes, probs = rcs_class_probabilities(sample_pixels.sum(0), self.temperature)
        samples = {int(c): np.flatnonzero(sample_pixels[:, c] > self.min_pixels) for c in classes}
        dropped = [c for c, idx in samples.items() if idx.size == 0]
        if dropped:
            logger.warning("rare class sampling: classes %s have no source image with more than %d pixels and are "
                           "never drawn (lower rcs_min_pixels to include them)", dropped, self.min_pixels)
        keep = np.array([samples[int(c)].size > 0 for c in classes])
        if not keep.any():
            raise ValueError(f"rare class sampling: no source image holds more than {self.min_pixels} pixels of any "
                             "class; lower uda.sepico.rcs_min_pixels")
        self.classes = classes[keep]
        self.probs = probs[keep] / probs[keep].sum()
        self.samples_with_class = {int(c): samples[int(c)] for c in self.classes}

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """A class c ~ P and a sample index holding more than ``min_pixels`` pixels of it."""
        c = int(self.classes[rng.choice(len(self.classes), p=self.probs)])
        pool = self.samples_with_class[c]
        return c, int(pool[rng.integers(len(pool))])

    def crop_has_enough(self, label: Tensor | np.ndarray, cls: int) -> bool:
        """Whether a (cropped) label map holds more than ``min_pixels * min_crop_ratio`` pixels of ``cls``."""
        return int((label == cls).sum()) > self.min_pixels * self.min_crop_ratio


@DATASETS.register_module(force=True)
class RCSUDADataset(UDADataset):
    """:class:`~segmenters.datasets.UDADataset` whose source sample is drawn by rare class sampling.

    Args (beyond ``UDADataset``'s):
        rare_class_sampling: ``dict(class_temp=0.01, min_pixels=3000, min_crop_ratio=0.5)``.
        count_workers: threads counting the source labels' classes (default min(8, cpus)).
    """

    def __init__(self, source: dict | Any, target: dict | Any, seed: int = 0, length: int | None = None,
                 rare_class_sampling: dict | None = None, count_workers: int | None = None) -> None:
        super().__init__(source, target, seed=seed, length=length)
        rcs = dict(rare_class_sampling or {})
        unknown = sorted(set(rcs) - {"class_temp", "min_pixels", "min_crop_ratio"})
        if unknown:
            raise ValueError(f"rare_class_sampling.{unknown[0]}: unknown key (class_temp, min_pixels, min_crop_ratio)")
        paths = []
        for i in range(len(self.source)):
            path = self.source.get_data_info(i).get("seg_map_path")
            if path is None:
                raise PreparedDataError("rare class sampling needs a labelled source dataset")
            paths.append(path)
        start = time.perf_counter()
        self.sample_pixels = sample_class_pixels(paths, len(self.metainfo["classes"]), count_workers)
        self.rcs = RareClassSampling(self.sample_pixels, float(rcs.get("class_temp", 0.01)),
                                     int(rcs.get("min_pixels", 3000)), float(rcs.get("min_crop_ratio", 0.5)))
        logger.info("rare class sampling over %d source labels (%.1f s): P(c) = %s", len(paths),
                    time.perf_counter() - start,
                    ", ".join(f"{c}:{p:.3f}" for c, p in zip(self.rcs.classes, self.rcs.probs)))

    def source_draw(self, index: int) -> tuple[int, int]:
        """(class, source index) of dataset index ``index`` (seeded by ``(seed, index)``)."""
        return self.rcs.draw(np.random.default_rng([self.seed, int(index), _RCS_STREAM]))

    def __getitem__(self, index: int) -> dict:
        cls, i = self.source_draw(index)
        src = self.source[i]
        if self.rcs.min_crop_ratio > 0:
            for _ in range(RCS_CROP_TRIES):
                if self.rcs.crop_has_enough(src["data_samples"].gt_sem_seg.data, cls):
                    break
                src = self.source[i]  # new random crop
        return dict(src=src, trg=self.target[self.target_index(index)])
