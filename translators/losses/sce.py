"""Symmetric cross-entropy between two segmentation predictions (Musto & Zinelli, Eq. 5).

L_SCE(x, x') = -E[ M(x') . log M(x) ] - E[ M(x) . log M(x') ],

with M(.) the segmenter's softmax over classes, the dot product over the class axis and E the mean
over pixels and images. Both arguments are soft distributions (the translated image's prediction
is not a one-hot label), so the reverse term needs no clamp of log 0 as in Wang et al.'s SCE for
noisy labels. The function is symmetric in its arguments by construction. Computed from logits with
``log_softmax`` in float32 for stability. With a frozen M and a data input x, only the M(x') side
carries a gradient to the translator.
"""
from __future__ import annotations

import torch


def symmetric_cross_entropy(logits_a: torch.Tensor, logits_b: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean over pixels of -sum_c p_b log p_a - sum_c p_a log p_b for logits (B, C, H, W)."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"symmetric_cross_entropy: shapes differ {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    log_a = torch.log_softmax(logits_a.float(), dim=dim)
    log_b = torch.log_softmax(logits_b.float(), dim=dim)
    ce_ab = -(log_b.exp() * log_a).sum(dim)
    ce_ba = -(log_a.exp() * log_b).sum(dim)
    return (ce_ab + ce_ba).mean()


__all__ = ["symmetric_cross_entropy"]
