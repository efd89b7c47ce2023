"""pix2pixHD-style networks and losses of label-driven reconstruction (LDR, Yang et al. ECCV 2020).

LDR's reconstruction network ``M`` rebuilds an image from the segmenter's (near one-hot) label map
and is trained with the pix2pixHD loss stack (docs/reference.md §5.2 and §6; LDR paper
Sec. 3.4, Eq. 3-6). Everything here is plain torch (no mmseg) and is reused by the translators
(``translators.networks.{pix2pixhd,multiscale_discriminator,vgg}`` and
``translators.losses.{perceptual,feature_matching}`` import from this module), because
``segmenters`` never imports ``translators`` (docs/design.md §2.2).

* :func:`boltzmann_softmax` -- LDR Eq. 3, Omega = softmax(G(X) / tau), tau = 0.001 by default.
* :class:`GlobalGenerator` -- pix2pixHD's global generator: c7s1-ngf, ``n_downsample`` stride-2
  3x3 convs, ``n_blocks`` ResNet blocks, as many 3x3 transposed convs, c7s1-out, tanh; instance
  norm, reflection padding. LDR paper: 3 down / 9 blocks / 3 up (Sec. 4.2).
* :class:`NLayerDiscriminator` -- pix2pixHD's PatchGAN returning every intermediate activation
  (for feature matching); optional spectral norm (the SPADE-guided translator uses it).
* :class:`MultiscaleDiscriminator` -- ``num_D`` identical PatchGANs on the input downsampled by
  AvgPool(3, s2, pad 1, count_include_pad=False) between scales (LDR: 3 scales, factors 1, 2, 4).
* :class:`VGG19Features` -- torchvision's VGG19 ``features`` cut into relu1_1, relu2_1, relu3_1,
  relu4_1, relu5_1 (slices [0:2], [2:7], [7:12], [12:21], [21:30]); weights only from a user file
  (:func:`load_vgg19_features`, ``weights_only=True``) or random for tests.
* Pure losses: :func:`lsgan_multiscale` (pix2pixHD's default LSGAN, summed over scales),
  :func:`feature_matching_loss` (pix2pixHD weights lambda_feat * 4/(n_layers+1) / num_D) and
  :func:`perceptual_loss` (L1 per VGG layer with weights 1/32, 1/16, 1/8, 1/4, 1).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

#: pix2pixHD / SPADE VGG19 layer weights for relu1_1 .. relu5_1
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
#: slices of torchvision's ``vgg19().features`` ending at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------
# LDR Eq. 3
# ------------------------------------------------------------------------------------------------
def boltzmann_softmax(logits: torch.Tensor, tau: float = 1e-3, dim: int = 1) -> torch.Tensor:
    """Omega = softmax(logits / tau) over ``dim`` (LDR Eq. 3), computed in float32.

    Numerical care: ``torch.softmax`` subtracts the per-pixel maximum before ``exp``, so even
    ``logits / 0.001`` (values ~1e4) cannot overflow; the computation is forced to float32 (outside
    autocast) because fp16 would overflow at 65504 and lose the small gradients. The gradient
    dOmega_i/dz_j = Omega_i (delta_ij - Omega_j) / tau is finite; it is non-zero where the top-2
    logit margin is below roughly 80 tau (exp(-margin/tau) still representable), i.e. Omega is a
    differentiable near-one-hot map whose gradient concentrates on ambiguous pixels -- the
    behaviour the paper's tau = 0.001 ablation (Table 5) selects.
    """
    if tau <= 0:
        raise ValueError(f"Boltzmann temperature tau must be > 0, got {tau}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return torch.softmax(logits.float() / float(tau), dim=dim)


# ------------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    """pix2pixHD residual block: reflect-pad, conv3x3, IN, ReLU, reflect-pad, conv3x3, IN, + x."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class GlobalGenerator(nn.Module):
    """pix2pixHD GlobalGenerator: label map (B, input_nc, H, W) -> image (B, output_nc, H, W) in [-1, 1].

    ``H`` and ``W`` must be multiples of ``2 ** n_downsample`` (the transposed convs restore the
    exact size then). Weights: N(0, 0.02) convs, zero biases (pix2pixHD ``weights_init``).
    """

    def __init__(self, input_nc: int, output_nc: int = 3, ngf: int = 64, n_downsample: int = 3,
                 n_blocks: int = 9) -> None:
        super().__init__()
        if n_downsample < 0 or n_blocks < 0:
            raise ValueError(f"n_downsample and n_blocks must be >= 0, got {n_downsample}, {n_blocks}")
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), nn.InstanceNorm2d(ngf),
                                   nn.ReLU(True)]
        ch = ngf
        for _ in range(n_downsample):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResnetBlock(ch) for _ in range(n_blocks)]
        for _ in range(n_downsample):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.multiple = 2 ** n_downsample
        init_normal(self)

    def forward(self, label_map: torch.Tensor) -> torch.Tensor:
        h, w = label_map.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"GlobalGenerator input {h}x{w} must be a multiple of {self.multiple} "
                             f"(2 ** n_downsample)")
        return self.model(label_map)


