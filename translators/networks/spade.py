"""Networks of the semantically adaptive SPADE-guided translator (Musto & Zinelli 2020, Sec. 3.2, 4).

* :class:`SPADE` -- out = IN(x) * (1 + gamma(m)) + beta(m) (Park et al. 2019; docs/reference.md §5.1): the
  guidance m (the segmenter's *unnormalised* logits, paper Sec. 3.2) is resized to the activation
  size, passed through a shared conv3x3 of width ``hidden`` (128 in SPADE, hard-coded there) + ReLU
  and two conv3x3 heads giving per-pixel gamma and beta. The paper's Eq. 6 writes gamma * IN(x) +
  beta; we use SPADE's ``1 + gamma`` form (identical family, gamma = beta = 0 is plain instance
  norm at init). Resizing: ``bilinear`` by default (our choice: m is a continuous logit map, not a
  one-hot label map as in SPADE, whose ``nearest`` is kept as an option, ``seg_interp``).
* :class:`SPADEResnetBlock` -- SPADE -> LReLU(0.2) -> conv3x3 -> SPADE -> LReLU -> conv3x3 + x
  (fin = fout, identity shortcut), spectral norm on the convs (SPADE's ``spectral...`` norm_G).
* :class:`LayerNorm` -- MUNIT's LayerNorm: per-sample mean/std over (C, H, W), y = (x - mu) /
  (sigma + eps), then a per-channel affine (gamma ~ U[0, 1), beta = 0), used in the upsampling blocks
  ("We found LN to better preserve the style", Sec. 4).
* :class:`ContentEncoder` -- E_S / E_T: c7s1-ngf, ``n_downsample`` x [conv4x4 s2], ``n_res`` residual
  blocks, all with instance norm and ReLU, reflection padding (MUNIT/UNIT content encoder).
* :class:`SpadeDecoder` -- G_S / G_T: ``n_res`` SPADE residual blocks on the latent code, then
  ``n_downsample`` x [nearest x2, conv5x5, LayerNorm, ReLU], then c7s1-3 + tanh.

Spectral norm (paper: "applied to all the models") wraps every conv of E and G except SPADE's
small modulation MLP (as in SPADE, where only the resblock convs are spectral). Weights are
initialised (``init_type``/``init_gain``) before spectral norm is applied.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ReflectionPad2d, init_weights

SEG_INTERP = ("bilinear", "nearest")


def _sn(module: nn.Module, spectral: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(module) if spectral else module


def resize_guidance(m: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize the guidance map to ``size`` (h, w): bilinear (antialiased when shrinking) or nearest."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    if mode == "nearest":
        return F.interpolate(m, size=size, mode="nearest")
    if mode == "bilinear":
        shrink = size[0] < m.shape[-2] or size[1] < m.shape[-1]
        # float32: CPU has no bf16 antialiased resize, and the guidance is a probability map
        return F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    raise ValueError(f"seg_interp must be one of {SEG_INTERP}, got {mode!r}")


class SPADE(nn.Module):
    """Spatially-adaptive denormalisation of instance-normalised activations (module docstring)."""

    def __init__(self, channels: int, label_nc: int, hidden: int = 128, kernel: int = 3,
                 seg_interp: str = "bilinear") -> None:
        super().__init__()
        if seg_interp not in SEG_INTERP:
            raise ValueError(f"seg_interp must be one of {SEG_INTERP}, got {seg_interp!r}")
        pad = kernel // 2
        self.norm = nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel, padding=pad), nn.ReLU(True))
        self.mlp_gamma = nn.Conv2d(hidden, channels, kernel, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, channels, kernel, padding=pad)
        self.seg_interp = seg_interp

    def modulation(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta), each (B, C, H', W'), from the guidance resized to x's size."""
        actv = self.mlp_shared(resize_guidance(m.to(x.dtype), tuple(x.shape[-2:]), self.seg_interp))
        return self.mlp_gamma(actv), self.mlp_beta(actv)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(x, m)
        return self.norm(x) * (1 + gamma) + beta


