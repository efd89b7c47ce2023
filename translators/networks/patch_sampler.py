"""PatchSampleF: CUT's ``mlp_sample`` netF -- sample patch positions, embed, L2-normalise.

For each tapped feature map (B, C, H, W) the same ``num_patches`` spatial positions are drawn for
every image of the batch (as in CUT, docs/reference.md §1.5) with ``torch.randperm`` and
embedded by a per-layer 2-layer MLP Linear(C, nc)-ReLU-Linear(nc, nc); every embedding is then
divided by its L2 norm (+1e-7). Passing the returned ``patch_ids`` back in reuses the positions,
so query (output) and key (input) embeddings are aligned patch by patch.

Differences from CUT (by design): the MLPs are built eagerly from ``in_channels`` (CUT creates them
lazily at the first forward pass), so optimisers and checkpoints need no dummy forward pass.
Initialisation defaults to what CUT runs with (its ``init_type=xavier``, gain 0.02, biases 0);
``init_type="normal"`` gives N(0, 0.02).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import init_weights


class _L2Normalize(torch.autograd.Function):
    """y = x / (||x|| + eps) in at least float32, with the two-pass backward
    dx = g / (||x|| + eps) - (g . y) y / ||x||  (autograd through norm and division takes ~6)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        n = torch.linalg.vector_norm(xf, dim=dim, keepdim=True)
        y = xf / (n + eps)
        ctx.save_for_backward(y, n)
        ctx.dim, ctx.eps, ctx.in_dtype = dim, eps, x.dtype
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, n = ctx.saved_tensors
        dot = (grad * y).sum(ctx.dim, keepdim=True)
        # a zero row has y = 0, so its second term is 0 whatever the clamp
        dx = grad / (n + ctx.eps) - y * (dot / n.clamp_min(torch.finfo(n.dtype).tiny))
        return dx.to(ctx.in_dtype), None, None


def l2_normalize(x: torch.Tensor, dim: int = 1, eps: float = 1e-7) -> torch.Tensor:
    """``x / (||x||_2 + eps)`` along ``dim`` (CUT's Normalize layer), returned in at least float32
    (the 1e-7 eps must survive autocast) with a fused backward (:class:`_L2Normalize`)."""
    return _L2Normalize.apply(x, dim, eps)


class PatchSampleF(nn.Module):
    """Per-layer patch sampler + MLP projection head (the network F of CUT and SemST)."""

    def __init__(self, in_channels: Sequence[int], nc: int = 256, use_mlp: bool = True,
                 init_type: str = "xavier", init_gain: float = 0.02) -> None:
        super().__init__()
        self.in_channels = [int(c) for c in in_channels]
        if not self.in_channels:
            raise ValueError("PatchSampleF needs the channel count of at least one feature layer")
        self.use_mlp, self.nc = use_mlp, nc
        if use_mlp:
            self.mlps = nn.ModuleList(
                nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in self.in_channels)
            init_weights(self, init_type=init_type, gain=init_gain)
        else:
            self.mlps = nn.ModuleList(nn.Identity() for _ in self.in_channels)

    def out_channels(self) -> list[int]:
        """Embedding size per layer (``nc`` with the MLP, the input channels without)."""
        return [self.nc] * len(self.in_channels) if self.use_mlp else list(self.in_channels)

    def forward(self, feats: Sequence[torch.Tensor], num_patches: int = 256,
                patch_ids: Sequence[torch.Tensor] | None = None,
                generator: torch.Generator | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Embed ``num_patches`` positions per layer.

        Returns ``(embeddings, patch_ids)``: embeddings[l] has shape (B*P, nc) ordered image-major
        (rows b*P .. b*P+P-1 belong to image b) and L2-normalised rows; patch_ids[l] holds the P
        flat positions (row-major over H x W) used for layer l. ``num_patches=0`` takes all
        positions (P = H*W). Embeddings are float32 (also under autocast). Given ``patch_ids``
        are reused instead of drawing new positions.
        ``generator`` makes the draw reproducible (positions are drawn on its device)."""
        if len(feats) != len(self.mlps):
            raise ValueError(f"PatchSampleF was built for {len(self.mlps)} layers, got {len(feats)} feature maps")
        if patch_ids is not None and len(patch_ids) != len(feats):
            raise ValueError(f"got {len(patch_ids)} patch_ids for {len(feats)} feature maps")
        out, ids_out = [], []
        for l, (feat, mlp) in enumerate(zip(feats, self.mlps)):
            b, c, h, w = feat.shape
            if c != self.in_channels[l]:
                raise ValueError(f"feature layer {l} has {c} channels, PatchSampleF expects {self.in_channels[l]}")
            flat = feat.flatten(2)  # (B, C, H*W)
            if patch_ids is not None:
                ids = patch_ids[l].to(feat.device)
            elif num_patches > 0:
                dev = generator.device if generator is not None else feat.device
                ids = torch.randperm(h * w, generator=generator, device=dev)[: min(num_patches, h * w)]
                ids = ids.to(feat.device)
            else:
                ids = torch.arange(h * w, device=feat.device)
            # gather on the contiguous (B, C, H*W) view (index_select; its backward is index_add)
            sample = flat.index_select(2, ids).transpose(1, 2).reshape(-1, c)  # (B*P, C)
            # normalised in float32 so the 1e-7 eps survives autocast (fp16/bf16)
            out.append(l2_normalize(mlp(sample), dim=1))
            ids_out.append(ids)
        return out, ids_out
