"""PatchGAN discriminator (70x70 receptive field at ``n_layers=3``), CUT's anti-aliased variant.

Layout (docs/reference.md §1.4; pix2pix/CycleGAN "basic" D; SemST supplement 2.1.4):
Conv4x4(input_nc->ndf) + LeakyReLU(0.2) + [BlurDownsample], then for n=1..n_layers-1
Conv4x4(-> ndf*min(2^n, 8)) + norm + LeakyReLU + [BlurDownsample], then Conv4x4 stride 1
(-> ndf*min(2^n_layers, 8)) + norm + LeakyReLU, then Conv4x4 stride 1 -> 1 channel.
With ``antialias=True`` each stride-2 conv is a stride-1 conv followed by a blur-pool (CUT's
default); with ``antialias=False`` the convs themselves have stride 2. Output: a patch map of
raw scores (no sigmoid; the LSGAN loss is applied to it), 30x30 for a 256x256 input.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import BlurDownsample, conv_bias, make_norm


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator returning a (B, 1, h, w) map of real/fake scores."""

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, antialias: bool = True,
                 norm: str = "instance") -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        bias = conv_bias(norm)
        kw, pw = 4, 1

        def down(cin: int, cout: int, first: bool) -> list[nn.Module]:
            if antialias:
                mods: list[nn.Module] = [nn.Conv2d(cin, cout, kw, stride=1, padding=pw,
                                                   bias=True if first else bias)]
            else:
                mods = [nn.Conv2d(cin, cout, kw, stride=2, padding=pw, bias=True if first else bias)]
            if not first:
                mods.append(make_norm(norm, cout))
            mods.append(nn.LeakyReLU(0.2, True))
            if antialias:
                mods.append(BlurDownsample(cout))
            return mods

        seq: list[nn.Module] = down(input_nc, ndf, first=True)
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += down(ndf * prev, ndf * mult, first=False)
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, kw, stride=1, padding=pw, bias=bias),
                make_norm(norm, ndf * mult), nn.LeakyReLU(0.2, True),
                nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=pw)]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
