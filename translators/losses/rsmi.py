"""Relative squared-loss mutual information (rSMI) and SemST's TS loss (SemST Eq. 1-3;
SCC, Guo et al. CVPR 2022 / MGC; RuLSIF, Yamada et al. 2013).

rSMI(X, Y) = D_rPE(P_X (x) P_Y || P_XY) (SemST Eq. 2): the alpha-relative Pearson divergence of the
product of marginals from the joint, estimated with a linear model r(x, y) = theta^T phi(x, y) of
the relative density ratio p(x)p(y) / (alpha p(x)p(y) + (1 - alpha) p(x, y)) (docs/reference.md §3.3):

    h = E_{p(x)p(y)}[phi]                               (product-of-marginals mean; SCC's h)
    H = alpha E_{p(x)p(y)}[phi phi^T] + (1 - alpha) E_{p(x,y)}[phi phi^T]
    theta = (H + lam I)^{-1} h    (Cholesky solve, never an explicit inverse)
    rSMI = 2 theta^T h - theta^T H theta - 1            (SemST Eq. 3 = 2 x rPE_alpha)

Basis (a product grid of centres, like SCC's 9 x 9 grid): phi_ab(x, y) = K(x, u_a) L(y, v_b),
a, b = 1..m, with Gaussian kernels K(x, u) = exp(-||x - u||^2 / (2 sigma_x^2)) -- with the minus
sign; SCC's released code lacks it (docs/reference.md §3.2).

Differences from SCC (which works on raw scalar pixels with 9 fixed centres per variable in
[-1, 1], sigma = 1, absolute lam = 0.05), needed because the samples here are D-dimensional patch
embeddings (SemST applies rSMI to the embeddings of F):

* centres: u_a = x_{c_a} and v_b = y_{c_b} for ``n_centres`` = m sample indices c (evenly spaced;
  the patches are already in random order), giving m^2 basis functions (m = 16 -> 256, SCC has
  81). A product grid covers the product-of-marginals region; centring only on paired samples
  (LSMI's choice) cannot represent the density ratio there and gave *negative* estimates for
  strongly dependent data in our checks.
* the m centre samples are **held out** of the moment estimates (h and H use the other N - m
  pairs); otherwise phi_aa(x_{c_a}, y_{c_a}) = 1 under the joint reads as dependence for
  independent data.
* product-of-marginals moments use all pairs p != q (p = q is a joint sample), in closed form:
  h = ((K 1)(L 1)^T - (K o L) 1) / (n (n - 1)) and H_marg = (kron(K K^T, L L^T) - Phi Phi^T) /
  (n (n - 1)) with Phi = the (m^2, n) basis matrix; cost O(m^4 n), no n x n x m^2 tensor.
* kernel widths: median heuristic when sigma is None -- the median distance between the m
  centres and the n estimation samples (detached), i.e. of the distances the kernels use anyway
  (no extra N x N distance matrix); :func:`median_distance` gives the all-pairs median.
* the ridge is relative by default: lam_eff = lam * mean(diag H) (``lam_relative=True``), so the
  estimate does not depend on the overall kernel scale (it shrinks with D and sigma); lam = 0.05.
  ``lam_relative=False`` uses lam as is (SCC's convention).
* alpha = 0.5 as in SCC. Computed in float32 with autocast disabled.
* the centres are **constants of the basis** (``detach_centres=True``, the default): gradients reach
  the N - m estimation samples only, as in SCC and RuLSIF, whose centres are fixed points of the
  model, not variables of the divergence. Choice, documented in docs/methods.md: with the centres
  attached (``detach_centres=False``, config ``loss.ts_detach_centres: false``) each centre sits
  in n kernel evaluations against a sample's m, and its gradient is larger by about n / m (mean
  gradient norm of a centre over a sample's: 7.7x (y) and 17.6x (x) on dependent N = 256, D = 256
  data), so 16 of 256 patches would dominate the TS gradient of an image.

Known limit: like every kernel estimator from a few hundred samples, it sees little dependence
between *isotropic* high-dimensional variables (distances concentrate); F's embeddings of image
patches lie near low-dimensional manifolds, where it works (see tests).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def median_distance(x: torch.Tensor) -> torch.Tensor:
    """Median pairwise Euclidean distance between the rows of ``x`` (N, D) -> scalar, or per group
    for ``x`` (G, N, D) -> (G,). Detached and clamped to >= 1e-6."""
    with torch.no_grad():
        xs = x.detach()[None] if x.dim() == 2 else x.detach()
        d = torch.cdist(xs, xs)
        n = d.shape[-1]
        iu = torch.triu_indices(n, n, offset=1, device=x.device)
        med = d[:, iu[0], iu[1]].median(dim=1).values.clamp_min(1e-6)
        return med[0] if x.dim() == 2 else med


def _sq_dist(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(G, m, n) squared distances ||c_a - x_p||^2 for x (G, n, D), centres (G, m, D) (reference
    form, autograd; :class:`_DistancesToOwnRows` is the fused version used by the estimator)."""
    return (centres.pow(2).sum(-1, keepdim=True) + x.pow(2).sum(-1)[:, None, :]
            - 2.0 * centres @ x.transpose(1, 2)).clamp_min(0)


