"""PatchNCE loss of CUT (Park et al., ECCV 2020, Eq. 2-3 / "PatchNCE loss", ``models/patchnce.py``).

For query q_i (embedding of output patch i) with positive k_i (input patch i, same position) and
negatives k_j (the other sampled input patches **of the same image**):

    l_i = -log exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_j exp(s_ij / tau)),

where s_ij = q_i.k_j for j != i and the self term s_ii is set to -10 (CUT masks it with -10, not
-inf, so each query sees 1 positive + P logits of which one is the masked self term). This is
``nce_includes_all_negatives_from_minibatch=False``. The key is detached.
"""
from __future__ import annotations

import torch

SELF_MASK = -10.0


def _check(feat_q: torch.Tensor, feat_k: torch.Tensor, batch_size: int) -> tuple[int, int, int]:
    if not isinstance(feat_q, torch.Tensor) or not isinstance(feat_k, torch.Tensor):
        raise TypeError("contrastive losses take one layer's (B*P, C) tensors; loop over the layers "
                        f"of PatchSampleF's output (got {type(feat_q).__name__})")
    if feat_q.dim() != 2 or feat_q.shape != feat_k.shape:
        raise ValueError(f"feat_q and feat_k must both be (B*P, C); got {tuple(feat_q.shape)} and "
                         f"{tuple(feat_k.shape)}")
    n, c = feat_q.shape
    if batch_size < 1 or n % batch_size:
        raise ValueError(f"{n} patch embeddings cannot be split into batch_size={batch_size} images")
    return n, n // batch_size, c


def patch_similarities(feat_q: torch.Tensor, feat_k: torch.Tensor, batch_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``l_pos`` (N,) = q_i.k_i and ``l_neg`` (B, P, P) = q_i.k_j within each image."""
    n, p, c = _check(feat_q, feat_k, batch_size)
    l_pos = (feat_q * feat_k).sum(dim=1)
    q = feat_q.reshape(batch_size, p, c)
    k = feat_k.reshape(batch_size, p, c)
    return l_pos, torch.bmm(q, k.transpose(1, 2))


def patchnce_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, tau: float = 0.07,
                  batch_size: int = 1) -> torch.Tensor:
    """CUT PatchNCE per query, shape (N,) with N = batch_size * P. ``feat_k`` is detached."""
    feat_k = feat_k.detach()
    l_pos, l_neg = patch_similarities(feat_q, feat_k, batch_size)
    p = l_neg.shape[1]
    eye = torch.eye(p, dtype=torch.bool, device=feat_q.device)
    # CE with target 0 over [l_pos, l_neg] / tau, written as logsumexp - l_pos / tau (no (N, P+1)
    # concatenation, no target tensor; equal to F.cross_entropy up to float rounding)
    neg = torch.logsumexp(l_neg.masked_fill(eye, SELF_MASK).reshape(-1, p) / tau, dim=1)
    pos = l_pos / tau
    return torch.logaddexp(pos, neg) - pos
