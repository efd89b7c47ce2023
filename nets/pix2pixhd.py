"""pix2pixHD generator and discriminators (plain torch; shared by LDR and the translators).

* :class:`GlobalGenerator` -- pix2pixHD's global generator: c7s1-ngf, ``n_downsample`` stride-2
  3x3 convs, ``n_blocks`` ResNet blocks, as many 3x3 transposed convs, c7s1-out, tanh; instance
  norm, reflection padding. LDR paper: 3 down / 9 blocks / 3 up (Sec. 4.2).
* :class:`NLayerDiscriminator` -- pix2pixHD's PatchGAN returning every intermediate activation
  (for feature matching); optional spectral norm (the SPADE-guided translator uses it).
* :class:`MultiscaleDiscriminator` -- ``num_D`` identical PatchGANs on the input downsampled by
  AvgPool(3, s2, pad 1, count_include_pad=False) between scales (LDR: 3 scales, factors 1, 2, 4;
  pix2pixHD / MUNIT / SPADE style). :func:`score_maps` extracts the per-scale score maps.
* :func:`init_normal` -- pix2pixHD/CycleGAN init, conv weights N(0, 0.02), biases 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def score_maps(outputs: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """The final (score) map of every scale of a :class:`MultiscaleDiscriminator` output."""
    return [feats[-1] for feats in outputs]


__all__ = ["GlobalGenerator", "MultiscaleDiscriminator", "NLayerDiscriminator", "ResnetBlock", "init_normal",
           "score_maps"]