class SPADEResnetBlock(nn.Module):
    """x + conv(LReLU(SPADE(conv(LReLU(SPADE(x, m))), m))) with 3x3 convs (fin = fout)."""

    def __init__(self, channels: int, label_nc: int, hidden: int = 128, spectral: bool = True,
                 seg_interp: str = "bilinear") -> None:
        super().__init__()
        self.norm_0 = SPADE(channels, label_nc, hidden, seg_interp=seg_interp)
        self.conv_0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm_1 = SPADE(channels, label_nc, hidden, seg_interp=seg_interp)
        self.conv_1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.spectral = spectral

    def apply_spectral_norm(self) -> None:
        if self.spectral:
            self.conv_0 = _sn(self.conv_0, True)
            self.conv_1 = _sn(self.conv_1, True)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, m), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, m), 0.2))
        return x + dx


class LayerNorm(nn.Module):
    """MUNIT LayerNorm: normalise each sample over (C, H, W) by mean and std (+eps), per-channel affine."""

    def __init__(self, channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps, self.affine = eps, affine
        if affine:
            self.gamma = nn.Parameter(torch.rand(channels))
            self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1).float()
        mean = flat.mean(1).view(-1, 1, 1, 1)
        std = flat.std(1).view(-1, 1, 1, 1)
        y = ((x.float() - mean) / (std + self.eps)).to(x.dtype)
        if self.affine:
            y = y * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)
        return y


class _ResBlock(nn.Module):
    """Encoder residual block: reflect-pad conv3x3, IN, ReLU, reflect-pad conv3x3, IN, + x."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _spectralise(module: nn.Module, skip: tuple[type, ...] = ()) -> None:
    """Wrap every Conv2d child (recursively) in spectral norm, except inside ``skip`` modules."""
    for name, child in list(module.named_children()):
        if isinstance(child, skip):
            continue
        if isinstance(child, nn.Conv2d):
            setattr(module, name, _sn(child, True))
        else:
            _spectralise(child, skip)


class ContentEncoder(nn.Module):
    """E: image (B, 3, H, W) in [-1, 1] -> latent code (B, ngf * 2^n_downsample, H/2^n, W/2^n)."""

    def __init__(self, input_nc: int = 3, ngf: int = 64, n_downsample: int = 2, n_res: int = 4,
                 spectral: bool = True, init_type: str = "kaiming", init_gain: float = 0.02) -> None:
        super().__init__()
        layers: list[nn.Module] = [ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), nn.InstanceNorm2d(ngf),
                                   nn.ReLU(True)]
        ch = ngf
        for _ in range(n_downsample):
            layers += [ReflectionPad2d(1), nn.Conv2d(ch, ch * 2, 4, stride=2), nn.InstanceNorm2d(ch * 2),
                       nn.ReLU(True)]
            ch *= 2
        layers += [_ResBlock(ch) for _ in range(n_res)]
        self.model = nn.Sequential(*layers)
        self.out_channels = ch
        init_weights(self, init_type, init_gain)
        if spectral:
            _spectralise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SpadeDecoder(nn.Module):
    """G: (latent code, guidance logits) -> image in [-1, 1] (module docstring)."""

    def __init__(self, label_nc: int, output_nc: int = 3, ngf: int = 64, n_downsample: int = 2, n_res: int = 4,
                 hidden: int = 128, spectral: bool = True, seg_interp: str = "bilinear",
                 init_type: str = "kaiming", init_gain: float = 0.02) -> None:
        super().__init__()
        ch = ngf * 2 ** n_downsample
        self.res = nn.ModuleList(SPADEResnetBlock(ch, label_nc, hidden, spectral, seg_interp) for _ in range(n_res))
        up: list[nn.Module] = []
        for _ in range(n_downsample):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), ReflectionPad2d(2), nn.Conv2d(ch, ch // 2, 5),
                   LayerNorm(ch // 2), nn.ReLU(True)]
            ch //= 2
        up += [ReflectionPad2d(3), nn.Conv2d(ch, output_nc, 7), nn.Tanh()]
        self.up = nn.Sequential(*up)
        init_weights(self, init_type, init_gain)
        if spectral:
            for block in self.res:
                block.apply_spectral_norm()
            _spectralise(self.up)

    def forward(self, z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        for block in self.res:
            z = block(z, m)
        return self.up(z)


__all__ = ["ContentEncoder", "LayerNorm", "SPADE", "SPADEResnetBlock", "SpadeDecoder", "resize_guidance"]