def init_normal(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pixHD/CycleGAN init: conv weights N(0, gain), biases 0. Call before spectral norm."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


# ------------------------------------------------------------------------------------------------
# discriminators
# ------------------------------------------------------------------------------------------------
def _norm2d(norm: str, channels: int) -> nn.Module:
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"discriminator norm must be 'instance' or 'none', got {norm!r}")


class NLayerDiscriminator(nn.Module):
    """pix2pixHD PatchGAN that returns all intermediate activations.

    Blocks: conv4x4 s2 (ndf) + LReLU(0.2); for n = 1..n_layers-1: conv4x4 s2 + norm + LReLU;
    conv4x4 s1 + norm + LReLU; conv4x4 s1 -> 1. Padding 2 (pix2pixHD ``ceil((4-1)/2)``); widths
    capped at 512 (= 8 ndf at the paper's ndf 64). ``forward`` returns the list of the
    ``n_layers + 2`` block outputs; the last is the patch score map.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "instance",
                 spectral: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        kw, pad = 4, 2
        cap = 8 * ndf

        def conv(cin: int, cout: int, stride: int) -> nn.Module:
            c = init_normal(nn.Conv2d(cin, cout, kw, stride=stride, padding=pad))
            return nn.utils.parametrizations.spectral_norm(c) if spectral else c

        blocks: list[nn.Module] = [nn.Sequential(conv(input_nc, ndf, 2), nn.LeakyReLU(0.2, True))]
        nf = ndf
        for _ in range(1, n_layers):
            prev, nf = nf, min(nf * 2, cap)
            blocks.append(nn.Sequential(conv(prev, nf, 2), _norm2d(norm, nf), nn.LeakyReLU(0.2, True)))
        prev, nf = nf, min(nf * 2, cap)
        blocks.append(nn.Sequential(conv(prev, nf, 1), _norm2d(norm, nf), nn.LeakyReLU(0.2, True)))
        blocks.append(nn.Sequential(conv(nf, 1, 1)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs; scale k sees the input average-pooled k times (3x3, stride 2, pad 1,
    count_include_pad=False). ``forward`` -> list over scales (finest first) of lists of features;
    ``[-1]`` of each inner list is that scale's score map. For a conditional D (LDR Eq. 4-5) pass
    ``cat(label_map, image)`` with ``input_nc = classes + 3``."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, num_D: int = 3, norm: str = "instance",
                 spectral: bool = False) -> None:
        super().__init__()
        if num_D < 1:
            raise ValueError(f"num_D must be >= 1, got {num_D}")
        self.num_D, self.n_layers = num_D, n_layers
        self.scales = nn.ModuleList(NLayerDiscriminator(input_nc, ndf, n_layers, norm, spectral)
                                    for _ in range(num_D))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for k, d in enumerate(self.scales):
            if k > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out


# ------------------------------------------------------------------------------------------------
# VGG19 perceptual features
# ------------------------------------------------------------------------------------------------
def vgg19_features_layers() -> nn.Sequential:
    """torchvision's VGG19 ``features`` up to relu5_1 (layer indices 0..29), randomly initialised.

    Built with ``torchvision.models.vgg.make_layers`` so the 100M-parameter classifier of
    ``vgg19()`` is never allocated; the layer indices (and state-dict keys) equal ``vgg19().features``."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["E"], batch_norm=False)[:VGG_SLICES[-1][1]]


