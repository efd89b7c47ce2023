"""Unpaired image data for the translators: listing, reading, deterministic random crops.

A domain is either a prepared dataset (``data/prepared/<name>``, read through
:class:`domains.prepared.PreparedDataset`) or a plain folder of images (searched recursively;
the stem is the relative path without suffix). Images become float tensors in [-1, 1].
An unpaired dataset root in the CycleGAN/CUT layout (``X/trainA``, ``X/trainB``, ``X/testA``,
``X/testB``, e.g. horse2zebra) gives two such folders: :func:`unpaired_dirs`.

Determinism: the batch of iteration ``step`` is a pure function of ``(seed, step)``. Source images
are visited in a fresh permutation per epoch (``numpy`` Generator seeded with (seed, 0, epoch)),
target images likewise with their own stream, and the crop/flip draws of a step come from a
Generator seeded with (seed, 1, step). So a resumed run needs no loader replay and is bit-identical.
Multi-process training (``rank``/``world_size``, translators/distributed.py): rank r of W takes the
r-th block of ``batch_size`` positions of the W * batch_size images a single process would visit
at that step (disjoint across ranks, as a DistributedSampler), with crop/flip draws from
(seed, 1, step, r) -- so ranks see different images and crops, and W = 1 is unchanged.

Crops (``CropSpec``): CUT takes one native-resolution crop. SemST (the paper's Eq. 4-5 leave the
geometry open; our choice) takes, per image,

* a **global window** of ``round(h_g * r) x round(w_g * r)`` native pixels (``r = global_ratio``,
  shrunk if the image is smaller) at a uniformly random position, downsampled (bilinear,
  antialiased) to ``h_g x w_g`` -> ``X_g`` (Eq. 4);
* a **local crop** ``h_l x w_l`` at native resolution, uniformly placed *inside* the global window
  -> ``X_l`` (Eq. 5), and ``box = (top, left, win_h, win_w)``: the local crop's offset inside the
  window and the window size, which the method uses to align Y_g / M_s with Y_l (see
  :func:`translators.methods.semst.window_grid`).

A horizontal flip (p = 0.5) is applied to the whole image before cropping, so both crops agree.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from domains.prepared import PreparedDataError, PreparedDataset

log = logging.getLogger(__name__)
IMG_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataError(RuntimeError):
    """Bad or missing input images; the message names the file or folder."""


@dataclass(frozen=True)
class ImageItem:
    stem: str
    path: Path


@dataclass(frozen=True)
class Domain:
    """Images of one domain plus where they came from (for manifests and output names)."""

    root: Path
    split: str
    items: list[ImageItem]
    name: str
    img_suffix: str | None  # the prepared split's image suffix, None for plain folders


def open_domain(root: str | Path, split: str = "train") -> Domain:
    """List the images of a prepared dataset split or a plain image folder (error if empty)."""
    root = Path(root)
    if (root / "meta.json").is_file():
        try:
            ds = PreparedDataset.load(root)
            samples = ds.samples(split)
            suffix = ds.img_suffix(split)
        except PreparedDataError as err:
            raise DataError(str(err)) from err
        items = [ImageItem(s.stem, s.image) for s in samples]
        missing = [str(it.path) for it in items if not it.path.is_file()]
        if missing:
            raise DataError(f"{len(missing)} image(s) listed in {ds.split_file(split)} are missing, "
                            f"e.g. {missing[0]}; check meta.json's image_dir or re-run prepare")
        name, img_suffix = ds.name, suffix
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTS and p.is_file()
                       and not p.name.startswith("."))
        items = [ImageItem(p.relative_to(root).with_suffix("").as_posix(), p) for p in paths]
        name, img_suffix = root.name, None
    else:
        raise DataError(f"{root} is neither a prepared dataset (no meta.json) nor an image folder")
    if not items:
        raise DataError(f"no images found in {root} (split '{split}'); the domain is empty -- "
                        f"check the path or the split list")
    return Domain(root=root, split=split, items=items, name=name, img_suffix=img_suffix)


#: sub-folders of an unpaired dataset root (CycleGAN/CUT layout, e.g. horse2zebra, maps)
UNPAIRED_PHASES = ("train", "test")


def unpaired_dirs(root: str | Path, phase: str = "train") -> tuple[Path, Path]:
    """``(<root>/<phase>A, <root>/<phase>B)`` of an unpaired dataset root in the CycleGAN/CUT layout
    (``trainA``, ``trainB``, ``testA``, ``testB``: one image folder per domain and phase, as
    horse2zebra or maps ship). A -> B is the translation direction. Raises DataError naming the
    missing folder and the folders that are there."""
    root = Path(root)
    if phase not in UNPAIRED_PHASES:
        raise DataError(f"unpaired phase must be one of {UNPAIRED_PHASES}, got {phase!r}")
    if not root.is_dir():
        raise DataError(f"unpaired dataset root {root} does not exist; expected {root}/{{trainA,trainB,testA,testB}}")
    dirs = (root / f"{phase}A", root / f"{phase}B")
    missing = [d.name for d in dirs if not d.is_dir()]
    if missing:
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) or ["no folders"]
        raise DataError(f"unpaired dataset root {root} lacks {', '.join(missing)} (it has: {', '.join(present)}); "
                        f"the layout is {root}/{phase}A (source domain) and {root}/{phase}B (target domain) "
                        "with images, as in the CycleGAN/CUT datasets (e.g. horse2zebra)")
    return dirs


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); an unreadable file raises DataError naming it."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise DataError(f"cannot read image {path}: {err}") from err


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float CHW in [-1, 1] -> uint8 HWC."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) or (C, H, W), antialiased when shrinking. Used by both the
    loader (global crops) and inference (global branch), so the two see identical inputs."""
    squeeze = x.dim() == 3
    x4 = x[None] if squeeze else x
    if tuple(x4.shape[-2:]) != tuple(size):
        shrink = size[0] < x4.shape[-2] or size[1] < x4.shape[-1]
        x4 = F.interpolate(x4, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return x4[0] if squeeze else x4


def resize_short(img: np.ndarray, short: int | None) -> np.ndarray:
    if short is None or min(img.shape[:2]) == short:
        return img
    h, w = img.shape[:2]
    s = short / min(h, w)
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC))


