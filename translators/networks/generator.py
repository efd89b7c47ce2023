"""CUT's ResNet generator (``resnet_9blocks``) with the default anti-aliased resampling.

The network is one flat ``nn.Sequential`` (``self.model``) so that the PatchNCE / hDCE / TS taps
are plain indices into it, exactly as in CUT (docs/reference.md §1.3).
Indices with ``antialias=True`` (the default):

====== =========================================================== ========== ==========
index  layer                                                        channels   stride
====== =========================================================== ========== ==========
0      ReflectionPad2d(3) -- tap 0 = the padded input image          input_nc   1 (H+6)
1-3    Conv7x7 -> norm -> ReLU                                       ngf        1
4      Conv3x3 stride 1 (pre-norm)  -- tap 4                         2 ngf      1
5-7    norm, ReLU, BlurDownsample                                    2 ngf      1 -> 2
8      Conv3x3 stride 1 (pre-norm)  -- tap 8                         4 ngf      2
9-11   norm, ReLU, BlurDownsample                                    4 ngf      2 -> 4
12 ..  ResnetBlock k at index 12+k  -- tap 12 = block 1, 16 = block 5 4 ngf      4
11+n_blocks+1 .. decoder: [BlurUpsample, Conv3x3, norm, ReLU] x 2, ReflectionPad(3), Conv7x7, Tanh
====== =========================================================== ========== ==========

With fewer than 5 residual blocks index 16 is no longer a residual block: with ``n_blocks=3``
(the ``tiny`` preset) indices 12-14 are the blocks, 15 is the first BlurUpsample (4 ngf, stride 2)
and 16 is the first decoder conv (2 ngf, stride 2, pre-norm). Use :meth:`ResnetGenerator.
encoder_layers` / ``ResnetGenerator.bottleneck_index`` to choose taps for small configs
(e.g. ``[0, 4, 8, 12, 14]`` for 3 blocks). Any index of ``self.model`` may be tapped.
With ``antialias=False`` the down/up-sampling become stride-2 convs / transposed convs and the
indices shift (0 pad, 1-3 conv7, 4-6 down1, 7-9 down2, 10.. blocks), as in CUT's ``--no_antialias``.

``encode(x)`` returns the **bottleneck**: the output of the last residual block (4 ngf channels,
stride 4). The SemST scale-attention head consumes it (supplement 2.1.3: "applied to the embedding
space obtained by G_enc^g"; the paper splits G into encoder/decoder halves, and the residual blocks
are counted in the encoder here, matching CUT whose taps 12 and 16 lie inside the blocks).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import BlurDownsample, BlurUpsample, ReflectionPad2d, ResnetBlock, conv_bias, make_norm


class ResnetGenerator(nn.Module):
    """Encoder (c7s1-ngf, 2 downsamplings) -> ``n_blocks`` ResNet blocks -> decoder -> tanh."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9,
                 antialias: bool = True, norm: str = "instance", padding: str = "reflect",
                 antialias_up: bool | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        antialias_up = antialias if antialias_up is None else antialias_up
        bias = conv_bias(norm)
        layers: list[nn.Module] = []
        channels: list[int] = []  # output channels after each entry of `layers`
        strides: list[int] = []   # output stride (w.r.t. the input image) after each entry

        def add(module: nn.Module, ch: int, stride: int) -> None:
            layers.append(module)
            channels.append(ch)
            strides.append(stride)

        add(ReflectionPad2d(3), input_nc, 1)
        add(nn.Conv2d(input_nc, ngf, 7, bias=bias), ngf, 1)
        add(make_norm(norm, ngf), ngf, 1)
        add(nn.ReLU(True), ngf, 1)
        ch, stride = ngf, 1
        for _ in range(2):  # two downsamplings
            out = ch * 2
            if antialias:
                add(nn.Conv2d(ch, out, 3, stride=1, padding=1, bias=bias), out, stride)
                add(make_norm(norm, out), out, stride)
                add(nn.ReLU(True), out, stride)
                stride *= 2
                add(BlurDownsample(out), out, stride)
            else:
                stride *= 2
                add(nn.Conv2d(ch, out, 3, stride=2, padding=1, bias=bias), out, stride)
                add(make_norm(norm, out), out, stride)
                add(nn.ReLU(True), out, stride)
            ch = out
        self.first_block_index = len(layers)
        for _ in range(n_blocks):
            add(ResnetBlock(ch, norm=norm, padding=padding, dropout=dropout), ch, stride)
        self.bottleneck_index = len(layers) - 1
        for _ in range(2):  # two upsamplings
            out = ch // 2
            if antialias_up:
                stride //= 2
                add(BlurUpsample(ch), ch, stride)
                add(nn.Conv2d(ch, out, 3, stride=1, padding=1, bias=bias), out, stride)
            else:
                stride //= 2
                add(nn.ConvTranspose2d(ch, out, 3, stride=2, padding=1, output_padding=1, bias=bias),
                    out, stride)
            add(make_norm(norm, out), out, stride)
            add(nn.ReLU(True), out, stride)
            ch = out
        add(ReflectionPad2d(3), ch, stride)
        add(nn.Conv2d(ch, output_nc, 7), output_nc, stride)
        add(nn.Tanh(), output_nc, stride)
        self.model = nn.Sequential(*layers)
        self._channels = tuple(channels)
        self._strides = tuple(strides)
        self.input_nc, self.output_nc, self.ngf, self.n_blocks = input_nc, output_nc, ngf, n_blocks
        self.bottleneck_channels = channels[self.bottleneck_index]

    # ---------------------------------------------------------------- introspection
    def _check_layers(self, layers: Sequence[int]) -> list[int]:
        layers = [int(i) for i in layers]
        if not layers:
            raise ValueError("layers must name at least one index of ResnetGenerator.model")
        bad = [i for i in layers if not 0 <= i < len(self.model)]
        if bad:
            raise ValueError(f"feature layer indices {bad} are outside ResnetGenerator.model "
                             f"(0..{len(self.model) - 1}; n_blocks={self.n_blocks})")
        return layers

    def feature_channels(self, layers: Sequence[int]) -> list[int]:
        """Channels of the feature map at each tap (no forward pass)."""
        return [self._channels[i] for i in self._check_layers(layers)]

    def feature_strides(self, layers: Sequence[int]) -> list[int]:
        """Output stride of each tap w.r.t. the input (tap 0 is additionally padded by 3 pixels)."""
        return [self._strides[i] for i in self._check_layers(layers)]

    def encoder_layers(self, n_taps: int = 5) -> list[int]:
        """CUT's taps ``[0, 4, 8, 12, 16]`` when they all lie in the encoder, otherwise the same
        pattern with taps beyond the bottleneck clamped to it (duplicates removed)."""
        if self._strides[7] == 2 and self.first_block_index == 12:
            base = [0, 4, 8, 12, 16, 20][:n_taps]
        else:  # antialias=False: pad, conv7 block, down1, down2, blocks
            base = [0, 4, 7, 10, 14, 18][:n_taps]
        out: list[int] = []
        for i in base:
            i = min(i, self.bottleneck_index)
            if i not in out:
                out.append(i)
        return out

    # ---------------------------------------------------------------- forward passes
    def forward(self, x: torch.Tensor, layers: Sequence[int] | None = None,
                encode_only: bool = False):
        """``forward(x)`` -> translated image in [-1, 1].

        ``forward(x, layers, encode_only=True)`` -> list of the features at ``layers`` (in the
        order given); the pass stops after the deepest requested layer. With ``layers`` and
        ``encode_only=False`` it returns ``(image, feats)`` like :meth:`forward_with_features`."""
        if layers is None or len(layers) == 0:
            if encode_only:
                raise ValueError("encode_only=True needs a non-empty list of layers")
            return self.model(x)
        if encode_only:
            return self._run(x, self._check_layers(layers), stop_early=True)[1]
        return self.forward_with_features(x, layers)

    def forward_with_features(self, x: torch.Tensor, layers: Sequence[int]
                              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image and tapped features from ONE pass (decoder not re-run for the fake image)."""
        return self._run(x, self._check_layers(layers), stop_early=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck features: output of the last residual block (4*ngf channels, stride 4)."""
        return self.model[: self.bottleneck_index + 1](x)

    def _run(self, x: torch.Tensor, layers: list[int], stop_early: bool
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        wanted = set(layers)
        last = max(layers)
        found: dict[int, torch.Tensor] = {}
        feat = x
        n = len(self.model)
        for idx, layer in enumerate(self.model):
            feat = layer(feat)
            if idx in wanted:
                nxt = self.model[idx + 1] if idx + 1 < n else None
                # an in-place ReLU right after a tap would overwrite the stored feature
                inplace_next = isinstance(nxt, nn.ReLU) and nxt.inplace and not (stop_early and idx == last)
                found[idx] = feat.clone() if inplace_next else feat
            if stop_early and idx == last:
                break
        return feat, [found[i] for i in layers]