class VGG19Features(nn.Module):
    """Frozen VGG19 slices ending at relu1_1 .. relu5_1 for images in [-1, 1] (RGB).

    Inputs are mapped to [0, 1] and normalised with the ImageNet mean/std that torchvision's
    weights expect (pix2pixHD feeds [-1, 1] unnormalised; normalising is our choice, it matches
    the weights' training statistics). Parameters never require grad; gradients still flow to
    the input. Build from a user weight file with :func:`load_vgg19_features`.
    """

    def __init__(self, features: nn.Sequential | None = None) -> None:
        super().__init__()
        if features is None:
            features = vgg19_features_layers()
        features = features[:VGG_SLICES[-1][1]]
        self.slices = nn.ModuleList(nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in VGG_SLICES)
        for m in self.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":  # always eval (no dropout/BN anyway)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x.float() + 1.0) * 0.5 - self.mean) / self.std
        feats = []
        for s in self.slices:
            x = s(x)
            feats.append(x)
        return feats


VGG19_HINT = "; or set uda.vgg19_weights=None to train without the perceptual term"


def resolve_vgg19_weights(spec: str | os.PathLike) -> Path:
    """``uda.vgg19_weights`` as a file: the registry name ``vgg19`` (domains/weights.py) -> the cached
    torchvision file, else the path. A missing file raises ``domains.weights.MissingWeightsError`` (a
    ``FileNotFoundError``) naming the file, URL, config key and fetch command."""
    from domains.weights import resolve

    return resolve(spec, "uda.vgg19_weights", hint=VGG19_HINT)


VGG19_EXPECTED = ("expected torchvision's ImageNet vgg19 weights (vgg19-dcbb9e9d.pth: `python -m domains.weights "
                  "fetch vgg19`) or their features-only state dict")


def _vgg19_state(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The ``features`` state dict (keys ``<i>.weight``) of a VGG19 file, checked against VGG19's
    keys and shapes; ``ValueError`` naming the file, what it holds and what it should be."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name (never torch's weights_only advice)
        from domains.errors import torch_load_problem

        raise ValueError(f"{path}: cannot load VGG19 weights: {torch_load_problem(err)}; {VGG19_EXPECTED}"
                         f"{VGG19_HINT}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a VGG19 state dict, got {type(state).__name__}; {VGG19_EXPECTED}")
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    wanted = {k: v.shape for k, v in vgg19_features_layers().state_dict().items()}
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"{path}: not a VGG19 state dict (missing {missing[:4]}...; found keys "
                         f"{sorted(state)[:6]}); {VGG19_EXPECTED}")
    wrong = [f"{k}: file {tuple(getattr(state[k], 'shape', ()))} vs VGG19 {tuple(shape)}"
             for k, shape in wanted.items() if tuple(getattr(state[k], "shape", ())) != tuple(shape)]
    if wrong:
        raise ValueError(f"{path}: weights do not fit VGG19 ({len(wrong)} tensors of another shape, e.g. "
                         f"{wrong[:2]}); {VGG19_EXPECTED}")
    return {k: state[k] for k in wanted}


def check_vgg19_weights(spec: str | os.PathLike) -> Path:
    """``uda.vgg19_weights`` resolved and checked at start-up (keys and shapes, the file memory-mapped,
    not read): its path, or ``FileNotFoundError`` / ``ValueError`` naming the file and what to do."""
    path = resolve_vgg19_weights(spec)
    try:
        _vgg19_state(path, mmap=True)
    except ValueError as err:
        if "cannot load" not in str(err):
            raise
        _vgg19_state(path, mmap=False)   # a legacy (non-zip) torch file cannot be memory-mapped
    return path


