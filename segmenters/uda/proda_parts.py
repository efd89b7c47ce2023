"""ProDA components (Zhang et al., "Prototypical Pseudo Label Denoising and Target Structure Learning
for Domain Adaptive Semantic Segmentation", CVPR 2021; public code microsoft/ProDA; facts in
docs/reference.md §9.2).

Pure functions and small modules; the stage-1/2/3 segmentors that wire them are built on
``segmenters.uda.base.UDASegmentor``. The EMA teacher uses :func:`segmenters.uda.ema.ema_update`
with ``iteration=None`` (fixed alpha 0.999) and ``buffers="copy"`` (ProDA copies BN buffers).

* :class:`ProDAConfig` - hyper-parameters (paper-scale defaults, GTA->CS).
* :func:`feature_prototype_distances`, :func:`rectification_weights`, :func:`rectify_pseudo_labels` -
  online pseudo-label denoising with prototypes (stage 1).
* :func:`class_mean_vectors`, :class:`PrototypeMemory`, :func:`save_prototypes`, :func:`load_prototypes` -
  class prototypes eta_k (offline init from class-mean features, moving average online, h5 file).
* :func:`symmetric_cross_entropy` (SCE), :func:`prototype_consistency_loss`,
  :func:`kl_uniform_regulariser` (MRKLD) - the stage-1 target losses.
* :func:`hard_pseudo_labels`, :func:`distillation_kl` - stage 2/3 self-distillation.

ProDA's ignore label is 250; the project uses 255 everywhere (``ignore_index`` arguments).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domains.io import atomic_path

from ..collectives import all_gather_cat

# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ProDAConfig:
    """ProDA hyper-parameters; defaults are the public code's stage-1 GTA->CS command line
    (``--proto_rectify --moving_prototype --ema --rce --proto_consistW 10 --regular_w 0.1``) and the
    stage-2/3 settings (docs/reference.md §8.1, §9.2)."""

    stage: Literal["stage1", "stage2", "stage3"] = "stage1"
    # prototypes and rectification (stage 1)
    feat_dim: int = 256
    proto_momentum: float = 1e-4
    proto_temperature: float = 1.0
    proto_min_pixels: int = 10
    rectify_min_confidence: float = 0.0  # --train_thred
    ema_alpha: float = 0.999
    ema_buffers: Literal["ema", "copy", "none"] = "copy"
    feature_stride: int = 4  # losses at 1/4 of the input size
    # target losses
    rce: bool = True
    rce_alpha: float = 0.1
    rce_beta: float = 1.0
    rce_label_clamp: float = 1e-4
    proto_consistW: float = 10.0
    regular_w: float = 0.1
    regular_type: Literal["MRKLD"] = "MRKLD"
    # stage 2/3 (self-distillation)
    threshold: float = 0.95
    distillation: float = 1.0
    S_pseudo: float = 1.0
    # optimisation (SGD, poly 0.9)
    lr_stage1: float = 1e-4
    lr_stage23: float = 6e-4
    head_lr_mult_stage23: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 2e-4
    batch_size: int = 4
    max_iters: int = 90000
    poly_power: float = 0.9
    # warm-up stage (output-space adversarial, LS-GAN)
    adv: float = 0.01
    gan: Literal["LS", "Vanilla"] = "LS"
    lr_D: float = 1e-4

    def __post_init__(self) -> None:
        if self.stage not in ("stage1", "stage2", "stage3"):
            raise ValueError(f"uda.stage must be 'stage1', 'stage2' or 'stage3', got {self.stage!r}")
        if not 0.0 <= self.proto_momentum <= 1.0:
            raise ValueError(f"uda.proto_momentum must lie in [0, 1], got {self.proto_momentum}")
        if not 0.0 < self.rce_label_clamp < 1.0:
            raise ValueError(f"uda.rce_label_clamp must lie in (0, 1), got {self.rce_label_clamp}")

    @property
    def lr(self) -> float:
        return self.lr_stage1 if self.stage == "stage1" else self.lr_stage23

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None, key: str = "uda") -> "ProDAConfig":
        """Build from a config mapping; an unknown key raises naming ``<key>.<name>``."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in cfg if k not in known and k != "type")
        if unknown:
            raise ValueError(f"{key}.{unknown[0]}: not a ProDA setting; valid keys: {sorted(known)}")
        cfg.pop("type", None)
        return cls(**cfg)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# prototypes: distances, rectification


