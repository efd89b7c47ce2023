"""hDCE: decoupled InfoNCE with hard-negative reweighting (SRC/hDCE, Jung et al. CVPR 2022;
SemST paper Eq. 7-9, "semantics-aided hard negative sampling").

Decoupled contrastive loss (DCE, Yeh et al. 2022): the positive is removed from the denominator,

    l_i = -log [ exp(q_i.k_i / tau) / sum_{j != i} w_ij-weighted exp(q_i.k_j / tau) ],

with q = output (fake) patch embeddings, k = input (real) patch embeddings of the same image,
k detached. Two ways to apply the hard-negative weights w_ij (``form``):

* ``"src"`` (default; what the SRC code does, docs/reference.md §2.2): the weight scales the
  similarity logit, ``exp(w_ij * q_i.k_j / tau)``.
* ``"paper"`` (SemST Eq. 9 / Robinson et al. 2021): the weight scales the exponential,
  ``w_ij * exp(q_i.k_j / tau)``. Since w is detached, any per-row rescaling of w (row-max or
  sum normalisation) only shifts l_i by a constant and leaves the gradient unchanged.

With all weights 1 both forms are plain DCE. The self term j = i is masked with -10 as in SRC
(exp(-10/tau) ~ 1e-62 at tau = 0.07, i.e. excluded). Unlike SRC, which reports the coupled CE
value and only takes the decoupled *gradient* (an exp(v - v.detach()) trick), the value returned
here is the decoupled loss itself (it can be negative); its gradient is identical. SRC's logged
value is recovered exactly by :func:`hdce_coupled_value` (softplus of the decoupled loss); the
translators log it beside the loss as ``NCE_ce``.

Hard-negative weights (:func:`hdce_weights`, SRC ``models/SRC.py``, docs/reference.md §2.3): from the
**input-side** similarity S_ij = k_i.k_j (detached), w_ij = softmax_j(S_ij / gamma) divided by its
row maximum, i.e. w_ij = exp((S_ij - max_{j'!=i} S_ij') / gamma) in (0, 1]; gamma = 1/beta of Eq. 7.
The self term is excluded (w_ii = 0); SRC keeps a small w_ii that the loss masks anyway.
"""
from __future__ import annotations

import torch

from .patchnce import SELF_MASK, _check, full_precision_inputs, patch_similarities

FORMS = ("src", "paper")


def hdce_coupled_value(per_query: torch.Tensor) -> torch.Tensor:
    """SRC's logged hDCE value from per-query decoupled losses l_i (:func:`hdce_loss`): the cross
    entropy with the positive back in the denominator, log(e^pos + sum_j e^z_ij) - pos =
    log(1 + e^l_i) = softplus(l_i), averaged (detached: for logs only)."""
    return torch.nn.functional.softplus(per_query.detach().float()).mean()


def hdce_gamma(epoch: float, total_epochs: float | None = None, gamma_start: float = 1.0,
               gamma_end: float = 1.0, step_epoch: float | None = None,
               step_gamma: float = 1.0) -> float:
    """SRC's gamma curriculum (``--use_curriculum``, ``--step_gamma``; docs/reference.md §2.3).

    gamma = gamma_start + (gamma_end - gamma_start) * progress, with progress = epoch/total_epochs
    (or ``epoch`` itself, read as a fraction in [0, 1], when ``total_epochs`` is None), clamped to
    [0, 1]. If ``step_epoch`` is set and ``epoch > step_epoch`` (same unit as ``epoch``), gamma is
    forced to ``step_gamma``. SRC's Cityscapes recipe (and our SemST preset) ramps 50 -> 10 over the
    whole schedule but steps to 1 at half of it, so the ramp only reaches 30: gamma runs 50 -> 30
    linearly, then 1.
    With the defaults (1, 1) gamma is constant 1, SRC's argparse default."""
    if total_epochs is not None and total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    if step_epoch is not None and epoch > step_epoch:
        return float(step_gamma)
    progress = epoch / total_epochs if total_epochs is not None else epoch
    progress = min(max(float(progress), 0.0), 1.0)
    return float(gamma_start + (gamma_end - gamma_start) * progress)


def hdce_weights(feat_k: torch.Tensor, gamma: float, batch_size: int = 1) -> torch.Tensor:
    """Hard-negative weights (B, P, P) from input-side cosine similarity (SemST Eq. 7, beta=1/gamma).

    ``feat_k``: (B*P, C) L2-normalised input-patch embeddings (detached here). Row i holds
    w_ij = softmax_{j != i}(k_i.k_j / gamma) / max_j softmax(...) in (0, 1], and w_ii = 0."""
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    n, p, c = _check(feat_k, feat_k, batch_size)
    if p < 2:
        raise ValueError("hDCE needs at least 2 patches per image (one positive, >= 1 negative)")
    with torch.no_grad():
        # softmax_j(S_ij / gamma) / max_j softmax_j(...) = exp((S_ij - max_j' S_ij') / gamma)
        k = feat_k.detach().float().reshape(batch_size, p, c)
        w = torch.baddbmm(k.new_zeros(()), k, k.transpose(1, 2), beta=0.0, alpha=1.0 / gamma)
        diag = w.diagonal(dim1=1, dim2=2)
        diag.fill_(float("-inf"))
        top = w.amax(dim=2, keepdim=True)
        diag.copy_(top.squeeze(2))
        w.sub_(top).exp_()
        diag.fill_(0.0)
    return w.to(feat_k.dtype)


