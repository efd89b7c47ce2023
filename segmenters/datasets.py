"""MMSeg datasets over the prepared-dataset contract (domains/prepared.py) and the UDA pair wrapper.

* :class:`PreparedSegDataset` - a ``BaseSegDataset`` whose ``data_list`` comes from
  ``PreparedDataset.samples(split)``: GTA5, SYNTHIA, Cityscapes and refined source images (same
  stems, swapped in with ``image_dir``) all work; ``label_dir`` swaps in a pseudo-label folder
  (``<dir>/<stem>.png``); ``labelled=False`` packs an all-255 (ignore) label map so UDA targets go
  through the same pipeline.
* :class:`LoadPreparedAnnotations` - ``LoadAnnotations`` that builds the all-ignore map for
  unlabelled samples.
* :class:`UDADataset` - ``dict(src=<packed source sample>, trg=<packed target sample>)`` per
  index; the target index is a deterministic function of the index and a seed (works with mmengine's
  ``InfiniteSampler``; ``pseudo_collate`` collates the nested dicts as is).
* :func:`train_pipeline` / :func:`val_pipeline` - pipelines that resize image AND label to a fixed
  ``(w, h)`` with ``keep_ratio=False`` (so refined images of any size stay aligned with their
  labels; docs/reference.md §9.3), then crop/flip for training.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import compat

compat.install_mmcv_ops_stand_in()

from mmengine.dataset import BaseDataset  # noqa: E402
from mmseg.datasets import BaseSegDataset, CityscapesDataset  # noqa: E402
from mmseg.datasets.transforms import LoadAnnotations  # noqa: E402
from mmseg.registry import DATASETS, TRANSFORMS  # noqa: E402

from domains.prepared import PreparedDataError, PreparedDataset  # noqa: E402

logger = logging.getLogger(__name__)

from domains.labels import IGNORE_INDEX  # noqa: E402  (one definition: the label tables)
PSEUDO_SUFFIX = ".png"
#: how many missing files an error message names
MAX_NAMED = 5


def _missing_message(what: str, folder: Path | str, missing: Sequence[str], total: int, hint: str) -> str:
    named = ", ".join(missing[:MAX_NAMED])
    more = f" (and {len(missing) - MAX_NAMED} more)" if len(missing) > MAX_NAMED else ""
    return f"{folder}: {len(missing)} of {total} {what} missing: {named}{more}; {hint}"


def check_pseudo_dir(label_dir: str | Path, stems: Sequence[str]) -> None:
    """Raise :class:`PreparedDataError` when ``label_dir`` is missing, empty, or lacks some stems."""
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise PreparedDataError(f"pseudo-label folder {label_dir} does not exist; create it with "
                                f"`python -m segmenters pseudolabel --checkpoint ... --out {label_dir}`")
    if not any(label_dir.rglob(f"*{PSEUDO_SUFFIX}")):
        raise PreparedDataError(f"pseudo-label folder {label_dir} is empty (no *{PSEUDO_SUFFIX} files); "
                                "re-run `python -m segmenters pseudolabel` for this round")
    missing = [s for s in stems if not (label_dir / f"{s}{PSEUDO_SUFFIX}").is_file()]
    if missing:
        raise PreparedDataError(_missing_message(
            "pseudo-labels", label_dir, missing, len(stems),
            "the folder does not match the target split; regenerate it with `python -m segmenters pseudolabel`"))


@TRANSFORMS.register_module(force=True)
class LoadPreparedAnnotations(LoadAnnotations):
    """``LoadAnnotations`` that packs an all-ignore (255) map when ``seg_map_path`` is None.

    Put it right after ``LoadImageFromFile``: the ignore map takes the loaded image's size.
    """

    def _load_seg_map(self, results: dict) -> None:
        if results.get("seg_map_path") is None:
            h, w = results["img"].shape[:2]
            results["gt_seg_map"] = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
            results["seg_fields"].append("gt_seg_map")
            return
        super()._load_seg_map(results)


def train_pipeline(scale: Sequence[int], crop_size: Sequence[int], flip_prob: float = 0.5,
                   cat_max_ratio: float = 1.0) -> list[dict]:
    """Training pipeline: load, resize image and label to ``scale`` (w, h) exactly, crop ``crop_size``
    (h, w), flip, pack. A crop as large as the resized image is a no-op (classic full-image training)."""
    return [
        dict(type="LoadImageFromFile"),
        dict(type="LoadPreparedAnnotations"),
        dict(type="Resize", scale=tuple(int(s) for s in scale), keep_ratio=False),
        dict(type="RandomCrop", crop_size=tuple(int(s) for s in crop_size), cat_max_ratio=cat_max_ratio),
        dict(type="RandomFlip", prob=flip_prob),
        dict(type="PackSegInputs"),
    ]


def val_pipeline(scale: Sequence[int]) -> list[dict]:
    """Validation pipeline: image resized to ``scale`` (w, h), label kept at full resolution (the
    segmentor resizes its prediction back to the original size, so IoU is at label resolution)."""
    return [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=tuple(int(s) for s in scale), keep_ratio=False),
        dict(type="LoadPreparedAnnotations"),
        dict(type="PackSegInputs"),
    ]


@DATASETS.register_module(force=True)
class PreparedSegDataset(BaseSegDataset):
    """One split of a prepared dataset (Cityscapes' 19 trainId classes).

    Args:
        prepared_root: ``data/prepared/<name>`` folder.
        split: split name in its meta.json (``train``, ``val``, ...).
        image_dir: another folder with the same stems and image suffix (refined source images).
        label_dir: pseudo-label folder, ``<label_dir>/<stem>.png`` (uint8 trainIds, 255 = ignore).
        labelled: False packs all-ignore label maps (unlabelled UDA target); True requires labels
            (the split's own, or ``label_dir``).
    """

    METAINFO = copy.deepcopy(CityscapesDataset.METAINFO)

    def __init__(self, prepared_root: str, split: str, image_dir: str | None = None,
                 label_dir: str | None = None, labelled: bool = True, **kwargs: Any) -> None:
        self.prepared = PreparedDataset.load(prepared_root)
        self.split = split
        self.image_dir = Path(image_dir) if image_dir else None
        self.label_dir = Path(label_dir) if label_dir else None
        self.labelled = bool(labelled)
        if self.label_dir is None and self.labelled and not self.prepared.is_labelled(split):
            raise PreparedDataError(
                f"split '{split}' of {self.prepared.root} has no labels (meta.json says labelled: false); "
                "use a labelled split, or pass a pseudo-label folder")
        kwargs.setdefault("img_suffix", self.prepared.img_suffix(split))
        kwargs.setdefault("seg_map_suffix", self.prepared.label_suffix)
        super().__init__(ann_file="", data_root=None, data_prefix=dict(img_path="", seg_map_path=""),
                         ignore_index=IGNORE_INDEX, reduce_zero_label=False, **kwargs)

    def load_data_list(self) -> list[dict]:
        samples = self.prepared.samples(self.split, image_dir=self.image_dir)
        if not samples:
            raise PreparedDataError(f"split '{self.split}' of {self.prepared.root} is empty "
                                    f"({self.prepared.split_file(self.split)})")
        if self.image_dir is not None:
            if not self.image_dir.is_dir():
                raise PreparedDataError(f"image folder {self.image_dir} does not exist (refined images "
                                        f"for {self.prepared.root} split '{self.split}')")
            missing = [s.stem for s in samples if not s.image.is_file()]
            if missing:
                raise PreparedDataError(_missing_message(
                    "images", self.image_dir, missing, len(samples),
                    f"it must hold every stem of {self.prepared.split_file(self.split)} with suffix "
                    f"'{self.prepared.img_suffix(self.split)}' (re-run the refine step)"))
        stems = [s.stem for s in samples]
        if self.label_dir is not None:
            check_pseudo_dir(self.label_dir, stems)
        data_list = []
        for s in samples:
            if self.label_dir is not None:
                seg = str(self.label_dir / f"{s.stem}{PSEUDO_SUFFIX}")
            elif self.labelled:
                seg = str(s.label)
            else:
                seg = None
            data_list.append(dict(img_path=str(s.image), seg_map_path=seg, stem=s.stem,
                                  label_map=self.label_map, reduce_zero_label=False, seg_fields=[]))
        return data_list


@DATASETS.register_module(force=True)
class UDADataset:
    """Pairs of (source, target) samples: ``dataset[i] = dict(src=source[i % Ns], trg=target[j])``.

    ``j`` is a deterministic function of ``i`` and ``seed``: with ``e = i // Ns`` (the source pass
    the index belongs to) and ``r = i % Ns``, ``j = perm_e[r % Nt]`` where ``perm_e`` is a permutation
    of the target indices seeded by ``(seed, e)``. So every source pass sees a fresh, balanced
    pairing, and a run is reproducible for any sampler (mmengine's ``InfiniteSampler`` included).
    ``length`` (default ``Ns``) sets ``len(self)``; the training CLI sets it to the number of samples
    the whole run draws (rounded up to whole source passes) so later passes get new pairings.
    """

    def __init__(self, source: dict | BaseDataset, target: dict | BaseDataset, seed: int = 0,
                 length: int | None = None) -> None:
        self.source = DATASETS.build(source) if isinstance(source, dict) else source
        self.target = DATASETS.build(target) if isinstance(target, dict) else target
        self.seed = int(seed)
        ns = len(self.source)
        if ns == 0 or len(self.target) == 0:
            raise PreparedDataError("UDADataset needs a non-empty source and target dataset")
        self._length = int(length) if length else ns
        self._length = max(self._length, 1)

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self.source.metainfo)

    def full_init(self) -> None:
        for ds in (self.source, self.target):
            if hasattr(ds, "full_init"):
                ds.full_init()

    def __len__(self) -> int:
        return self._length

    @functools.lru_cache(maxsize=4)
    def _target_perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.target))

    def target_index(self, index: int) -> int:
        ns = len(self.source)
        epoch, r = divmod(int(index), ns)
        perm = self._target_perm(epoch)
        return int(perm[r % len(perm)])

    def __getitem__(self, index: int) -> dict:
        return dict(src=self.source[int(index) % len(self.source)], trg=self.target[self.target_index(index)])


def uda_length(num_source: int, max_iters: int, batch_size: int) -> int:
    """Samples a run draws, rounded up to whole source passes (``UDADataset(length=...)``)."""
    return num_source * max(1, math.ceil(max_iters * batch_size / max(num_source, 1)))