def feature_prototype_distances(features: Tensor, prototypes: Tensor) -> Tensor:
    """Euclidean distances ``||f - eta_k||`` ``(B, C, h, w)`` between features ``(B, D, h, w)`` and
    prototypes ``(C, D)``; computed as ``sqrt(|f|^2 - 2 f.eta + |eta|^2)`` (clamped at 1e-12 before the
    square root so the gradient stays finite) instead of a ``(B, C, D, h, w)`` difference tensor."""
    if features.dim() != 4 or prototypes.dim() != 2 or features.shape[1] != prototypes.shape[1]:
        raise ValueError(f"feature_prototype_distances: features (B, D, h, w) and prototypes (C, D) with the "
                         f"same D expected, got {tuple(features.shape)} and {tuple(prototypes.shape)}")
    eta = prototypes.to(features.dtype)
    cross = torch.einsum("bdhw,cd->bchw", features, eta)
    sq = (features * features).sum(1, keepdim=True) - 2 * cross + (eta * eta).sum(1).view(1, -1, 1, 1)
    return sq.clamp(min=1e-12).sqrt()


def rectification_weights(features: Tensor, prototypes: Tensor, temperature: float = 1.0) -> Tensor:
    """ProDA prototype weights (Eq. 4 of the paper; ``get_prototype_weight``):

        w_k = softmax_k( -(||f - eta_k|| - min_j ||f - eta_j||) * T )

    Subtracting the nearest distance does not change the softmax (it only keeps the exponent <= 0).
    ``features`` are the EMA teacher's, ``(B, D, h, w)``; returns ``(B, C, h, w)``, no gradient."""
    with torch.no_grad():
        d = feature_prototype_distances(features.detach(), prototypes.detach())
        d = d - d.min(dim=1, keepdim=True).values
        return F.softmax(-d * temperature, dim=1)


def rectify_pseudo_labels(soft_probs: Tensor, weights: Tensor, min_confidence: float = 0.0,
                          ignore_index: int = 255) -> Tensor:
    """Rectified pseudo-labels ``argmax_k(w_k * p_k)`` ``(B, h, w)`` from the warm-up model's offline soft
    pseudo-labels ``p`` ``(B, C, h, w)`` and :func:`rectification_weights`. Pixels whose normalised
    rectified score ``max_k (w_k p_k) / sum_k (w_k p_k)`` is below ``min_confidence`` (``--train_thred``,
    0 in the public runs: nothing ignored) become ``ignore_index``."""
    if soft_probs.shape != weights.shape:
        raise ValueError(f"rectify_pseudo_labels: soft_probs {tuple(soft_probs.shape)} and weights "
                         f"{tuple(weights.shape)} differ (resize the soft labels to the feature size)")
    r = weights * soft_probs
    conf, labels = r.max(dim=1)
    if min_confidence > 0:
        conf = conf / r.sum(dim=1).clamp(min=1e-12)
        labels = labels.masked_fill(conf < min_confidence, ignore_index)
    return labels


# --------------------------------------------------------------------------------------------------
# prototype memory and files


