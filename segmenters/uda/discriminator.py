"""Output-space fully-convolutional discriminator (AdaptSegNet/BDL ``FCDiscriminator``).

Five 4x4 convolutions with stride 2 and padding 1: ``C -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1`` with
LeakyReLU(0.2) after the first four (docs/reference.md §7.2, §8.1). Input: the
segmentor's softmax map (B, C, H, W); output: a (B, 1, H/32, W/32) map of logits ("source" = 0,
"target" = 1 in BDL's labelling). ``ndf=64`` is the paper width (64-128-256-512-1); the tiny preset
uses a narrower ``ndf``.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmseg.registry import MODELS  # noqa: E402


@MODELS.register_module(force=True)
class FCDiscriminator(nn.Module):
    """Fully-convolutional discriminator on C-channel probability maps."""

    def __init__(self, num_classes: int, ndf: int = 64, negative_slope: float = 0.2,
                 num_layers: int = 5) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"FCDiscriminator num_layers must be >= 2, got {num_layers}")
        layers: list[nn.Module] = []
        in_ch = num_classes
        for i in range(num_layers - 1):
            out_ch = ndf * 2 ** i
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1),
                       nn.LeakyReLU(negative_slope, inplace=True)]
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, 1, kernel_size=4, stride=2, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.model(probs)
