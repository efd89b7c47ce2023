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


def full_precision_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Half/bf16 embeddings upcast to float32 (float64 stays float64): the fused losses compute
    their logits (up to 1/tau = 14) in at least float32, also when called under autocast."""
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    return tuple(t.to(dtype) for t in tensors)


def patch_similarities(feat_q: torch.Tensor, feat_k: torch.Tensor, batch_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``l_pos`` (N,) = q_i.k_i and ``l_neg`` (B, P, P) = q_i.k_j within each image."""
    n, p, c = _check(feat_q, feat_k, batch_size)
    l_pos = (feat_q * feat_k).sum(dim=1)
    q = feat_q.reshape(batch_size, p, c)
    k = feat_k.reshape(batch_size, p, c)
    return l_pos, torch.bmm(q, k.transpose(1, 2))


class _PatchNCE(torch.autograd.Function):
    """PatchNCE per query with a hand-written backward (same value and gradient as the autograd
    graph of the formula in the module docstring, in a few passes over the (B, P, P) logits).

    Forward: the logits q_i.k_j / tau come from one scaled batched matmul; the positive is their
    diagonal (q_i.k_i / tau) and the self term is masked; the row log-sum-exp reuses one buffer
    for ``exp(l - max)``. Backward (k is detached, so only q gets a gradient):
    d l_i / d(q_i.k_j / tau) = exp(l_ij) / Z_i for j != i, exp(pos_i) / Z_i - 1 for the positive;
    the masked self term is a constant, so its slot on the diagonal carries the positive weight."""

    @staticmethod
    def forward(ctx, feat_q: torch.Tensor, feat_k: torch.Tensor, tau: float, batch_size: int):
        n, p, c = _check(feat_q, feat_k, batch_size)
        q = feat_q.reshape(batch_size, p, c)
        k = feat_k.reshape(batch_size, p, c)
        logits = torch.baddbmm(q.new_zeros(()), q, k.transpose(1, 2), beta=0.0, alpha=1.0 / tau)
        diag = logits.diagonal(dim1=1, dim2=2)
        pos = diag.clone()                                         # (B, P): q_i.k_i / tau
        diag.fill_(SELF_MASK / tau)
        top = logits.amax(dim=2)                                   # (B, P) row maxima
        diag.copy_(top)                                            # exp(0) on the diagonal: no underflow path
        e = logits.sub_(top.unsqueeze(2)).exp_()                   # exp(l_ij - max_i), in place
        diag.copy_(torch.exp(SELF_MASK / tau - top))               # the masked self term's share
        neg = torch.log(e.sum(dim=2)) + top                        # log sum_j exp(l_ij)
        z = torch.logaddexp(pos, neg)                              # log Z_i
        ctx.save_for_backward(k, e, top, z, pos)
        ctx.tau = tau
        return (z - pos).reshape(n)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        k, e, top, z, pos = ctx.saved_tensors
        g = grad.reshape(top.shape)
        # rows of exp(l_ij - max_i) rescaled to g_i exp(l_ij) / (Z_i tau)
        w = e * (g * torch.exp(top - z) / ctx.tau).unsqueeze(2)
        w.diagonal(dim1=1, dim2=2).copy_(g * (torch.exp(pos - z) - 1.0) / ctx.tau)
        grad_q = torch.bmm(w, k).reshape(-1, k.shape[-1])
        return grad_q, None, None, None


def patchnce_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, tau: float = 0.07,
                  batch_size: int = 1) -> torch.Tensor:
    """CUT PatchNCE per query, shape (N,) with N = batch_size * P. ``feat_k`` is detached.

    Computed by :class:`_PatchNCE` (about a third of the memory passes of the autograd graph of
    :func:`patchnce_loss_reference`, which it matches in value and gradient)."""
    _check(feat_q, feat_k, batch_size)
    feat_q, feat_k = full_precision_inputs(feat_q, feat_k.detach())
    with torch.autocast(feat_q.device.type, enabled=False):
        return _PatchNCE.apply(feat_q, feat_k, float(tau), int(batch_size))


def patchnce_loss_reference(feat_q: torch.Tensor, feat_k: torch.Tensor, tau: float = 0.07,
                            batch_size: int = 1) -> torch.Tensor:
    """The formula of the module docstring written with autograd ops (the tests' reference)."""
    feat_k = feat_k.detach()
    l_pos, l_neg = patch_similarities(feat_q, feat_k, batch_size)
    p = l_neg.shape[1]
    eye = torch.eye(p, dtype=torch.bool, device=feat_q.device)
    # CE with target 0 over [l_pos, l_neg] / tau, written as logsumexp - l_pos / tau (no (N, P+1)
    # concatenation, no target tensor; equal to F.cross_entropy up to float rounding)
    neg = torch.logsumexp(l_neg.masked_fill(eye, SELF_MASK).reshape(-1, p) / tau, dim=1)
    pos = l_pos / tau
    return torch.logaddexp(pos, neg) - pos
