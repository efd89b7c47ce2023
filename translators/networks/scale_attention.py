"""SemST scale attention: an ASPP head that predicts the fusion map M_s (SemST Eq. 6).

Supplement 2.1.3: ASPP [DeepLab] on the global encoder's embedding, "composed of one block of a
1x1 AdaptivePool-Convolution structure, four 4x4 convolutional layers with dilations of 1, 6, 12
and 18, and a convolutional layer with stride 3 applied on the concatenated features from all
convolutional layers resized to the same resolution. Finally, the features are input into a
convolutional layer to predict a scale map with one channel and size equal to the resized global
crops h_g." Then Y = M_s * Y_l + (1 - M_s) * Y_g.

Choices where the text is ambiguous (all configurable):

* image-pooling branch: AdaptiveAvgPool2d(1) -> Conv1x1(in, mid) -> ReLU, broadcast back to the
  feature size (DeepLab-v3 style). It is never normalised (1x1 maps cannot be instance/batch-normed
  at batch 1).
* the four atrous branches use ``kernel_size=3`` by default (DeepLab's ASPP); the supplement's
  "4x4" is taken as a typo, ``kernel_size=4`` is supported (asymmetric "same" padding). Each is
  Conv(in, mid, dilation d) -> norm -> ReLU.
* "a convolutional layer with stride 3" is read as a 3x3 (stride 1) projection conv of the
  concatenation (5*mid -> mid) -> norm -> ReLU; ``proj_kernel=1`` gives DeepLab-v3's 1x1.
* the last layer is Conv1x1(mid, 1); its logits are bilinearly resized to ``out_size`` and passed
  through a sigmoid, so M_s lies in (0, 1). Its bias starts at 0, so M_s = 0.5 at init for
  a zero-initialised last layer (with the default init the map starts close to 0.5).
* ``norm="none"`` by default (batch 1 in the paper; DeepLab-v2's ASPP has no norm either).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv_bias, make_norm


class _SamePad(nn.Module):
    """Zero padding that keeps the spatial size for any kernel size and dilation."""

    def __init__(self, kernel_size: int, dilation: int) -> None:
        super().__init__()
        total = dilation * (kernel_size - 1)
        self.pad = (total // 2, total - total // 2, total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


class ScaleAttention(nn.Module):
    """ASPP head mapping bottleneck features (B, C, h, w) to a scale map M_s (B, 1, H, W) in (0, 1)."""

    def __init__(self, in_channels: int, mid_channels: int = 256,
                 dilations: Sequence[int] = (1, 6, 12, 18), kernel_size: int = 3,
                 proj_kernel: int = 3, norm: str = "none", image_pool: bool = True) -> None:
        super().__init__()
        bias = conv_bias(norm)
        self.dilations = tuple(int(d) for d in dilations)
        self.image_pool = (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, mid_channels, 1),
                                          nn.ReLU(True)) if image_pool else None)
        self.branches = nn.ModuleList(
            nn.Sequential(_SamePad(kernel_size, d),
                          nn.Conv2d(in_channels, mid_channels, kernel_size, dilation=d, bias=bias),
                          make_norm(norm, mid_channels), nn.ReLU(True))
            for d in self.dilations)
        n_cat = len(self.dilations) + (1 if image_pool else 0)
        self.project = nn.Sequential(_SamePad(proj_kernel, 1),
                                     nn.Conv2d(n_cat * mid_channels, mid_channels, proj_kernel, bias=bias),
                                     make_norm(norm, mid_channels), nn.ReLU(True))
        self.head = nn.Conv2d(mid_channels, 1, 1)

    def logits(self, feat: torch.Tensor) -> torch.Tensor:
        """Scale-map logits at the feature resolution (B, 1, h, w)."""
        outs = [branch(feat) for branch in self.branches]
        if self.image_pool is not None:
            outs.append(self.image_pool(feat).expand(-1, -1, *feat.shape[-2:]))
        return self.head(self.project(torch.cat(outs, dim=1)))

    def forward(self, feat: torch.Tensor, out_size: Sequence[int] | torch.Size) -> torch.Tensor:
        """M_s of shape (B, 1, *out_size) in (0, 1), resized bilinearly (align_corners=False)."""
        logit = F.interpolate(self.logits(feat), size=tuple(int(s) for s in out_size)[-2:],
                              mode="bilinear", align_corners=False)
        return torch.sigmoid(logit)
