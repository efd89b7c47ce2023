"""FID and KID between two image sets, for any feature extractor (:mod:`translators.metrics.features`).

* FID (Heusel et al. 2017; pytorch-fid ``calculate_frechet_distance``):
  ``||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})`` with ``scipy.linalg.sqrtm``; when the
  product is singular (non-finite root) ``eps * I`` is added to both covariances; the root's tiny
  imaginary part is dropped (error when a diagonal imaginary part exceeds 1e-3). S = unbiased
  covariance (``np.cov``, ddof 1).
* KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size``
  features drawn without replacement from each set (defaults 100 x 1000 as in torchmetrics /
  torch-fidelity; ``subset_size`` is clipped to the smaller set, as clean-fid does, and the used
  size is reported). Papers often print KID x 100.

Memory is bounded for any number of images: features are accumulated as float64 sums and
outer-product sums (:class:`FeatureStats`, around a shift taken from the first batch for numerical
stability), and KID keeps at most ``kid_max_samples`` features per set (uniform reservoir sample,
seeded) -- beyond that KID is estimated from that sample.

Values depend on resizing and file format (docs/reference.md §11.5): ours resizes bilinearly
to the extractor's input size (align_corners=False, no antialias, pytorch-fid's choice), on
float images decoded from PNG/JPEG with OpenCV.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .features import FeatureExtractor

from . import MetricsInputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class FIDInputError(MetricsInputError):
    """An image set is empty, unreadable or too small; the message names the folder or file."""


# ----------------------------------------------------------------------------------------- statistics

@dataclass
class FeatureStats:
    """Streaming mean / covariance of features (float64 sums) plus a bounded sample for KID."""

    dim: int
    kid_max_samples: int = 10_000
    seed: int = 0
    n: int = 0
    shift: np.ndarray | None = None
    sum: np.ndarray = field(init=False)
    outer: np.ndarray = field(init=False)
    sample: np.ndarray = field(init=False)
    _sample_len: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kid_max_samples < 2:
            raise ValueError(f"kid_max_samples must be >= 2, got {self.kid_max_samples}")
        self.sum = np.zeros(self.dim, dtype=np.float64)
        self.outer = np.zeros((self.dim, self.dim), dtype=np.float64)
        self.sample = np.empty((min(self.kid_max_samples, 1024), self.dim), dtype=np.float32)
        self._rng = np.random.default_rng(self.seed)

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        """Add a batch (B, dim) of features."""
        if isinstance(features, torch.Tensor):
            features = features.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (B, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("feature extractor returned non-finite values")
        if x.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = x.mean(axis=0)
        centred = x - self.shift
        self.sum += centred.sum(axis=0)
        self.outer += centred.T @ centred
        self._reservoir(x.astype(np.float32))
        self.n += x.shape[0]

    def _reservoir(self, x: np.ndarray) -> None:
        """Keep a uniform random sample of at most ``kid_max_samples`` rows (Algorithm R, vectorised)."""
        cap = self.kid_max_samples
        take = min(cap - self._sample_len, len(x))
        if take > 0:                                    # fill phase: keep every row
            if self._sample_len + take > len(self.sample):
                grown = np.empty((min(cap, max(2 * len(self.sample), self._sample_len + take)), self.dim),
                                 dtype=np.float32)
                grown[: self._sample_len] = self.sample[: self._sample_len]
                self.sample = grown
            self.sample[self._sample_len: self._sample_len + take] = x[:take]
            self._sample_len += take
        rest = x[take:]
        if len(rest):                                   # replace phase: row t survives with prob cap / (t + 1)
            seen = self.n + take + np.arange(len(rest))  # rows seen before each remaining row
            j = self._rng.integers(0, seen + 1)
            keep = j < cap
            self.sample[j[keep]] = rest[keep]

    @property
    def mean(self) -> np.ndarray:
        self._need(1)
        return self.shift + self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (ddof=1), same as ``np.cov(features, rowvar=False)``."""
        self._need(2)
        m = self.sum / self.n
        return (self.outer - self.n * np.outer(m, m)) / (self.n - 1)

    @property
    def kid_features(self) -> np.ndarray:
        """The kept features (all of them when ``n <= kid_max_samples``), in arrival order until the cap."""
        return self.sample[: self._sample_len]

    def _need(self, k: int) -> None:
        if self.n < k:
            raise FIDInputError(f"need at least {k} images for these statistics, got {self.n}")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """FID between Gaussians N(mu1, sigma1) and N(mu2, sigma2) (module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():            # singularity is handled below (scipy only warns)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(covmean)):
            logger.warning("FID: product of covariances is singular; adding %g to the diagonals", eps)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        worst = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: matrix square root has an imaginary component {worst:.3g}; "
                             "use more images than feature dimensions")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for all row pairs (KID's kernel)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples x (m, d) and y (n, d) with :func:`polynomial_kernel`.

    ``sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1)) - 2 sum_{i,j} k(x_i,y_j)/(mn)``.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("unbiased MMD^2 needs at least 2 samples per set")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid_from_features(x: np.ndarray, y: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float, int]:
    """KID mean and std over ``subsets`` subsets; returns (mean, std, used subset size).

    Each subset draws ``m = min(subset_size, len(x), len(y))`` rows of x and then of y without
    replacement (``np.random.default_rng(seed).choice``), so the draws are reproducible.
    """
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(int(subset_size), len(x), len(y))
    if m < 2:
        raise FIDInputError(f"KID needs at least 2 images per set, got {len(x)} and {len(y)}")
    if m < subset_size:
        logger.warning("KID: subset_size %d > smaller set (%d); using %d", subset_size, min(len(x), len(y)), m)
    rng = np.random.default_rng(seed)
    values = np.empty(int(subsets), dtype=np.float64)
    for s in range(int(subsets)):
        ix = rng.choice(len(x), m, replace=False)
        iy = rng.choice(len(y), m, replace=False)
        values[s] = mmd2_unbiased(x[ix], y[iy])
    return float(values.mean()), float(values.std()), m


# ------------------------------------------------------------------------------------------ images

def list_images(folder: str | os.PathLike) -> list[Path]:
    """All image files under ``folder`` (recursive, sorted); clear error when none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FIDInputError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not p.name.startswith("."))
    if not files:
        raise FIDInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return files