def load_vgg19_features(path: str | os.PathLike) -> VGG19Features:
    """VGG19 features from a weights file or the registry name ``vgg19``, loaded with ``weights_only=True``.

    Accepts torchvision's full ``vgg19`` state dict (``features.<i>.weight`` keys, e.g. the
    ``vgg19-dcbb9e9d.pth`` download) or a ``features``-only state dict (``<i>.weight``); only the
    convolutions up to relu5_1 are needed. Errors name the file and what was found.
    """
    path = resolve_vgg19_weights(path)
    features = vgg19_features_layers()
    features.load_state_dict(_vgg19_state(path), strict=True)
    logger.info("loaded VGG19 perceptual weights from %s", path)
    return VGG19Features(features)


# ------------------------------------------------------------------------------------------------
# losses (pure functions)
# ------------------------------------------------------------------------------------------------
def lsgan_multiscale(preds: Sequence[Sequence[torch.Tensor]], target_is_real: bool) -> torch.Tensor:
    """pix2pixHD LSGAN: sum over scales of mean((D_k(x)[-1] - t)^2), t = 1 real / 0 fake."""
    total = None
    for feats in preds:
        p = feats[-1]
        target = torch.ones_like(p) if target_is_real else torch.zeros_like(p)
        term = F.mse_loss(p.float(), target.float())
        total = term if total is None else total + term
    if total is None:
        raise ValueError("lsgan_multiscale got no discriminator outputs")
    return total


def feature_matching_loss(real: Sequence[Sequence[torch.Tensor]], fake: Sequence[Sequence[torch.Tensor]],
                          lambda_feat: float = 10.0) -> torch.Tensor:
    """Discriminator feature matching (pix2pixHD; LDR Eq. 5, second sum).

    sum_k sum_n w * ||D_k^(n)(real) - D_k^(n)(fake)||_1 over all intermediate layers n (the final
    score map excluded), w = lambda_feat * 4/(n_layers+1) / num_D with n_layers + 1 the number of
    intermediate layers per scale. The real-side features are detached (targets)."""
    num_d = len(fake)
    if num_d == 0 or len(real) != num_d:
        raise ValueError(f"feature_matching_loss needs the same number of scales, got {len(real)} and {num_d}")
    total = None
    for feats_r, feats_f in zip(real, fake):
        n_inter = len(feats_f) - 1
        if n_inter < 1:
            raise ValueError("feature_matching_loss needs discriminators with intermediate layers")
        w = lambda_feat * (4.0 / n_inter) / num_d
        for fr, ff in zip(feats_r[:-1], feats_f[:-1]):
            term = w * F.l1_loss(ff.float(), fr.detach().float())
            total = term if total is None else total + term
    return total


def perceptual_loss(feats_x: Sequence[torch.Tensor], feats_y: Sequence[torch.Tensor],
                    weights: Sequence[float] = VGG_LAYER_WEIGHTS) -> torch.Tensor:
    """sum_m w_m ||V_m(x) - V_m(y)||_1 (mean absolute error per layer; LDR Eq. 5 first sum,
    pix2pixHD ``VGGLoss``). ``y`` is the target: its features are detached."""
    if not (len(feats_x) == len(feats_y) == len(weights)):
        raise ValueError(f"perceptual_loss: {len(feats_x)}/{len(feats_y)} feature maps for {len(weights)} weights")
    total = None
    for w, fx, fy in zip(weights, feats_x, feats_y):
        term = float(w) * F.l1_loss(fx.float(), fy.detach().float())
        total = term if total is None else total + term
    return total


__all__ = ["GlobalGenerator", "MultiscaleDiscriminator", "NLayerDiscriminator", "ResnetBlock", "VGG19Features",
           "VGG_LAYER_WEIGHTS", "VGG_SLICES", "boltzmann_softmax", "feature_matching_loss", "init_normal",
           "load_vgg19_features", "lsgan_multiscale", "perceptual_loss", "vgg19_features_layers"]