def class_mean_vectors(features: Tensor, labels: Tensor, num_classes: int, min_pixels: int = 10,
                       ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Per-image class-mean features (ProDA ``calculate_mean_vector``): ``vectors (B, C, D)`` and
    ``present (B, C)`` bool, where a class counts as present in an image when it labels at least
    ``min_pixels`` pixels (the public code's ``< 10`` skip). ``labels`` ``(B, h, w)`` are at the
    feature resolution (e.g. teacher argmax)."""
    if features.dim() != 4 or labels.shape != (features.shape[0], *features.shape[2:]):
        raise ValueError(f"class_mean_vectors: features (B, D, h, w) and labels (B, h, w) expected, got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    b, d = features.shape[:2]
    lab = labels.long().reshape(b, -1)
    valid = (lab != ignore_index) & (lab >= 0) & (lab < num_classes)
    onehot = F.one_hot(lab.clamp(0, num_classes - 1), num_classes).to(features.dtype)
    onehot = onehot * valid[..., None].to(features.dtype)  # (B, N, C)
    counts = onehot.sum(1)  # (B, C)
    sums = torch.einsum("bnc,bdn->bcd", onehot, features.reshape(b, d, -1))
    vectors = sums / counts.clamp(min=1)[..., None]
    return vectors, counts >= max(min_pixels, 1)


class PrototypeMemory(nn.Module):
    """Class prototypes eta_k ``(C, D)`` (ProDA ``objective_vectors``).

    * ``update(features, labels, mode="moving_average")``: for every image and every class present in
      it (:func:`class_mean_vectors`), ``eta_k <- (1 - m) eta_k + m v`` with momentum m (1e-4), images
      in batch order - the public ``update_objective_SingleVector``. A class never initialised takes
      its first vector as the prototype (the public code starts from the offline file instead).
    * ``mode="mean"``: running mean of the vectors (offline initialisation, ``calc_prototype.py``);
      like the public code the count is capped at ``mean_count_cap`` (3000), after which the mean
      turns into a moving average with weight 1/(cap+1).
    * Classes absent from a batch keep their prototype. State is in buffers.
    * Distributed training: the images of every rank are folded in, in rank order
      (:mod:`segmenters.collectives`; equal batch sizes on all ranks), so the ranks stay identical.
    """

    def __init__(self, num_classes: int, dim: int, momentum: float = 1e-4, min_pixels: int = 10,
                 mean_count_cap: int | None = 3000, ignore_index: int = 255) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"PrototypeMemory: momentum must lie in [0, 1], got {momentum}")
        self.num_classes, self.dim, self.momentum = int(num_classes), int(dim), float(momentum)
        self.min_pixels, self.mean_count_cap, self.ignore_index = min_pixels, mean_count_cap, ignore_index
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.float64))

    @property
    def initialized(self) -> Tensor:
        return self.counts > 0

    def set(self, prototypes: Tensor, counts: Tensor | None = None) -> None:
        """Replace the prototypes (e.g. from :func:`load_prototypes`)."""
        if tuple(prototypes.shape) != (self.num_classes, self.dim):
            raise ValueError(f"PrototypeMemory.set: expected prototypes of shape ({self.num_classes}, {self.dim}), "
                             f"got {tuple(prototypes.shape)}")
        with torch.no_grad():
            self.prototypes.copy_(prototypes)
            if counts is None:
                counts = torch.ones(self.num_classes)
            self.counts.copy_(torch.as_tensor(counts, dtype=torch.float64))

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor,
               mode: Literal["moving_average", "mean"] = "moving_average") -> Tensor:
        """Fold the class means of ``features (B, D, h, w)`` under ``labels (B, h, w)`` into the
        prototypes; returns the ``(C,)`` bool mask of classes that were updated."""
        if mode not in ("moving_average", "mean"):
            raise ValueError(f"PrototypeMemory.update: mode must be 'moving_average' or 'mean', got {mode!r}")
        vectors, present = class_mean_vectors(features.detach(), labels, self.num_classes, self.min_pixels,
                                              self.ignore_index)
        # under --launcher: every rank's images, in rank order (no-op in one process), so all ranks
        # hold the same prototypes
        vectors = all_gather_cat(vectors.to(self.prototypes.dtype))
        present = all_gather_cat(present)
        for v, p in zip(vectors, present):  # images in order, as the public code
            idx = p.nonzero().flatten()
            if idx.numel() == 0:
                continue
            n = self.counts[idx]
            if mode == "moving_average":
                w = torch.where(n > 0, torch.full_like(n, self.momentum), torch.ones_like(n))
            else:
                w = 1.0 / (n + 1)
            w = w.to(self.prototypes.dtype)[:, None]
            self.prototypes[idx] = (1 - w) * self.prototypes[idx] + w * v[idx]
            n = n + 1
            if mode == "mean" and self.mean_count_cap is not None:
                n = n.clamp(max=self.mean_count_cap)
            self.counts[idx] = n
        return present.any(dim=0)

    def distances(self, features: Tensor) -> Tensor:
        return feature_prototype_distances(features, self.prototypes)


def save_prototypes(path: str | os.PathLike, prototypes: Tensor, counts: Tensor) -> Path:
    """Write prototypes ``(C, D)`` and counts ``(C,)`` to an h5 file (datasets ``prototypes``,
    ``counts``; attributes ``num_classes``, ``dim``), atomically (temporary name, then rename)."""
    import h5py

    path = Path(path)
    protos = prototypes.detach().cpu().float()
    cnt = torch.as_tensor(counts).detach().cpu().double()
    if protos.dim() != 2 or cnt.shape != protos.shape[:1]:
        raise ValueError(f"save_prototypes: prototypes (C, D) and counts (C,) expected, got "
                         f"{tuple(protos.shape)} and {tuple(cnt.shape)}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("prototypes", data=protos.numpy())
        f.create_dataset("counts", data=cnt.numpy())
        f.attrs["num_classes"], f.attrs["dim"] = protos.shape
    return path


def load_prototypes(path: str | os.PathLike, expect_shape: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Read ``(prototypes (C, D) float32, counts (C,) float64)`` written by :func:`save_prototypes`.
    Raises FileNotFoundError / ValueError naming the file when it is missing, not a prototype file,
    or its shape differs from ``expect_shape`` (C, D)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prototype file not found; compute it from the warm-up model's "
                                "class-mean features first")
    try:
        with h5py.File(path, "r") as f:
            if "prototypes" not in f or "counts" not in f:
                raise ValueError(f"{path}: not a prototype file (needs datasets 'prototypes' and 'counts', "
                                 f"has {sorted(f.keys())})")
            protos = torch.from_numpy(f["prototypes"][()]).float()
            counts = torch.from_numpy(f["counts"][()]).double()
    except OSError as err:
        raise ValueError(f"{path}: not a readable h5 prototype file ({err})") from err
    if protos.dim() != 2 or counts.shape != protos.shape[:1]:
        raise ValueError(f"{path}: prototypes must be (C, D) with counts (C,), got {tuple(protos.shape)} "
                         f"and {tuple(counts.shape)}")
    if expect_shape is not None and tuple(protos.shape) != tuple(expect_shape):
        raise ValueError(f"{path}: prototypes have shape {tuple(protos.shape)} (classes, feature dim) but "
                         f"{tuple(expect_shape)} is expected; recompute them with the current model "
                         "(num_classes / feature dimension changed)")
    return protos, counts


# --------------------------------------------------------------------------------------------------
# losses


def reverse_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = 255,
                          label_clamp: float = 1e-4, prob_clamp: float = 1e-7) -> Tensor:
    """Reverse cross-entropy ``-sum_k p_k log q_k`` of the one-hot label q under the prediction p
    (Wang et al. ICCV 2019), ProDA ``rce``: log(0) is clamped as log(``label_clamp``) = log(1e-4), so
    per pixel RCE = -log(1e-4) * (1 - p_y) ~= 9.21 (1 - p_y), with p clamped to [1e-7, 1]. Mean over
    non-ignored pixels; 0 when all are ignored."""
    c = logits.shape[1]
    p = F.softmax(logits, dim=1).clamp(min=prob_clamp, max=1.0)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < c)
    onehot = F.one_hot(labels.long().clamp(0, c - 1), c).permute(0, 3, 1, 2).to(p.dtype)
    per_pixel = -(p * onehot.clamp(min=label_clamp, max=1.0).log()).sum(dim=1)
    v = valid.to(p.dtype)
    return (per_pixel * v).sum() / v.sum().clamp(min=1.0)


def symmetric_cross_entropy(logits: Tensor, labels: Tensor, alpha: float = 0.1, beta: float = 1.0,
                            ignore_index: int = 255, label_clamp: float = 1e-4) -> Tensor:
    """Symmetric cross-entropy ``alpha * CE + beta * RCE`` (ProDA stage-1 target loss, ``--rce``;
    alpha 0.1, beta 1.0). CE is the mean over non-ignored pixels (0 when all are ignored);
    RCE is :func:`reverse_cross_entropy` (log 0 clamped to log 1e-4)."""
    if logits.dim() != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"symmetric_cross_entropy: logits (B, C, h, w) and labels (B, h, w) expected, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    labels = labels.long()
    valid = labels != ignore_index
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / valid.sum().clamp(min=1)
    rce = reverse_cross_entropy(logits, labels, ignore_index, label_clamp)
    return alpha * ce + beta * rce


def prototype_consistency_loss(student_features: Tensor, teacher_features: Tensor, prototypes: Tensor,
                               temperature: float = 1.0, valid_mask: Tensor | None = None) -> Tensor:
    """ProDA target-structure loss (paper Eq. 7, ``proto_consistW``): KL between the prototype
    assignment of the weak view from the EMA teacher, ``softmax(-||f_t - eta|| T)``, and of the strong
    view from the student, ``softmax(-||f_s - eta|| T)``:

        KL(teacher || student), summed over classes and divided by (C x valid pixels)

    The division by C is the public code's normalisation (``(kl * mask).sum() / mask.sum()`` with a
    (B, C, h, w) mask), kept so ``proto_consistW = 10`` keeps its meaning. ``teacher_features`` must
    already be aligned to the strong view's geometry (the segmentor maps the EMA features of the
    full image to the crop/flip/affine of the strong view); ``valid_mask`` ``(B, h, w)`` marks pixels
    that exist in both views (padding excluded). Gradients flow into the student features only."""
    if student_features.shape != teacher_features.shape:
        raise ValueError(f"prototype_consistency_loss: student {tuple(student_features.shape)} and teacher "
                         f"{tuple(teacher_features.shape)} features differ")
    protos = prototypes.detach()
    with torch.no_grad():
        teacher = F.softmax(-feature_prototype_distances(teacher_features.detach(), protos) * temperature, dim=1)
    log_student = F.log_softmax(-feature_prototype_distances(student_features, protos) * temperature, dim=1)
    kl = F.kl_div(log_student, teacher, reduction="none")  # teacher * (log teacher - log student)
    c = kl.shape[1]
    if valid_mask is None:
        valid_mask = torch.ones(kl.shape[0], *kl.shape[2:], dtype=torch.bool, device=kl.device)
    v = valid_mask.to(kl.dtype)[:, None]
    return (kl * v).sum() / (v.sum() * c).clamp(min=1.0)


def kl_uniform_regulariser(logits: Tensor) -> Tensor:
    """MRKLD (ProDA ``regular_loss``, Zou et al. 2019): ``-mean_{pixels, k} log p_k`` = KL(uniform || p)
    + log C per pixel; discourages over-confident predictions on pseudo-labelled target pixels.
    Averaged over all pixels and classes (no ignore mask, as the public code)."""
    return -F.log_softmax(logits, dim=1).mean()


def hard_pseudo_labels(probs: Tensor, threshold: float = ProDAConfig.threshold, ignore_index: int = 255) -> Tensor:
    """Stage-2/3 hard pseudo-labels from the previous stage's (flip-averaged) probabilities
    ``(B, C, H, W)``: argmax, and pixels with max-probability <= ``threshold`` -> ``ignore_index``
    (ProDA ``--threshold``, default :attr:`ProDAConfig.threshold`; the loader's ``conf <= threshold``)."""
    conf, labels = probs.max(dim=1)
    return labels.masked_fill(conf <= threshold, ignore_index)


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, valid_mask: Tensor | None = None) -> Tensor:
    """Self-distillation KL(teacher || student) of the softmax outputs (ProDA stage 2/3,
    ``--distillation``), normalised per (pixel, class) element like the public code.

    Deviation: the public ``step_distillation`` passes probabilities (not log-probabilities) as the
    first argument of ``F.kl_div``, which then is not a KL divergence; this implements the KL the
    paper describes, ``sum_k t_k (log t_k - log s_k)``, divided by (C x valid pixels)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"distillation_kl: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} logits differ")
    teacher = F.softmax(teacher_logits.detach(), dim=1)
    kl = F.kl_div(F.log_softmax(student_logits, dim=1), teacher, reduction="none")
    c = kl.shape[1]
    if valid_mask is None:
        return kl.sum() / max(kl.numel(), 1)
    v = valid_mask.to(kl.dtype)[:, None]
    return (kl * v).sum() / (v.sum() * c).clamp(min=1.0)


__all__ = [
    "ProDAConfig", "feature_prototype_distances", "rectification_weights", "rectify_pseudo_labels",
    "class_mean_vectors", "PrototypeMemory", "save_prototypes", "load_prototypes", "reverse_cross_entropy",
    "symmetric_cross_entropy", "prototype_consistency_loss", "kl_uniform_regulariser", "hard_pseudo_labels",
    "distillation_kl",
]
