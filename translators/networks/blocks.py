"""Small building blocks shared by the translator networks.

* :class:`BlurDownsample` / :class:`BlurUpsample`: CUT's anti-aliased resampling (Zhang 2019,
  "Making convolutional networks shift-invariant again"), written from the description in
  docs/reference.md §1.3: a fixed binomial [1,2,1] x [1,2,1] blur applied with stride 2 after
  reflection padding, and a fixed [1,3,3,1] transposed-conv filter (replicate padding) for x2
  upsampling. The filters are non-persistent buffers (not learnable, not in checkpoints).
* :func:`make_norm`: the norm-layer factory (``"instance"`` = InstanceNorm2d(affine=False,
  track_running_stats=False) as in CUT, ``"batch"``, ``"none"``).
* :class:`ResnetBlock`: pad-conv3x3-norm-ReLU-pad-conv3x3-norm with an identity skip.
* :class:`ReflectionPad2d` / :class:`ReplicationPad2d` (:func:`pad_keep_dtype`): pads that keep
  the activation dtype under autocast (CPU autocast would run them in float32); the blur filters run
  in float32 under CPU autocast (:func:`depthwise_full_precision`).
* :func:`init_weights`: CUT/CycleGAN initialisation. Conv / Linear weights: ``normal`` N(0, gain),
  ``xavier`` xavier_normal_(gain), ``kaiming`` kaiming_normal_(a=0, fan_in), ``orthogonal``
  orthogonal_(gain); biases 0; BatchNorm weights N(1, gain), biases 0. CUT's default is xavier
  with gain 0.02 (docs/reference.md §1.2). Blur filters are buffers, untouched.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "replicate", "zero")


def make_norm(norm: str, channels: int) -> nn.Module:
    """Return the normalisation layer named ``norm`` for ``channels`` feature maps."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def conv_bias(norm: str) -> bool:
    """Convs feeding a BatchNorm need no bias; CUT keeps the bias before InstanceNorm(affine=False)."""
    return norm != "batch"


def pad_keep_dtype(x: torch.Tensor, pad: tuple[int, ...], mode: str) -> torch.Tensor:
    """``F.pad`` that returns ``x``'s dtype under autocast too.

    CPU autocast runs reflection/replication pads in float32, so every padded bf16 activation
    would be cast up and straight back down by the next conv. Padding only copies values, so
    running it in the input's dtype is exact and saves two casts (and their backward) per pad."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return F.pad(x, pad, mode=mode)
    return F.pad(x, pad, mode=mode)


def _cpu_autocast(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def depthwise_full_precision(fn):
    """Decorator for the fixed depthwise blur filters: under CPU autocast run them in float32.

    oneDNN has no fast bf16 depthwise kernels (forward + backward of the blur at 32 channels,
    66x66: 0.68 ms in float32, 2.06 ms in bf16), and the blur is memory-bound anyway; the next
    conv casts the float32 output back to bf16."""
    @functools.wraps(fn)
    def wrapped(self, x: torch.Tensor) -> torch.Tensor:
        if _cpu_autocast(x):
            with torch.autocast("cpu", enabled=False):
                return fn(self, x.float())
        return fn(self, x)
    return wrapped


class ReflectionPad2d(nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` that keeps the input dtype under autocast (see :func:`pad_keep_dtype`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_keep_dtype(x, self.padding, "reflect")


class ReplicationPad2d(nn.ReplicationPad2d):
    """``nn.ReplicationPad2d`` that keeps the input dtype under autocast (see :func:`pad_keep_dtype`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_keep_dtype(x, self.padding, "replicate")


def make_pad(padding: str, size: int) -> nn.Module:
    """Explicit padding layer (``"zero"`` -> ZeroPad2d) so convs themselves use padding=0."""
    if padding == "reflect":
        return ReflectionPad2d(size)
    if padding == "replicate":
        return ReplicationPad2d(size)
    if padding == "zero":
        return nn.ZeroPad2d(size)
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def _binomial(size: int) -> torch.Tensor:
    """1-D binomial filter of length ``size`` (row ``size-1`` of Pascal's triangle)."""
    row = torch.ones(1, dtype=torch.float64)
    for _ in range(size - 1):
        row = torch.cat([row, torch.zeros(1, dtype=torch.float64)]) + torch.cat(
            [torch.zeros(1, dtype=torch.float64), row])
    return row


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect-pad, depthwise binomial blur, stride 2.

    With the default 3-tap filter an even H maps to H/2 (CUT's ``Downsample``)."""

    def __init__(self, channels: int, filt_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        taps = _binomial(filt_size)
        kernel = torch.outer(taps, taps)
        kernel = (kernel / kernel.sum()).float()
        self.register_buffer("kernel", kernel.expand(channels, 1, filt_size, filt_size).clone(),
                             persistent=False)
        self.channels, self.stride = channels, stride
        left = (filt_size - 1) // 2
        self.pad = (left, filt_size - 1 - left, left, filt_size - 1 - left)

    @depthwise_full_precision
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_keep_dtype(x, self.pad, "reflect")
        return F.conv2d(x, self.kernel.to(x.dtype), stride=self.stride, groups=self.channels)


class BlurUpsample(nn.Module):
    """Anti-aliased x2 upsampling: replicate-pad by 1, transposed conv with the fixed separable
    [1,3,3,1] filter (normalised to sum to stride**2), then crop to exactly 2H x 2W."""

    def __init__(self, channels: int, filt_size: int = 4, stride: int = 2) -> None:
        super().__init__()
        if filt_size != 4 or stride != 2:
            raise ValueError("BlurUpsample supports filt_size=4, stride=2 (CUT's setting) only")
        taps = _binomial(filt_size)
        kernel = torch.outer(taps, taps)
        kernel = (kernel / kernel.sum() * stride ** 2).float()
        self.register_buffer("kernel", kernel.expand(channels, 1, filt_size, filt_size).clone(),
                             persistent=False)
        self.channels, self.stride = channels, stride

    @depthwise_full_precision
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_keep_dtype(x, (1, 1, 1, 1), "replicate")
        # (H+2-1)*2 - 2*2 + 4 = 2H+2 rows; dropping the first and the last row/column gives 2H.
        y = F.conv_transpose2d(x, self.kernel.to(x.dtype), stride=self.stride, padding=2,
                               groups=self.channels)
        return y[:, :, 1:-1, 1:-1]


class ResnetBlock(nn.Module):
    """ResNet block of the CUT/CycleGAN generator: ``x + conv-norm-ReLU-conv-norm(x)``."""

    def __init__(self, channels: int, norm: str = "instance", padding: str = "reflect",
                 dropout: float = 0.0) -> None:
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [make_pad(padding, 1), nn.Conv2d(channels, channels, 3, bias=bias),
                                   make_norm(norm, channels), nn.ReLU(True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [make_pad(padding, 1), nn.Conv2d(channels, channels, 3, bias=bias),
                   make_norm(norm, channels)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


def init_weights(module: nn.Module, init_type: str = "xavier", gain: float = 0.02) -> nn.Module:
    """Initialise every Conv/Linear/BatchNorm inside ``module`` in place; returns ``module``."""
    if init_type not in INIT_TYPES:
        raise ValueError(f"init_type must be one of {INIT_TYPES}, got {init_type!r}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == "normal":
                nn.init.normal_(m.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(m.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module