def prepared_images(root: str | os.PathLike, split: str) -> list[Path]:
    """Image files of a prepared dataset split (domains/prepared.py)."""
    from domains.prepared import PreparedDataset

    ds = PreparedDataset.load(root)
    files = [s.image for s in ds.samples(split)]
    if not files:
        raise FIDInputError(f"split '{split}' of {ds.root} is empty")
    return files


class _ImageSet(Dataset):
    """RGB float (3, h, w) in [0, 255], bilinearly resized to ``size`` (h, w) when given."""

    def __init__(self, files: Sequence[Path], size: tuple[int, int] | None) -> None:
        self.files, self.size = list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from segmenters.io import read_rgb   # OpenCV decoding, errors name the file

        img = torch.from_numpy(np.ascontiguousarray(read_rgb(self.files[i]).transpose(2, 0, 1))).float()
        if self.size is not None and tuple(img.shape[-2:]) != tuple(self.size):
            img = F.interpolate(img[None], size=self.size, mode="bilinear", align_corners=False)[0]
        return img


def accumulate(files: Sequence[Path], extractor: FeatureExtractor, batch_size: int = 50, workers: int = 0,
               kid_max_samples: int = 10_000, seed: int = 0, desc: str = "features") -> FeatureStats:
    """Feature statistics of ``files`` under ``torch.inference_mode`` (one batch in memory at a time)."""
    stats = FeatureStats(extractor.dim, kid_max_samples=kid_max_samples, seed=seed)
    size = extractor.input_size
    loader = DataLoader(_ImageSet(files, size), batch_size=batch_size if size is not None else 1,
                        shuffle=False, num_workers=workers)
    with torch.inference_mode():
        for images in tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True, leave=False):
            feats = extractor(images)
            if feats.dim() != 2 or feats.shape[1] != extractor.dim:
                raise ValueError(f"feature extractor {extractor.name} returned shape {tuple(feats.shape)}, "
                                 f"expected (B, {extractor.dim})")
            stats.update(feats)
    return stats


@dataclass
class FIDResult:
    fid: float
    kid_mean: float
    kid_std: float
    kid_subset_size: int
    kid_subsets: int
    n_real: int
    n_fake: int
    features: str

    def row(self) -> dict:
        return {"FID": self.fid, "KIDx100": 100.0 * self.kid_mean, "KIDx100_std": 100.0 * self.kid_std,
                "KID": self.kid_mean, "KID_std": self.kid_std, "kid_subset_size": self.kid_subset_size,
                "kid_subsets": self.kid_subsets, "n_real": self.n_real, "n_fake": self.n_fake,
                "features": self.features}


def fid_kid(real: Iterable[Path], fake: Iterable[Path], extractor: FeatureExtractor, kid_subsets: int = 100,
            kid_subset_size: int = 1000, batch_size: int = 50, workers: int = 0, kid_max_samples: int = 10_000,
            seed: int = 0, eps: float = 1e-6) -> FIDResult:
    """FID and KID between two lists of image files with ``extractor``."""
    real, fake = list(real), list(fake)
    for what, files in (("real", real), ("fake", fake)):
        if len(files) < 2:
            raise FIDInputError(f"the {what} set has {len(files)} image(s); FID/KID need at least 2")
    s_real = accumulate(real, extractor, batch_size, workers, kid_max_samples, seed, desc="real features")
    s_fake = accumulate(fake, extractor, batch_size, workers, kid_max_samples, seed + 1, desc="fake features")
    if max(s_real.n, s_fake.n) <= extractor.dim:
        logger.warning("FID with %d/%d images and %d-d features: covariances are rank-deficient, the value "
                       "is biased high (use more images than feature dimensions)", s_real.n, s_fake.n, extractor.dim)
    fid = frechet_distance(s_real.mean, s_real.cov, s_fake.mean, s_fake.cov, eps=eps)
    kid, kid_std, m = kid_from_features(s_real.kid_features, s_fake.kid_features, kid_subsets, kid_subset_size, seed)
    return FIDResult(fid, kid, kid_std, m, int(kid_subsets), s_real.n, s_fake.n, extractor.name)


__all__ = ["FeatureStats", "FIDInputError", "FIDResult", "accumulate", "fid_kid", "frechet_distance",
           "kid_from_features", "list_images", "mmd2_unbiased", "polynomial_kernel", "prepared_images"]