class _DistancesToOwnRows(torch.autograd.Function):
    """d2[g, a, p] = ||x[g, c_a] - x[g, p]||^2 (clamped at 0): squared distances from the rows
    ``c`` of x to all its rows, with a hand-written backward that reads x three times instead of
    autograd's ~8 passes over (G, N, D) tensors (squares, broadcasts, the gather's scatter):
        dx_p = 2 x_p sum_a G_ap - 2 sum_a G_ap x_{c_a},   plus at p = c_a:  2 x_{c_a} sum_p G_ap - 2 sum_p G_ap x_p
    (G zeroed where the clamp was active). With ``detach_rows`` the rows are constants: the second
    term (the gradient through x_{c_a} as a centre) is left out."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: torch.Tensor, detach_rows: bool = False) -> torch.Tensor:
        c = x.index_select(1, rows)                                      # (G, m, D)
        sq = torch.linalg.vector_norm(x, dim=2).square()                 # (G, N)
        d2 = torch.baddbmm(sq[:, None, :] + sq.index_select(1, rows)[:, :, None], c, x.transpose(1, 2),
                           alpha=-2.0)
        clamped = d2 < 0
        ctx.save_for_backward(x, rows, clamped)
        ctx.detach_rows = bool(detach_rows)
        return d2.masked_fill_(clamped, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, rows, clamped = ctx.saved_tensors
        grad = grad.masked_fill(clamped, 0.0)
        c = x.index_select(1, rows)
        grad_x = x * (2.0 * grad.sum(1))[:, :, None]
        grad_x.baddbmm_(grad.transpose(1, 2), c, alpha=-2.0)
        if ctx.detach_rows:
            return grad_x, None, None
        grad_c = c * (2.0 * grad.sum(2))[:, :, None] - 2.0 * torch.bmm(grad, x)
        return grad_x.index_add_(1, rows, grad_c), None, None


def _gauss(d2: torch.Tensor, sigma: float | torch.Tensor | None) -> torch.Tensor:
    """exp(-d2 / (2 sigma^2)); sigma None = median heuristic over the given centre-sample
    distances (detached, per group), which costs nothing extra and needs no N x N matrix."""
    if sigma is None:
        with torch.no_grad():
            sig = d2.detach().flatten(1).median(dim=1).values.sqrt().clamp_min(1e-6)
    else:
        sig = torch.as_tensor(sigma, dtype=d2.dtype, device=d2.device).expand(d2.shape[0])
    return torch.exp(-d2 / (2.0 * sig.reshape(-1, 1, 1) ** 2))


def _spd_solve_pair(A: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """theta = A^-1 b and z = A^-1 theta for symmetric positive-definite A (G, n, n), b (G, n).

    Cholesky: the right factorisation for the ridge-regularised moment matrix, and MKL's batched LU
    (``torch.linalg.solve``) fails for n >= 256 after ``torch.set_num_threads`` has been changed in
    the process ("Pivots given to lu_solve must all be greater or equal to 1", torch 2.14 on CPU).
    One factor, two triangular solve pairs; groups whose matrix is not numerically
    positive-definite fall back to a per-matrix LU solve. Never an explicit inverse."""
    chol, info = torch.linalg.cholesky_ex(A)
    theta = torch.cholesky_solve(b.unsqueeze(-1), chol)
    z = torch.cholesky_solve(theta, chol).squeeze(-1)
    theta = theta.squeeze(-1)
    for g in (info != 0).nonzero().flatten().tolist():
        theta[g] = torch.linalg.solve(A[g], b[g])
        z[g] = torch.linalg.solve(A[g], theta[g])
    return theta, z


class _RSMIObjective(torch.autograd.Function):
    """f = 2 theta^T h - theta^T H theta with theta = (H + r I)^-1 h and the moment matrix
    H = beta kron(kk, ll) + gamma phi phi^T built inside (r: lam * mean(diag H), detached, or lam).

    Same value and gradient as autograd through the Cholesky solve and the construction of H, in
    closed form: with A = H + r I, z = A^-1 theta and v = theta + 2 r z,
        df/dh = 2 theta + 2 r z,   df/dH = -(theta v^T + v theta^T) / 2      (rank 2),
    so the gradients w.r.t. phi and the Gram matrices kk, ll (with Theta, V = theta, v as m x m)
        df/dphi = 2 gamma df/dH phi,
        df/dkk = -beta/2 (Theta ll V^T + V ll Theta^T),  df/dll = -beta/2 (Theta^T kk V + V^T kk Theta)
    are rank-2 products: no m^2 x m^2 gradient is ever formed, and H is built in one buffer that
    becomes A in place."""

    @staticmethod
    def forward(ctx, h, phi, kk, ll, beta: float, gamma: float, lam: float, relative: bool):
        g, m = kk.shape[0], kk.shape[1]
        A = (kk[:, :, None, :, None] * ll[:, None, :, None, :]).reshape(g, m * m, m * m)
        A.baddbmm_(phi, phi.transpose(1, 2), beta=beta, alpha=gamma)           # H
        diag = A.diagonal(dim1=1, dim2=2)
        ridge = lam * diag.mean(1) if relative else torch.full((g,), lam, dtype=A.dtype, device=A.device)
        diag.add_(ridge[:, None])                                               # A = H + r I
        theta, z = _spd_solve_pair(A, h)
        # theta^T H theta = theta^T A theta - r |theta|^2
        quad = (torch.bmm(A, theta[:, :, None]).squeeze(2) * theta).sum(1) - ridge * (theta * theta).sum(1)
        ctx.save_for_backward(theta, z, ridge, phi, kk, ll)
        ctx.beta, ctx.gamma = beta, gamma
        return 2.0 * (theta * h).sum(1) - quad

    @staticmethod
    def backward(ctx, grad):
        theta, z, ridge, phi, kk, ll = ctx.saved_tensors
        g, m = kk.shape[0], kk.shape[1]
        rz = ridge[:, None] * z
        grad_h = grad[:, None] * 2.0 * (theta + rz)
        v = theta + 2.0 * rz
        s = (-0.5 * grad)[:, None, None]
        # dH phi = s (theta (v^T phi) + v (theta^T phi)), then times 2 gamma
        tv = torch.stack([theta, v], dim=1)                                    # (G, 2, M)
        proj = torch.bmm(tv, phi)                                               # (G, 2, n): theta^T phi, v^T phi
        grad_phi = torch.bmm(tv.transpose(1, 2), proj.flip(1)) * (2.0 * ctx.gamma * s)
        Th, V = theta.reshape(g, m, m), v.reshape(g, m, m)
        bs = ctx.beta * s
        t_ll_v = Th @ ll @ V.transpose(1, 2)
        t_kk_v = Th.transpose(1, 2) @ kk @ V
        grad_kk = bs * (t_ll_v + t_ll_v.transpose(1, 2))    # V ll Theta^T = (Theta ll^T V^T)^T, ll symmetric
        grad_ll = bs * (t_kk_v + t_kk_v.transpose(1, 2))
        return grad_h, grad_phi, grad_kk, grad_ll, None, None, None, None


def rsmi_batched(x: torch.Tensor, y: torch.Tensor, alpha: float = 0.5, lam: float = 0.05,
                 sigma_x: float | None = None, sigma_y: float | None = None,
                 n_centres: int | None = None, lam_relative: bool = True,
                 detach_centres: bool = True) -> torch.Tensor:
    """rSMI of G independent sample sets at once: x (G, N, Dx), y (G, N, Dy) -> (G,).

    Same estimator and arguments as :func:`rsmi` (median widths are per group); one batched
    solve instead of G small ones, which is what :func:`ts_loss` uses for all layers and images."""
    if x.dim() != 3 or y.dim() != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(f"rsmi needs paired samples x (N, Dx), y (N, Dy) (or (G, N, D) batches); "
                         f"got {tuple(x.shape)}, {tuple(y.shape)}")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    if lam <= 0:
        raise ValueError(f"lam must be positive, got {lam}")
    n_all = x.shape[1]
    m = min(16, n_all // 4) if n_centres is None else int(n_centres)
    if not 1 <= m <= n_all - 3:
        raise ValueError(f"n_centres={m} must be in [1, N-3] for N={n_all} samples")
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        is_centre = torch.zeros(n_all, dtype=torch.bool, device=x.device)
        is_centre[torch.linspace(0, n_all - 1, m, device=x.device).round().long()] = True
        m = int(is_centre.sum())
        # distances of every sample to the centres, then the held-out centre columns dropped from
        # the small (G, m, N) matrix: no (G, N - m, D) copy of the samples, forward or backward
        rest, centres = (~is_centre).nonzero().squeeze(1), is_centre.nonzero().squeeze(1)
        K = _gauss(_DistancesToOwnRows.apply(x, centres, detach_centres).index_select(2, rest), sigma_x)  # (G, m, n)
        L = _gauss(_DistancesToOwnRows.apply(y, centres, detach_centres).index_select(2, rest), sigma_y)
        g, n = K.shape[0], K.shape[2]
        phi = (K[:, :, None, :] * L[:, None, :, :]).reshape(g, m * m, n)  # phi_ab, a slow, b fast
        pairs = n * (n - 1)
        h = ((K.sum(2)[:, :, None] * L.sum(2)[:, None, :]).reshape(g, -1) - phi.sum(2)) / pairs
        kk, ll = K @ K.transpose(1, 2), L @ L.transpose(1, 2)
        # H = alpha (kron(kk, ll) - phi phi^T) / pairs + (1 - alpha) phi phi^T / n;
        # 2 theta^T h - theta^T H theta - 1 with theta = (H + ridge I)^-1 h (closed-form backward)
        beta, gamma = alpha / pairs, (1.0 - alpha) / n - alpha / pairs
        return _RSMIObjective.apply(h, phi, kk, ll, beta, gamma, float(lam), bool(lam_relative)) - 1.0


def rsmi(x: torch.Tensor, y: torch.Tensor, alpha: float = 0.5, lam: float = 0.05,
         sigma_x: float | None = None, sigma_y: float | None = None,
         n_centres: int | None = None, lam_relative: bool = True, detach_centres: bool = True) -> torch.Tensor:
    """rSMI estimate (scalar tensor, differentiable) between paired samples x (N, Dx), y (N, Dy).

    ``alpha`` in [0, 1): relative parameter; ``lam``: ridge regulariser (times mean(diag H) when
    ``lam_relative``); ``sigma_*``: Gaussian widths (None = median heuristic over the
    centre-to-sample distances); ``n_centres``: m,
    the number of held-out samples whose x and y give the m x m grid of basis centres
    (None = min(16, N // 4)); the other N - m pairs estimate h and H; ``detach_centres``: the
    centres are constants of the basis (no gradient through them; module docstring)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"rsmi needs paired samples x (N, Dx), y (N, Dy); got {tuple(x.shape)}, {tuple(y.shape)}")
    return rsmi_batched(x[None], y[None], alpha=alpha, lam=lam, sigma_x=sigma_x, sigma_y=sigma_y,
                        n_centres=n_centres, lam_relative=lam_relative, detach_centres=detach_centres)[0]


def ts_loss(feats_in: Sequence[torch.Tensor], feats_out: Sequence[torch.Tensor],
            batch_size: int = 1, **rsmi_kwargs) -> torch.Tensor:
    """Texture-structure consistency loss (SemST Eq. 1): -mean over tapped layers (and images) of
    rSMI(input embeddings, output embeddings).

    ``feats_in[l]`` / ``feats_out[l]``: (B*P, C) outputs of PatchSampleF at the same patch ids
    (image-major); rSMI is estimated per image over its P patches (SCC also estimates per image)
    and averaged. Layers with equal shapes are evaluated in one batched solve. Nothing is
    detached here: the caller decides whether F receives gradient via the input side."""
    if len(feats_in) != len(feats_out) or not feats_in:
        raise ValueError(f"ts_loss needs equally many (>0) input and output layers; got "
                         f"{len(feats_in)} and {len(feats_out)}")
    groups: dict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for f_in, f_out in zip(feats_in, feats_out):
        if f_in.dim() != 2 or f_in.shape[0] != f_out.shape[0] or f_in.shape[0] % batch_size:
            raise ValueError(f"cannot pair {tuple(f_in.shape)} with {tuple(f_out.shape)} "
                             f"for batch_size={batch_size}")
        key = (f_in.shape[0], f_in.shape[1], f_out.shape[1])
        xs, ys = groups.setdefault(key, ([], []))
        xs.append(f_in.reshape(batch_size, -1, f_in.shape[1]))
        ys.append(f_out.reshape(batch_size, -1, f_out.shape[1]))
    values = [rsmi_batched(torch.cat(xs), torch.cat(ys), **rsmi_kwargs) for xs, ys in groups.values()]
    return -torch.cat(values).mean()
