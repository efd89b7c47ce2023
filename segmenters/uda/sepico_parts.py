"""SePiCo components (Xie et al., "SePiCo: Semantic-Guided Pixel Contrast for Domain Adaptive Semantic
Segmentation", TPAMI 2023; public code BIT-DA/SePiCo, facts in docs/reference.md §9.1).

Pure functions and small modules; the segmentor that wires them (teacher, mixing, gating by
iteration) is built on ``segmenters.uda.base.UDASegmentor``.

* :class:`SePiCoConfig` - the method's hyper-parameters (paper-scale defaults, GTA->CS DistCL R101).
* :func:`pseudo_label_weight` - teacher pseudo-labels and their confidence weight (DACS/SePiCo).
* :func:`class_balanced_crop_box` - class-balanced cropping (CBC) on a target pseudo-label.
* :class:`ProjectionHead` - the 2-layer 1x1 projection head on backbone layer-4 features.
* :func:`downscale_labels`, :func:`flatten_labelled_features` - labels at feature resolution.
* :class:`ClassStatistics` - running class mean mu_k and diagonal covariance Sigma_k (+ the BankCL
  memory bank) from teacher features of SOURCE pixels.
* :func:`proto_contrastive_loss` (ProtoCL), :func:`bank_contrastive_loss` (BankCL),
  :func:`dist_contrastive_loss` (DistCL) and :func:`contrastive_regulariser`.

Classes never seen by :class:`ClassStatistics` (``initialized`` False) carry no centroid: the losses
drop them from the softmax (logit -inf) and skip pixels labelled with them. The public code keeps a
zero centroid (logit 0) for them instead; with source GT updated before the loss this differs only
for classes absent from every source batch so far.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..collectives import all_reduce_sum_

# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class SePiCoConfig:
    """SePiCo hyper-parameters; defaults are the paper-scale values (experiments.py id 1: GTA->CS,
    DistCL, DeepLab-V2 R101, docs/reference.md §9.1). The segmentor gates the contrastive terms with
    ``start_distribution_iter``; ``psweight_ignore_top/bottom`` are pixel rows of a
    ``crop_size`` crop (use :meth:`ignore_rows` at other sizes)."""

    # teacher / self-training (DACS)
    alpha: float = 0.999
    pseudo_threshold: float = 0.968
    psweight_ignore_top: int = 15
    psweight_ignore_bottom: int = 120
    psweight_per_image: bool = True
    enable_self_training: bool = True
    mix: str = "class"
    color_jitter_s: float = 0.2
    color_jitter_p: float = 0.2
    blur: bool = True
    # class-balanced cropping of the target on its pseudo-label (segmenters.uda.sampling)
    pseudo_random_crop: bool = True
    crop_size: tuple[int, int] = (640, 640)   # the reference's crop: psweight_ignore_* rows refer to it
    cbc_crop_size: tuple[int, int] | None = None  # CBC crop (h, w); None = the source batch's size
    cat_max_ratio: float = 0.75
    cbc_tries: int = 10
    regen_pseudo: bool = True
    # rare class sampling on the source (dataset side)
    rcs_temperature: float | None = 0.01
    rcs_min_pixels: int = 3000
    rcs_min_crop_ratio: float = 0.5
    # semantic-guided pixel contrast
    contrast_mode: Literal["dist", "bank", "proto"] = "dist"
    proj_dim: int = 512
    proj_num_convs: int = 2
    proj_in_index: int = 3
    tau: float = 100.0
    contrastive_weight: float = 1.0
    use_reg: bool = True
    reg_relative_weight: float = 1.0
    start_distribution_iter: int = 3000
    memory_length: int = 200
    use_avg_pool: bool = True
    scale_min_ratio: float = 0.75
    stats_momentum: float | None = None

    def __post_init__(self) -> None:
        if self.contrast_mode not in ("dist", "bank", "proto"):
            raise ValueError(f"uda.contrast_mode must be 'dist', 'bank' or 'proto', got {self.contrast_mode!r}")
        if self.tau <= 0:
            raise ValueError(f"uda.tau must be > 0, got {self.tau}")
        if not 0.0 < self.cat_max_ratio <= 1.0:
            raise ValueError(f"uda.cat_max_ratio must lie in (0, 1], got {self.cat_max_ratio}")
        if self.cbc_tries < 1:
            raise ValueError(f"uda.cbc_tries must be >= 1, got {self.cbc_tries}")
        if self.rcs_temperature is not None and self.rcs_temperature <= 0:
            raise ValueError(f"uda.rcs_temperature must be > 0 or None (off), got {self.rcs_temperature}")
        if self.rcs_min_pixels < 0 or not 0.0 <= self.rcs_min_crop_ratio <= 1.0:
            raise ValueError("uda.rcs_min_pixels must be >= 0 and uda.rcs_min_crop_ratio in [0, 1]")

    @property
    def reg_weight(self) -> float:
        """Weight of :func:`contrastive_regulariser` (``reg_relative_weight * contrastive_weight``)."""
        return self.reg_relative_weight * self.contrastive_weight if self.use_reg else 0.0

    def ignore_rows(self, height: int) -> tuple[int, int]:
        """``(top, bottom)`` rows with pseudo-label weight 0 for a crop of ``height`` rows, scaled from
        the paper's ``crop_size[0]``."""
        scale = height / float(self.crop_size[0])
        return int(round(self.psweight_ignore_top * scale)), int(round(self.psweight_ignore_bottom * scale))

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None, key: str = "uda") -> "SePiCoConfig":
        """Build from a config mapping (e.g. the mmengine config's ``uda`` dict); an unknown key raises
        naming ``<key>.<name>``; keys not listed keep their defaults."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in cfg if k not in known and k != "type")
        if unknown:
            raise ValueError(f"{key}.{unknown[0]}: not a SePiCo setting; valid keys: {sorted(known)}")
        cfg.pop("type", None)
        for size_key in ("crop_size", "cbc_crop_size"):
            if cfg.get(size_key) is not None:
                cfg[size_key] = tuple(int(v) for v in cfg[size_key])
        return cls(**cfg)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# pseudo-labels


def pseudo_label_weight(probs: Tensor, threshold: float = 0.968, ignore_top: int = 0, ignore_bottom: int = 0,
                        per_image: bool = True) -> tuple[Tensor, Tensor]:
    """Teacher pseudo-labels and pixel weights (DACS; SePiCo ``forward_train``).

    Labels are ``argmax_k probs``; the weight of every pixel of an image is the fraction of its pixels
    whose max-probability is >= ``threshold`` (the public code uses ``ge``); the first ``ignore_top``
    and last ``ignore_bottom`` rows get weight 0 (``pseudo_weight_ignore_top/bottom``, rectification
    artefacts of the ego-car / image border). ``per_image=False`` reproduces the public code exactly,
    which pools the fraction over the whole batch.

    Args:
        probs: softmax probabilities ``(B, C, H, W)``.

    Returns:
        ``labels`` (B, H, W) int64 and ``weight`` (B, H, W) float.
    """
    if probs.dim() != 4:
        raise ValueError(f"pseudo_label_weight: probs must be (B, C, H, W), got {tuple(probs.shape)}")
    if ignore_top < 0 or ignore_bottom < 0:
        raise ValueError("pseudo_label_weight: ignore_top/ignore_bottom must be >= 0")
    probs = probs.detach()
    conf, labels = probs.max(dim=1)
    confident = (conf >= threshold).float()
    b, h, w = labels.shape
    frac = confident.mean(dim=(1, 2)) if per_image else confident.mean().expand(b)
    weight = frac.view(b, 1, 1).expand(b, h, w).clone()
    if ignore_top > 0:
        weight[:, :ignore_top] = 0.0
    if ignore_bottom > 0:
        weight[:, max(h - ignore_bottom, 0):] = 0.0
    return labels, weight


# --------------------------------------------------------------------------------------------------
# class-balanced cropping (CBC)


class CropBox(NamedTuple):
    """A crop ``[y1:y2, x1:x2]``; ``balanced`` tells whether it met the class-balance condition."""

    y1: int
    y2: int
    x1: int
    x2: int
    balanced: bool


def class_balanced_crop_box(pseudo_label: Tensor, crop_size: tuple[int, int], cat_max_ratio: float = 0.75,
                            tries: int = 10, generator: torch.Generator | None = None,
                            ignore_index: int = 255) -> CropBox:
    """Class-balanced crop box on one target pseudo-label ``(H, W)`` (SePiCo CBC, ``ours_transforms
    .RandomCrop``; docs/reference.md §9.1): :func:`segmenters.uda.sampling.class_balanced_crop_boxes` for a
    batch of one. ``tries`` random boxes of ``crop_size`` (h, w); a box is *balanced* when its
    pseudo-label holds more than one class and the largest covers less than ``cat_max_ratio`` of its
    non-ignored pixels; it scores ``sum_k log n_k`` over classes with n_k > 1 pixels, unbalanced boxes
    score 0; the first box with the highest score is kept (without a balanced box: the first random
    box, ``balanced=False``). A side shorter than the crop is taken whole.
    """
    from .sampling import class_balanced_crop_boxes  # lazy: sampling imports the mmseg datasets

    if pseudo_label.dim() != 2:
        raise ValueError(f"class_balanced_crop_box: pseudo_label must be (H, W), got {tuple(pseudo_label.shape)}")
    labels = pseudo_label.long()
    counted = labels[(labels != ignore_index) & (labels >= 0)]
    num_classes = int(counted.max().item()) + 1 if counted.numel() else 1
    res = class_balanced_crop_boxes(labels[None], crop_size, num_classes, cat_max_ratio, tries, generator,
                                    ignore_index)
    y1, y2, x1, x2 = (int(v) for v in res.boxes[0].tolist())
    return CropBox(y1, y2, x1, x2, bool(res.balanced[0]))


def crop(tensor: Tensor, box: CropBox | tuple[int, int, int, int, Any]) -> Tensor:
    """``tensor[..., y1:y2, x1:x2]`` (images, labels, weights alike)."""
    y1, y2, x1, x2 = box[:4]
    return tensor[..., y1:y2, x1:x2]


# --------------------------------------------------------------------------------------------------
# projection head and label preparation


class ProjectionHead(nn.Module):
    """SePiCo ``ProjHead``: ``num_convs`` 1x1 conv + BN + ReLU layers (in -> in -> proj_dim for the
    default 2), then L2 normalisation over channels. The public head's last layer also has BN and
    ReLU (mmcv ``ConvModule`` with the decode head's norm/act), so the embedding is non-negative
    before normalisation; kept here (a pixel whose channels are all zeroed gets the zero embedding,
    ``F.normalize`` then returns 0). Convs are bias-free (ConvModule's ``bias='auto'`` with a norm).
    Applied to backbone layer-4 features (``in_index`` 3, 2048 channels for ResNet-101)."""

    def __init__(self, in_channels: int, proj_dim: int = 512, num_convs: int = 2,
                 mid_channels: int | None = None, norm: bool = True) -> None:
        super().__init__()
        if num_convs not in (0, 1, 2):
            raise ValueError(f"ProjectionHead: num_convs must be 0, 1 or 2, got {num_convs}")
        if num_convs == 0 and in_channels != proj_dim:
            raise ValueError(f"ProjectionHead: num_convs=0 needs in_channels == proj_dim "
                             f"({in_channels} != {proj_dim})")
        mid = mid_channels or in_channels
        chans = [in_channels, mid, proj_dim][-(num_convs + 1):] if num_convs else []
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers.append(nn.Conv2d(cin, cout, kernel_size=1, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers) if layers else nn.Identity()
        self.in_channels, self.proj_dim = in_channels, proj_dim

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.convs(x), p=2, dim=1)


def downscale_labels(labels: Tensor, size: tuple[int, int], num_classes: int, min_ratio: float = 0.75,
                     mode: Literal["avg_pool", "nearest"] = "avg_pool", ignore_index: int = 255) -> Tensor:
    """Labels ``(B, H, W)`` at feature resolution ``size`` (h, w).

    ``avg_pool`` (SePiCo/DAFormer ``downscale_label_ratio``): each feature cell takes the majority label
    of its input block (ignore counted as a class) and becomes ignore if that label covers less than
    ``min_ratio`` of the block. Adaptive average pooling is used so non-integer ratios work too (for
    integer ratios it equals the public code's ``avg_pool2d``). ``nearest``: nearest-neighbour resize.
    """
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise ValueError(f"downscale_labels: labels must be (B, H, W), got {tuple(labels.shape)}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long().clone()
    if mode == "nearest":
        return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    if mode != "avg_pool":
        raise ValueError(f"downscale_labels: mode must be 'avg_pool' or 'nearest', got {mode!r}")
    lab = labels.long().clone()
    lab[(lab == ignore_index) | (lab < 0) | (lab >= num_classes)] = num_classes
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    ratio, out = F.adaptive_avg_pool2d(onehot, size).max(dim=1)
    out[out == num_classes] = ignore_index
    out[ratio < min_ratio] = ignore_index
    return out


def flatten_labelled_features(features: Tensor, labels: Tensor, num_classes: int, min_ratio: float = 0.75,
                              mode: Literal["avg_pool", "nearest"] = "avg_pool",
                              ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Features ``(B, D, h, w)`` and labels ``(B, H, W)`` -> ``(N, D)`` features of labelled pixels and
    their labels ``(N,)`` (SePiCo ``contrast_preparations``)."""
    if features.dim() != 4:
        raise ValueError(f"flatten_labelled_features: features must be (B, D, h, w), got {tuple(features.shape)}")
    lab = downscale_labels(labels, tuple(features.shape[-2:]), num_classes, min_ratio, mode, ignore_index)
    f = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    y = lab.reshape(-1)
    keep = y != ignore_index
    return f[keep], y[keep]


# --------------------------------------------------------------------------------------------------
# class statistics


class ClassStatistics(nn.Module):
    """Running class mean ``mu_k`` and diagonal covariance ``Sigma_k`` of (teacher) features
    (SePiCo ``ProtoEstimator``), plus the BankCL memory bank.

    Update with a batch holding n_k pixels of class k, batch mean m_k and (biased) variance v_k:
    ``w = n_k / (n_k + N_k)`` (count-weighted, the reference; N_k = pixels seen so far) or
    ``w = momentum`` once the class is initialised (``momentum`` given), then

        Sigma_k <- (1 - w) Sigma_k + w v_k + w (1 - w) (mu_k - m_k)^2
        mu_k    <- (1 - w) mu_k + w m_k,          N_k <- N_k + n_k

    With the count weight this is the exact mean/variance of every pixel seen (pooled variance).
    A class absent from the batch keeps its statistics unchanged; a class never seen has
    ``initialized`` False (mu = Sigma = 0) and the losses leave it out.

    The memory bank (``memory_length`` L > 0) keeps, per class, the last L batch means m_k (the public
    code's deque of per-update class means), in a ring buffer so it checkpoints with the module.
    All state is in buffers (saved in the training checkpoint, stripped from ``final.pth``).
    In distributed training the batch counts, sums and squared deviations are summed over the ranks
    (:mod:`segmenters.collectives`): every rank folds in the global batch and keeps the same state.
    """

    def __init__(self, num_classes: int, feat_dim: int, momentum: float | None = None,
                 memory_length: int = 0, ignore_index: int = 255) -> None:
        super().__init__()
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"ClassStatistics: momentum must lie in (0, 1] or be None, got {momentum}")
        self.num_classes, self.feat_dim = int(num_classes), int(feat_dim)
        self.momentum, self.memory_length, self.ignore_index = momentum, int(memory_length), ignore_index
        self.register_buffer("mean", torch.zeros(num_classes, feat_dim))
        self.register_buffer("variance", torch.zeros(num_classes, feat_dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("bank", torch.zeros(num_classes, self.memory_length, feat_dim))
        self.register_buffer("bank_size", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("bank_next", torch.zeros(num_classes, dtype=torch.long))

    @property
    def initialized(self) -> Tensor:
        """``(C,)`` bool: the class has been seen at least once."""
        return self.count > 0

    @property
    def bank_valid(self) -> Tensor:
        """``(C, L)`` bool: which memory-bank slots hold an entry."""
        slots = torch.arange(self.memory_length, device=self.bank_size.device)
        return slots[None, :] < self.bank_size[:, None]

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> Tensor:
        """Fold ``features (N, D)`` with ``labels (N,)`` into the statistics (ignored/out-of-range
        labels are skipped). Returns the ``(C,)`` bool mask of classes present in the batch."""
        if features.dim() != 2 or features.shape[1] != self.feat_dim or labels.shape != features.shape[:1]:
            raise ValueError(f"ClassStatistics.update: expected features (N, {self.feat_dim}) and labels (N,), "
                             f"got {tuple(features.shape)} and {tuple(labels.shape)}")
        keep = (labels >= 0) & (labels < self.num_classes)
        f = features.detach()[keep].to(self.mean.dtype)
        y = labels[keep].long()
        c = self.num_classes
        # under --launcher the batch is the union of every rank's (sums over ranks; no-op otherwise),
        # so all ranks hold the same statistics; every rank makes the same collective calls
        n = all_reduce_sum_(torch.bincount(y, minlength=c).to(self.mean.dtype))  # (C,)
        present = n > 0
        if not bool(present.any()):
            return present
        sums = all_reduce_sum_(torch.zeros_like(self.mean).index_add_(0, y, f))
        m = sums / n.clamp(min=1)[:, None]
        v = all_reduce_sum_(torch.zeros_like(self.mean).index_add_(0, y, (f - m[y]) ** 2)) / n.clamp(min=1)[:, None]
        seen = self.count.to(self.mean.dtype)
        if self.momentum is None:
            w = n / (n + seen).clamp(min=1)
        else:
            w = torch.where(seen > 0, torch.full_like(n, self.momentum), torch.ones_like(n))
        w = torch.where(present, w, torch.zeros_like(w))[:, None]
        self.variance.copy_((1 - w) * self.variance + w * v + w * (1 - w) * (self.mean - m) ** 2)
        self.mean.copy_((1 - w) * self.mean + w * m)
        self.count.add_(n.to(self.count.dtype))
        if self.memory_length > 0:
            idx = present.nonzero().flatten()
            self.bank[idx, self.bank_next[idx]] = m[idx]
            self.bank_next[idx] = (self.bank_next[idx] + 1) % self.memory_length
            self.bank_size[idx] = (self.bank_size[idx] + 1).clamp(max=self.memory_length)
        return present


# --------------------------------------------------------------------------------------------------
# losses


def _prepare(features: Tensor, labels: Tensor, num_classes: int, valid_classes: Tensor | None,
             weight: Tensor | None, ignore_index: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"contrastive loss: expected features (N, D) and labels (N,), got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if valid_classes is None:
        valid_classes = torch.ones(num_classes, dtype=torch.bool, device=features.device)
    valid_classes = valid_classes.to(features.device).bool()
    labels = labels.long()
    in_range = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    keep = in_range.clone()
    keep[in_range] = valid_classes[labels[in_range]]
    w = weight[keep].float() if weight is not None else None
    return features[keep], labels[keep], valid_classes, w


def _reduce(loss: Tensor, weight: Tensor | None, like: Tensor) -> Tensor:
    if loss.numel() == 0:
        return like.sum() * 0.0  # keeps the graph, no NaN
    if weight is not None:
        loss = loss * weight
    return loss.mean()


def proto_contrastive_loss(features: Tensor, labels: Tensor, mean: Tensor, tau: float = 100.0,
                           valid_classes: Tensor | None = None, weight: Tensor | None = None,
                           ignore_index: int = 255) -> Tensor:
    """ProtoCL (centroid-aware pixel contrast, SePiCo Eq. "L_ProtoCL"): cross-entropy over the logits
    ``f . mu_k / tau`` with the pixel's class as target, averaged over pixels.

    Args:
        features: ``(N, D)`` student embeddings (L2-normalised by :class:`ProjectionHead`).
        labels: ``(N,)`` class ids (``ignore_index`` skipped).
        mean: ``(C, D)`` class centroids mu_k (no gradient).
        tau: temperature (100 in the public config).
        valid_classes: ``(C,)`` bool (``ClassStatistics.initialized``); others are dropped.
        weight: optional ``(N,)`` per-pixel weights.
    """
    f, y, valid, w = _prepare(features, labels, mean.shape[0], valid_classes, weight, ignore_index)
    if f.shape[0] == 0:
        return features.sum() * 0.0
    logits = f @ mean.detach().t().to(f.dtype) / tau
    logits = logits.masked_fill(~valid[None, :], float("-inf"))
    return _reduce(F.cross_entropy(logits, y, reduction="none"), w, features)


def dist_contrastive_loss(features: Tensor, labels: Tensor, mean: Tensor, covariance: Tensor, tau: float = 100.0,
                          valid_classes: Tensor | None = None, weight: Tensor | None = None,
                          ignore_index: int = 255) -> Tensor:
    """DistCL (distribution-aware pixel contrast): the closed-form upper bound of the expected ProtoCL
    loss when each class centre is drawn from ``N(mu_k, diag Sigma_k)``.

    With z_k = f . c_k / tau and c_k ~ N(mu_k, Sigma_k), E[exp z_k] = exp(f.mu_k/tau + f^2.Sigma_k/(2 tau^2)),
    so by Jensen (E log sum <= log sum E)

        E[-z_y + log sum_k exp z_k] <= -f.mu_y/tau + log sum_k exp(l_k),
        l_k = (f.mu_k + 0.5 f^2.Sigma_k / tau) / tau,

    which is ``CE(l, y) + 0.5 f^2.Sigma_y / tau^2`` - the public code's ``ce_loss + jcl_loss``.
    Arguments as :func:`proto_contrastive_loss`; ``covariance`` is ``(C, D)`` (diagonal Sigma_k).
    """
    f, y, valid, w = _prepare(features, labels, mean.shape[0], valid_classes, weight, ignore_index)
    if f.shape[0] == 0:
        return features.sum() * 0.0
    mu, sigma = mean.detach().to(f.dtype), covariance.detach().to(f.dtype)
    f2 = f * f
    logits = (f @ mu.t() + 0.5 * (f2 @ sigma.t()) / tau) / tau
    logits = logits.masked_fill(~valid[None, :], float("-inf"))
    positive = 0.5 * (f2 * sigma[y]).sum(dim=1) / (tau * tau)
    return _reduce(F.cross_entropy(logits, y, reduction="none") + positive, w, features)


def bank_contrastive_loss(features: Tensor, labels: Tensor, bank: Tensor, bank_valid: Tensor, tau: float = 100.0,
                          weight: Tensor | None = None, ignore_index: int = 255) -> Tensor:
    """BankCL (memory-bank pixel contrast, SePiCo ``bank_contrastive``): for a pixel f of class y, every
    stored centroid b of class y is a positive and each other class j contributes one negative, the
    mean similarity of f to its stored entries (``mean_b f.b / tau = f . mean(bank_j) / tau``):

        loss(f) = -mean_{b in bank_y} log( exp(f.b/tau) / (exp(f.b/tau) + sum_{j != y} exp(neg_j)) )

    Args:
        bank: ``(C, L, D)`` stored centroids (``ClassStatistics.bank``).
        bank_valid: ``(C, L)`` bool, filled slots (``ClassStatistics.bank_valid``). Classes with an
            empty bank are neither positives (their pixels are skipped) nor negatives.
    """
    num_classes = bank.shape[0]
    has_entries = bank_valid.any(dim=1)
    f, y, _, w = _prepare(features, labels, num_classes, has_entries, weight, ignore_index)
    if f.shape[0] == 0:
        return features.sum() * 0.0
    bank = bank.detach().to(f.dtype)
    valid_f = bank_valid.to(f.dtype)
    bank_mean = (bank * valid_f[..., None]).sum(1) / valid_f.sum(1, keepdim=True).clamp(min=1)  # (C, D)
    very_neg = torch.finfo(f.dtype).min / 4
    neg = (f @ bank_mean.t() / tau).masked_fill(~has_entries[None, :], very_neg)  # (N, C)
    neg = neg.masked_fill(F.one_hot(y, num_classes).bool(), very_neg)
    log_sum_neg = torch.logsumexp(neg, dim=1)  # (N,)
    # group pixels by class once (split's backward is a single concatenation, unlike per-class masks)
    order = torch.argsort(y, stable=True)
    y, log_sum_neg = y[order], log_sum_neg[order]
    w = w[order] if w is not None else None
    classes, counts = torch.unique_consecutive(y, return_counts=True)
    chunks = torch.split(f[order], counts.tolist())
    lsn_chunks = torch.split(log_sum_neg, counts.tolist())
    losses = []
    for cls, fc, lsn in zip(classes.tolist(), chunks, lsn_chunks):
        pos = fc @ bank[cls][bank_valid[cls]].t() / tau  # (N_c, M_c) positives
        losses.append((torch.logaddexp(pos, lsn[:, None]) - pos).mean(dim=1))
    return _reduce(torch.cat(losses), w, features)


def contrastive_regulariser(features: Tensor, mean: Tensor, tau: float = 100.0,
                            valid_classes: Tensor | None = None, num_classes: int | None = None) -> Tensor:
    """SePiCo regulariser (public ``proto_reg``): ``sum_k log softmax_k(mean(f) . mu / tau) / (C log C)``.

    ``mean(f)`` is the mean embedding of the (labelled) pixels of the batch. The sign is the public
    code's (it is added with weight ``reg_relative_weight * loss_weight``). Uninitialised classes are
    left out of the softmax and the sum; C is ``num_classes`` (default ``mean.shape[0]``).
    """
    c = int(num_classes or mean.shape[0])
    if c < 2:
        raise ValueError("contrastive_regulariser: needs at least 2 classes")
    if features.shape[0] == 0:
        return features.sum() * 0.0
    if valid_classes is None:
        valid_classes = torch.ones(mean.shape[0], dtype=torch.bool, device=features.device)
    valid_classes = valid_classes.to(features.device).bool()
    if not bool(valid_classes.any()):
        return features.sum() * 0.0
    sim = features.mean(dim=0, keepdim=True) @ mean.detach()[valid_classes].to(features.dtype).t() / tau
    return F.log_softmax(sim, dim=1).sum() / (c * math.log(c))