@dataclass(frozen=True)
class CropSpec:
    """``local`` native crop (h, w); ``global_`` downsampled global crop (h, w) or None; ``ratio``."""

    local: tuple[int, int]
    global_: tuple[int, int] | None = None
    ratio: float = 2.0


def crop_image(img: np.ndarray, spec: CropSpec, rng: np.random.Generator, flip: bool) -> dict[str, torch.Tensor]:
    """Random crops of one image per ``spec`` (see module docstring). Keys: ``l``, and ``g``/``box``
    for a global spec."""
    if flip and rng.random() < 0.5:
        img = img[:, ::-1]
    h, w = img.shape[:2]
    lh, lw = spec.local
    if spec.global_ is None:
        need_h, need_w = lh, lw
    else:
        gh, gw = spec.global_
        need_h, need_w = max(lh, gh), max(lw, gw)
    if h < need_h or w < need_w:  # upscale images smaller than a crop (rare; logged once per call site)
        s = max(need_h / h, need_w / w)
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize(
            (max(need_w, round(w * s)), max(need_h, round(h * s))), Image.BICUBIC))
        h, w = img.shape[:2]
    out: dict[str, torch.Tensor] = {}
    if spec.global_ is None:
        y = int(rng.integers(0, h - lh + 1))
        x = int(rng.integers(0, w - lw + 1))
        out["l"] = to_tensor(img[y:y + lh, x:x + lw])
        return out
    r = min(spec.ratio, h / gh, w / gw)
    win_h, win_w = max(lh, min(h, round(gh * r))), max(lw, min(w, round(gw * r)))
    gy = int(rng.integers(0, h - win_h + 1))
    gx = int(rng.integers(0, w - win_w + 1))
    ly = int(rng.integers(0, win_h - lh + 1))
    lx = int(rng.integers(0, win_w - lw + 1))
    window = to_tensor(img[gy:gy + win_h, gx:gx + win_w])
    out["g"] = resize(window, (gh, gw))
    out["l"] = window[:, ly:ly + lh, lx:lx + lw].clone()
    out["box"] = torch.tensor([ly, lx, win_h, win_w], dtype=torch.float32)
    return out


class UnpairedBatches:
    """``batch(step)`` -> dict of stacked tensors ``A_l, B_l`` (+ ``A_g, B_g, A_box, B_box``).

    Pure in (seed, step); optional one-step-ahead prefetch in a background thread (PIL decoding
    releases the GIL). Images are re-read from disk each time (bounded memory for any dataset)."""

    def __init__(self, source: Domain, target: Domain, spec: CropSpec, batch_size: int, seed: int,
                 flip: bool = True, resize_short_side: int | None = None, prefetch: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank, self.world_size = rank, world_size
        self.source, self.target, self.spec = source, target, spec
        self.batch_size, self.seed, self.flip, self.short = batch_size, seed, flip, resize_short_side
        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="prefetch") if prefetch else None
        self._pending: dict[int, cf.Future] = {}
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _index(self, n: int, stream: int, pos: int) -> int:
        epoch, i = divmod(pos, n)
        perm = self._perms.get((stream, epoch))
        if perm is None:
            if len(self._perms) > 8:
                self._perms.clear()
            perm = self._perms[(stream, epoch)] = np.random.default_rng([self.seed, stream, epoch]).permutation(n)
        return int(perm[i])

    def _make(self, step: int) -> dict[str, torch.Tensor]:
        key = [self.seed, 1, step] if self.world_size == 1 else [self.seed, 1, step, self.rank]
        rng = np.random.default_rng(key)
        parts: dict[str, list[torch.Tensor]] = {}
        for b in range(self.batch_size):
            pos = ((step - 1) * self.world_size + self.rank) * self.batch_size + b
            for dom, domain, stream in (("A", self.source, 10), ("B", self.target, 20)):
                item = domain.items[self._index(len(domain.items), stream, pos)]
                img = resize_short(read_image(item.path), self.short)
                for k, v in crop_image(img, self.spec, rng, self.flip).items():
                    parts.setdefault(f"{dom}_{k}", []).append(v)
        return {k: torch.stack(v) for k, v in parts.items()}

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        if self._pool is None:
            return self._make(step)
        fut = self._pending.pop(step, None) or self._pool.submit(self._make, step)
        self._pending = {step + 1: self._pool.submit(self._make, step + 1)}
        return fut.result()

    def close(self) -> None:
        if self._pool is not None:
            for fut in self._pending.values():
                fut.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