def _check_weights(weights: torch.Tensor, batch_size: int, p: int) -> None:
    if weights.dim() != 3 or weights.shape[-2:] != (p, p) or weights.shape[0] not in (1, batch_size):
        raise ValueError(f"hDCE weights must be ({batch_size} or 1, {p}, {p}) (from hdce_weights); "
                         f"got {tuple(weights.shape)}")


class _HDCE(torch.autograd.Function):
    """hDCE per query with a hand-written backward (value and gradient of
    :func:`hdce_loss_reference`, in a few passes over the (B, P, P) logits).

    l_i = logsumexp_j z_ij - pos_i with z_ij = w_ij s_ij / tau (src) or s_ij / tau + log w_ij
    (paper), s_ij = q_i.k_j, pos_i = s_ii / tau and the self term masked. Gradient w.r.t. s_ij:
    g_i softmax_j(z_i)_j * (w_ij or 1) / tau; w.r.t. s_ii: -g_i / tau (the masked self term is a
    constant, so its diagonal slot carries the positive's weight)."""

    @staticmethod
    def forward(ctx, feat_q, feat_k, weights, tau: float, batch_size: int, form: str):
        n, p, c = _check(feat_q, feat_k, batch_size)
        q = feat_q.reshape(batch_size, p, c)
        k = feat_k.reshape(batch_size, p, c)
        z = torch.baddbmm(q.new_zeros(()), q, k.transpose(1, 2), beta=0.0, alpha=1.0 / tau)
        diag = z.diagonal(dim1=1, dim2=2)
        pos = diag.clone()
        if weights is not None:
            if form == "src":
                z.mul_(weights)
            else:
                z.add_(torch.log(weights.clamp_min(0)))  # log 0 = -inf drops a negative
        diag.fill_(SELF_MASK / tau)
        top = z.amax(dim=2)
        diag.copy_(top)                                   # exp(0) on the diagonal: no underflow path
        e = z.sub_(top.unsqueeze(2)).exp_()
        diag.copy_(torch.exp(SELF_MASK / tau - top))
        total = e.sum(dim=2)
        ctx.save_for_backward(k, e, total, weights if (weights is not None and form == "src") else None)
        ctx.tau = tau
        return (torch.log(total) + top - pos).reshape(n)

    @staticmethod
    def backward(ctx, grad):
        k, e, total, w = ctx.saved_tensors
        g = grad.reshape(total.shape)
        scale = (g / (total * ctx.tau)).unsqueeze(2)
        grad_s = e * scale if w is None else e * w * scale
        grad_s.diagonal(dim1=1, dim2=2).copy_(-g / ctx.tau)
        return torch.bmm(grad_s, k).reshape(-1, k.shape[-1]), None, None, None, None, None


def hdce_loss(feat_q: torch.Tensor, feat_k: torch.Tensor, weights: torch.Tensor | None = None,
              tau: float = 0.07, batch_size: int = 1, form: str = "src") -> torch.Tensor:
    """Per-query hDCE loss (N,) (SemST Eq. 8-9; SRC ``PatchHDCELoss``). ``feat_k`` is detached.

    ``weights``: (B, P, P) (or broadcastable) from :func:`hdce_weights`; None = all ones (plain
    decoupled NCE). ``form``: ``"src"`` weights the logits, ``"paper"`` the exponentials.
    Computed by :class:`_HDCE`; :func:`hdce_loss_reference` is the same formula with autograd."""
    if form not in FORMS:
        raise ValueError(f"hDCE form must be one of {FORMS}, got {form!r}")
    n, p, _ = _check(feat_q, feat_k, batch_size)
    if p < 2:
        raise ValueError("hDCE needs at least 2 patches per image (one positive, >= 1 negative)")
    feat_q, feat_k = full_precision_inputs(feat_q, feat_k.detach())
    if weights is not None:
        _check_weights(weights, batch_size, p)
        weights = weights.detach().to(feat_q.dtype)
    with torch.autocast(feat_q.device.type, enabled=False):
        return _HDCE.apply(feat_q, feat_k, weights, float(tau), int(batch_size), form)


def hdce_loss_reference(feat_q: torch.Tensor, feat_k: torch.Tensor, weights: torch.Tensor | None = None,
                        tau: float = 0.07, batch_size: int = 1, form: str = "src") -> torch.Tensor:
    """:func:`hdce_loss` written with autograd ops (the tests' reference)."""
    if form not in FORMS:
        raise ValueError(f"hDCE form must be one of {FORMS}, got {form!r}")
    feat_k = feat_k.detach()
    l_pos, l_neg = patch_similarities(feat_q, feat_k, batch_size)
    p = l_neg.shape[1]
    if p < 2:
        raise ValueError("hDCE needs at least 2 patches per image (one positive, >= 1 negative)")
    eye = torch.eye(p, dtype=torch.bool, device=feat_q.device)
    logits = l_neg / tau
    if weights is not None:
        _check_weights(weights, batch_size, p)
        weights = weights.detach().to(l_neg.dtype)
        if form == "src":
            logits = (weights * l_neg) / tau
        else:
            logits = logits + torch.log(weights.clamp_min(0))  # log 0 = -inf drops a negative
    logits = logits.masked_fill(eye, SELF_MASK / tau)
    return torch.logsumexp(logits, dim=-1).reshape(-1) - l_pos / tau
