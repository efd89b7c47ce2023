"""Tests of translators.losses: PatchNCE, hDCE (+ weights, gamma curriculum), rSMI / TS, LSGAN."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from translators.losses import (hdce_gamma, hdce_loss, hdce_weights, lsgan_loss, patchnce_loss,
                                rsmi, ts_loss)
from translators.losses.hdce import hdce_loss_reference
from translators.losses.patchnce import patchnce_loss_reference
from translators.networks import l2_normalize


def _feats(n: int, c: int, seed: int) -> torch.Tensor:
    return l2_normalize(torch.randn(n, c, generator=torch.Generator().manual_seed(seed)))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(sum(float(a[i]) * float(b[i]) for i in range(a.shape[0])))


# --------------------------------------------------------------------------- PatchNCE
def test_patchnce_matches_explicit_cross_entropy():
    """3 patches x 4 channels, batch 1: logits [q_i.k_i, q_i.k_j (j != i), -10 at j = i] / tau."""
    q, k, tau = _feats(3, 4, 0), _feats(3, 4, 1), 0.07
    got = patchnce_loss(q, k, tau=tau, batch_size=1)
    assert got.shape == (3,)
    for i in range(3):
        logits = [_dot(q[i], k[i]) / tau]
        for j in range(3):
            logits.append((-10.0 if j == i else _dot(q[i], k[j])) / tau)
        expected = -logits[0] + math.log(sum(math.exp(v) for v in logits))
        assert float(got[i]) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_patchnce_negatives_stay_within_each_image():
    q, k = _feats(6, 4, 2), _feats(6, 4, 3)
    both = patchnce_loss(q, k, batch_size=2)
    first = patchnce_loss(q[:3], k[:3], batch_size=1)
    second = patchnce_loss(q[3:], k[3:], batch_size=1)
    torch.testing.assert_close(both, torch.cat([first, second]))


def test_patchnce_detaches_key():
    q = _feats(8, 4, 4).requires_grad_(True)
    k = _feats(8, 4, 5).requires_grad_(True)
    patchnce_loss(q, k).mean().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


@pytest.mark.parametrize("batch,patches,channels", [(1, 5, 4), (2, 7, 3), (3, 16, 8)])
def test_patchnce_hand_backward_matches_autograd_of_the_formula(batch, patches, channels):
    """The fused forward/backward equals the autograd graph of the formula (float64)."""
    g = torch.Generator().manual_seed(batch)
    q = l2_normalize(torch.randn(batch * patches, channels, generator=g, dtype=torch.float64)).requires_grad_(True)
    k = l2_normalize(torch.randn(batch * patches, channels, generator=g, dtype=torch.float64))
    fused, ref = patchnce_loss(q, k, 0.07, batch), patchnce_loss_reference(q, k, 0.07, batch)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(fused.shape, generator=g, dtype=torch.float64)
    (g_fused,) = torch.autograd.grad(fused, q, w)
    (g_ref,) = torch.autograd.grad(ref, q, w)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: patchnce_loss(x, k, 0.07, batch), (q,))


@pytest.mark.parametrize("form", ["src", "paper"])
@pytest.mark.parametrize("weights", ["none", "per_image", "shared"])
def test_hdce_hand_backward_matches_autograd_of_the_formula(form, weights):
    g = torch.Generator().manual_seed(7)
    batch, patches = 2, 9
    q = l2_normalize(torch.randn(batch * patches, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    k = l2_normalize(torch.randn(batch * patches, 5, generator=g, dtype=torch.float64))
    w = None if weights == "none" else hdce_weights(k, 0.5, batch)
    if weights == "shared":
        w = w[:1]
    fused, ref = hdce_loss(q, k, w, 0.07, batch, form), hdce_loss_reference(q, k, w, 0.07, batch, form)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    v = torch.randn(fused.shape, generator=g, dtype=torch.float64)
    (g_fused,) = torch.autograd.grad(fused, q, v)
    (g_ref,) = torch.autograd.grad(ref, q, v)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: hdce_loss(x, k, w, 0.07, batch, form), (q,))


def test_patchnce_rejects_bad_batch():
    with pytest.raises(ValueError, match="batch_size"):
        patchnce_loss(_feats(7, 4, 0), _feats(7, 4, 1), batch_size=2)


# --------------------------------------------------------------------------- hDCE
def test_hdce_unit_weights_equal_decoupled_nce_by_hand():
    q, k, tau = _feats(3, 4, 6), _feats(3, 4, 7), 0.1
    for weights in (None, torch.ones(1, 3, 3)):
        got = hdce_loss(q, k, weights=weights, tau=tau)
        for i in range(3):
            pos = _dot(q[i], k[i]) / tau
            neg = math.log(sum(math.exp(_dot(q[i], k[j]) / tau) for j in range(3) if j != i))
            assert float(got[i]) == pytest.approx(neg - pos, rel=1e-5, abs=1e-5)


def test_hdce_forms_agree_for_unit_weights_and_differ_otherwise():
    q, k = _feats(16, 8, 8), _feats(16, 8, 9)
    ones = torch.ones(1, 16, 16)
    torch.testing.assert_close(hdce_loss(q, k, ones, form="src"), hdce_loss(q, k, ones, form="paper"))
    torch.testing.assert_close(hdce_loss(q, k, ones), hdce_loss(q, k, None))
    w = hdce_weights(k, gamma=0.5)
    assert not torch.allclose(hdce_loss(q, k, w, form="src"), hdce_loss(q, k, w, form="paper"))
    with pytest.raises(ValueError, match="form"):
        hdce_loss(q, k, w, form="nope")


def test_hdce_gradient_differs_from_patchnce():
    q0, k = _feats(16, 8, 10), _feats(16, 8, 11)
    grads = []
    for fn in (patchnce_loss, hdce_loss):
        q = q0.clone().requires_grad_(True)
        fn(q, k).mean().backward()
        grads.append(q.grad)
    assert torch.isfinite(grads[1]).all()
    assert not torch.allclose(grads[0], grads[1], atol=1e-6)


def test_hdce_weights_match_row_max_normalised_softmax():
    k, gamma = _feats(4, 3, 12), 0.5
    w = hdce_weights(k, gamma=gamma)
    assert w.shape == (1, 4, 4)
    for i in range(4):
        ex = [0.0 if j == i else math.exp(_dot(k[i], k[j]) / gamma) for j in range(4)]
        total = sum(ex)
        soft = [e / total for e in ex]
        for j in range(4):
            assert float(w[0, i, j]) == pytest.approx(soft[j] / max(soft), rel=1e-5, abs=1e-6)
    assert torch.all(w.amax(-1) == 1)


@pytest.mark.parametrize("form", ["src", "paper"])
def test_hdce_coupled_value_is_srcs_logged_cross_entropy(form):
    """SRC logs the cross entropy over [l_pos, weighted l_neg] / tau with the positive as class 0 (its
    ``CELoss_dummy``), self term masked with -10; hdce_coupled_value recovers it from our decoupled
    per-query losses, and differs from their mean (which is what we optimise)."""
    import torch.nn.functional as F

    from translators.losses import hdce_coupled_value

    batch, patches, tau = 2, 6, 0.07
    q, k = _feats(batch * patches, 5, 21), _feats(batch * patches, 5, 22)
    w = hdce_weights(k, 0.5, batch)
    per_query = hdce_loss(q, k, w, tau=tau, batch_size=batch, form=form)
    qb, kb = q.reshape(batch, patches, -1).double(), k.reshape(batch, patches, -1).double()
    l_pos = (qb * kb).sum(-1, keepdim=True)
    l_neg = qb @ kb.transpose(1, 2)
    if form == "src":
        logits_neg = (l_neg * w.double()) / tau
    else:
        logits_neg = l_neg / tau + torch.log(w.double())
    logits_neg = logits_neg.masked_fill(torch.eye(patches, dtype=torch.bool), -10.0 / tau)
    logits = torch.cat([l_pos / tau, logits_neg], dim=2).reshape(batch * patches, -1)
    src_ce = F.cross_entropy(logits, torch.zeros(batch * patches, dtype=torch.long))
    got = hdce_coupled_value(per_query)
    assert float(got) == pytest.approx(float(src_ce), rel=1e-5)
    assert not got.requires_grad
    assert abs(float(got) - float(per_query.mean())) > 0.1


def test_hdce_weights_are_per_image_and_detached():
    k = _feats(8, 4, 13).requires_grad_(True)
    w = hdce_weights(k, gamma=1.0, batch_size=2)
    assert w.shape == (2, 4, 4) and not w.requires_grad
    torch.testing.assert_close(w[1:], hdce_weights(k[4:].detach(), gamma=1.0))


def test_hdce_gamma_curriculum():
    assert hdce_gamma(0, 400, gamma_start=50, gamma_end=10) == pytest.approx(50)
    assert hdce_gamma(200, 400, gamma_start=50, gamma_end=10) == pytest.approx(30)
    assert hdce_gamma(0.5, gamma_start=50, gamma_end=10) == pytest.approx(30)  # progress form
    assert hdce_gamma(500, 400, gamma_start=50, gamma_end=10) == pytest.approx(10)  # clamped
    assert hdce_gamma(201, 400, gamma_start=50, gamma_end=10, step_epoch=200) == pytest.approx(1)
    assert hdce_gamma(123, 400) == 1.0  # SRC's argparse default: constant 1


# --------------------------------------------------------------------------- rSMI / TS
def _manifold_pair(seed: int, n: int = 256, d: int = 32, noise: float = 0.1, dependent: bool = True):
    """x and y near 4-d manifolds in d dims; y depends on x's latent (or on an independent one)."""
    g = torch.Generator().manual_seed(seed)
    z, z2 = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    a, b = torch.randn(4, d, generator=g), torch.randn(4, d, generator=g)
    x = torch.tanh(z @ a)
    y = torch.tanh((z if dependent else z2) @ b) + noise * torch.randn(n, d, generator=g)
    return l2_normalize(x), l2_normalize(y)


def test_rsmi_near_zero_for_independent_and_positive_for_dependent():
    indep, dep = [], []
    for seed in range(3):
        g = torch.Generator().manual_seed(100 + seed)
        x, y = torch.randn(256, 8, generator=g), torch.randn(256, 8, generator=g)
        indep.append(float(rsmi(x, y)))
        indep.append(float(rsmi(*_manifold_pair(seed, dependent=False))))
        dep.append(float(rsmi(*_manifold_pair(seed, dependent=True))))
    assert all(abs(v) < 0.05 for v in indep), indep
    assert all(v > 0.15 for v in dep), dep
    assert min(dep) > 5 * max(abs(v) for v in indep)


def test_rsmi_grows_with_dependence_and_has_finite_gradient():
    x, y_strong = _manifold_pair(7, noise=0.05)
    _, y_weak = _manifold_pair(7, noise=1.0)
    assert float(rsmi(x, y_strong)) > float(rsmi(x, y_weak)) > -0.03
    x = x.clone().requires_grad_(True)
    y = y_weak.clone().requires_grad_(True)
    rsmi(x, y).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert y.grad.abs().sum() > 0


def _rsmi_reference(x: torch.Tensor, y: torch.Tensor, alpha: float = 0.5, lam: float = 0.05,
                    sigma_x: float | None = None, sigma_y: float | None = None, n_centres: int | None = None,
                    lam_relative: bool = True) -> tuple[float, float]:
    """The estimator of translators/losses/rsmi.py's docstring written out directly in float64
    numpy: explicit centre indices, explicit distance loops, product-of-marginals moments summed
    over every pair p != q, a dense solve. Returns (rSMI, mean(diag H))."""
    x, y = x.double().numpy(), y.double().numpy()
    n_all = len(x)
    m = min(16, n_all // 4) if n_centres is None else n_centres
    centres = sorted({int(math.floor(i * (n_all - 1) / max(m - 1, 1) + 0.5)) for i in range(m)})
    rest = [p for p in range(n_all) if p not in centres]

    def kernel(v, sigma):
        d = np.array([[np.linalg.norm(v[c] - v[p]) for p in rest] for c in centres])
        assert d.size % 2 == 1  # an odd count: the median is one of the distances, no convention
        sigma = float(np.median(d)) if sigma is None else sigma
        return np.exp(-d ** 2 / (2 * sigma ** 2))
    K, L = kernel(x, sigma_x), kernel(y, sigma_y)
    n = len(rest)
    phi = np.einsum("ap,bq->pqab", K, L).reshape(n, n, -1)  # phi(x_p, y_q), all m^2 basis functions
    marg = phi[~np.eye(n, dtype=bool)]                       # product of marginals: every p != q
    joint = phi[np.arange(n), np.arange(n)]                  # the paired samples
    h = marg.mean(0)
    H = alpha * marg.T @ marg / len(marg) + (1 - alpha) * joint.T @ joint / n
    ridge = lam * np.mean(np.diag(H)) if lam_relative else lam
    theta = np.linalg.solve(H + ridge * np.eye(len(h)), h)
    return float(2 * theta @ h - theta @ H @ theta - 1), float(np.mean(np.diag(H)))


def _rsmi_sample(n: int = 44):
    """Dependent x (n, 6) and y (n, 3) of different scales (so the two widths are not
    interchangeable); n = 44 gives 11 default centres and 11 x 33 (odd) centre distances."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 2, generator=g)
    x = torch.tanh(z @ torch.randn(2, 6, generator=g))
    y = 3 * torch.tanh(z @ torch.randn(2, 3, generator=g)) + 0.3 * torch.randn(n, 3, generator=g)
    return x, y


@pytest.mark.parametrize("options", [
    {}, {"sigma_x": 0.7}, {"sigma_y": 2.0}, {"sigma_x": 0.7, "sigma_y": 2.0}, {"n_centres": 5},
    {"n_centres": 5, "sigma_y": 2.0}, {"lam": 0.3}, {"lam": 0.05, "lam_relative": False},
    {"lam": 0.001, "lam_relative": False}, {"alpha": 0.0}, {"alpha": 0.9}], ids=str)
def test_rsmi_options_match_the_written_out_estimator(options):
    """Every option of rsmi() does what its docstring says: the value equals the estimator
    computed from the definition with that option, and differs from the default call (so an
    ignored or mixed-up option cannot pass)."""
    x, y = _rsmi_sample()
    want, _ = _rsmi_reference(x, y, **options)
    got = float(rsmi(x, y, **options))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
    if options:
        default, _ = _rsmi_reference(x, y)
        assert abs(want - default) > 1e-3


def test_rsmi_option_properties_and_errors():
    x, y = _rsmi_sample()
    # the default widths are the medians of the centre-to-sample distances (11 centres by default)
    centres = [round(i * 43 / 10) for i in range(11)]
    rest = [p for p in range(44) if p not in centres]
    med = [float(torch.cdist(v[centres].double(), v[rest].double()).median()) for v in (x, y)]
    assert float(rsmi(x, y)) == pytest.approx(float(rsmi(x, y, sigma_x=med[0], sigma_y=med[1])), abs=1e-6)
    assert float(rsmi(x, y)) == float(rsmi(x, y, n_centres=11))            # min(16, N // 4)
    xb, yb = _rsmi_sample(100)
    assert float(rsmi(xb, yb)) == float(rsmi(xb, yb, n_centres=16))        # capped at 16
    # each width acts on its own variable: scaling y and sigma_y together changes nothing, and
    # the median heuristic makes the estimate scale-free
    base = float(rsmi(x, y, sigma_x=0.7, sigma_y=2.0))
    assert float(rsmi(x, 5 * y, sigma_x=0.7, sigma_y=10.0)) == pytest.approx(base, rel=1e-4)
    assert float(rsmi(4 * x, y, sigma_x=2.8, sigma_y=2.0)) == pytest.approx(base, rel=1e-4)
    assert float(rsmi(x, 5 * y, sigma_x=0.7, sigma_y=2.0)) != pytest.approx(base, rel=1e-2)
    assert float(rsmi(4 * x, 5 * y)) == pytest.approx(float(rsmi(x, y)), rel=1e-4)
    # lam_relative: the ridge is lam * mean(diag H), i.e. the absolute ridge of that size
    _, mean_diag = _rsmi_reference(x, y)
    assert float(rsmi(x, y, lam=0.05)) == pytest.approx(
        float(rsmi(x, y, lam=0.05 * mean_diag, lam_relative=False)), rel=1e-4)
    # with theta = (H + r I)^-1 h, 2 theta.h - theta.H.theta = sum_i h_i^2 (l_i + 2r) / (l_i + r)^2
    # over H's eigenpairs: strictly decreasing in the ridge r, and -> -1 (theta -> 0) as r grows
    values = [float(rsmi(x, y, lam=lam, lam_relative=False)) for lam in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e3, 1e6)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] == pytest.approx(-1.0, abs=1e-3) and values[0] > 0.3
    with pytest.raises(ValueError, match="paired"):
        rsmi(x, y[:-1])
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            rsmi(x, y, alpha=bad)
    with pytest.raises(ValueError, match="lam must be positive"):
        rsmi(x, y, lam=0.0)
    for bad in (0, 42):  # m must be in [1, N - 3]
        with pytest.raises(ValueError, match="n_centres"):
            rsmi(x, y, n_centres=bad)
    assert math.isfinite(float(rsmi(x, y, n_centres=41)))


def test_ts_loss_is_minus_mean_rsmi_over_layers_and_images():
    pairs = [_manifold_pair(s, n=64) for s in range(4)]
    x = [torch.cat([pairs[0][0], pairs[1][0]]), torch.cat([pairs[2][0], pairs[3][0]])]
    y = [torch.cat([pairs[0][1], pairs[1][1]]), torch.cat([pairs[2][1], pairs[3][1]])]
    expected = -sum(float(rsmi(a, b)) for a, b in pairs) / 4
    assert float(ts_loss(x, y, batch_size=2)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        ts_loss(x, y[:1])


# --------------------------------------------------------------------------- LSGAN
def test_lsgan_loss_targets_and_lists():
    pred = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    assert float(lsgan_loss(pred, True)) == pytest.approx((1 + 0 + 1 + 4) / 4)
    assert float(lsgan_loss(pred, False)) == pytest.approx((0 + 1 + 4 + 1) / 4)
    assert float(lsgan_loss([pred, torch.ones(3)], True)) == pytest.approx(0.75)
    # real and fake targets must differ on scores whose squared distances to 1 and 0 differ in sum
    scores = torch.tensor([0.25, 0.5, 3.0])
    assert float(lsgan_loss(scores, True)) == pytest.approx((0.5625 + 0.25 + 4.0) / 3)
    assert float(lsgan_loss(scores, False)) == pytest.approx((0.0625 + 0.25 + 9.0) / 3)
    assert float(lsgan_loss([scores, pred], False)) == pytest.approx(((0.0625 + 0.25 + 9.0) / 3 + 1.5) / 2)
    with pytest.raises(ValueError, match="^lsgan_loss got an empty list of predictions$"):
        lsgan_loss([], True)


def test_rsmi_batched_matches_single_calls():
    from translators.losses import rsmi_batched
    pairs = [_manifold_pair(s, n=64) for s in range(3)]
    batched = rsmi_batched(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))
    torch.testing.assert_close(batched, torch.stack([rsmi(*p) for p in pairs]), rtol=1e-4, atol=1e-5)


def test_minimising_ts_loss_creates_dependence():
    """Gradient steps on -rSMI (the TS loss) w.r.t. free outputs raise rSMI from ~0 (independent)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = torch.randn(128, 8, generator=g).requires_grad_(True)
    with torch.no_grad():
        start = float(rsmi(x, y))
    opt = torch.optim.Adam([y], lr=0.05)
    for _ in range(25):
        opt.zero_grad()
        ts_loss([x], [y]).backward()
        opt.step()
    assert abs(start) < 0.05 and float(rsmi(x, y.detach())) > start + 0.15


def test_rsmi_batched_survives_thread_count_changes():
    """MKL's batched LU fails at 256x256 after set_num_threads changes; the SPD solve must not."""
    from translators.losses.rsmi import rsmi_batched

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch.set_num_threads(2)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 128, 8, generator=g)
        y = x + 0.1 * torch.randn(3, 128, 8, generator=g)
        values = rsmi_batched(x, y, n_centres=16)  # 16 x 16 = 256 basis functions
        assert torch.isfinite(values).all() and (values > 0).all()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("relative", [True, False])
def test_rsmi_closed_form_backward_matches_autograd_through_the_solve(relative):
    """The fused objective (H built inside, rank-2 closed-form backward) equals autograd through
    the explicit construction of H and a linear solve, in value and gradient (float64)."""
    from translators.losses.rsmi import _RSMIObjective
    gen = torch.Generator().manual_seed(0)
    g, m, n = 3, 3, 20
    K0 = torch.rand(g, m, n, generator=gen, dtype=torch.float64)
    L0 = torch.rand(g, m, n, generator=gen, dtype=torch.float64)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    alpha, pairs, lam = 0.5, n * (n - 1), 0.05
    beta, gamma = alpha / pairs, (1 - alpha) / n - alpha / pairs

    def through(objective):
        K, L = K0.clone().requires_grad_(True), L0.clone().requires_grad_(True)
        phi = (K[:, :, None, :] * L[:, None, :, :]).reshape(g, m * m, n)
        h = ((K.sum(2)[:, :, None] * L.sum(2)[:, None, :]).reshape(g, -1) - phi.sum(2)) / pairs
        val = objective(h, phi, K @ K.transpose(1, 2), L @ L.transpose(1, 2))
        (val * weights).sum().backward()
        return val.detach(), K.grad, L.grad

    def reference(h, phi, kk, ll):
        kron = (kk[:, :, None, :, None] * ll[:, None, :, None, :]).reshape(g, m * m, m * m)
        H = beta * kron + gamma * phi @ phi.transpose(1, 2)
        ridge = lam * H.diagonal(dim1=1, dim2=2).mean(1).detach() if relative else torch.full((g,), lam, dtype=H.dtype)
        theta = torch.linalg.solve(H + ridge[:, None, None] * torch.eye(m * m, dtype=H.dtype), h)
        return 2 * (theta * h).sum(1) - (theta[:, None, :] @ H @ theta[:, :, None]).reshape(-1)

    v_ref, gk_ref, gl_ref = through(reference)
    v_new, gk_new, gl_new = through(lambda *a: _RSMIObjective.apply(*a, beta, gamma, lam, relative))
    torch.testing.assert_close(v_new, v_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gk_new, gk_ref, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(gl_new, gl_ref, rtol=1e-7, atol=1e-10)
    # and the whole estimator still has a finite, non-zero gradient with respect to y
    x = torch.rand(64, 2, generator=gen)
    y = (x + 0.1 * torch.randn(64, 2, generator=gen)).requires_grad_(True)
    rsmi(x, y).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_fused_distances_match_autograd_of_the_plain_form():
    from translators.losses.rsmi import _DistancesToOwnRows, _sq_dist
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 11, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    rows = torch.tensor([0, 5, 10])
    fused = _DistancesToOwnRows.apply(x, rows)
    ref = _sq_dist(x, x.index_select(1, rows))
    torch.testing.assert_close(fused, ref)
    w = torch.randn(fused.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(fused, x, w)[0], torch.autograd.grad(ref, x, w)[0])
    assert torch.autograd.gradcheck(lambda t: _DistancesToOwnRows.apply(t, rows).index_select(2, torch.tensor([1, 2, 3])), (x,))


def test_fused_distances_with_constant_rows_match_autograd_of_detached_centres():
    from translators.losses.rsmi import _DistancesToOwnRows, _sq_dist
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 11, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    rows = torch.tensor([0, 5, 10])
    fused = _DistancesToOwnRows.apply(x, rows, True)
    ref = _sq_dist(x, x.index_select(1, rows).detach())
    torch.testing.assert_close(fused, ref)
    w = torch.randn(fused.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(fused, x, w)[0], torch.autograd.grad(ref, x, w)[0])


def test_rsmi_centres_are_constants_by_default():
    """The m centre samples get no gradient unless ``detach_centres=False``; the estimation samples'
    gradient is the same either way (the centres only move the basis); attached, the centres'
    gradients are several times larger than a sample's (why they are detached by default)."""
    x, y = _rsmi_sample(100)
    centres = torch.linspace(0, 99, 16).round().long()
    is_centre = torch.zeros(100, dtype=torch.bool)
    is_centre[centres] = True
    grads = {}
    for detach in (True, False):
        xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        value = rsmi(xg, yg, detach_centres=detach)
        value.backward()
        grads[detach] = (value.item(), xg.grad, yg.grad)
    assert grads[True][0] == grads[False][0]                       # same estimate
    for i in (1, 2):
        assert torch.count_nonzero(grads[True][i][is_centre]) == 0
        torch.testing.assert_close(grads[True][i][~is_centre], grads[False][i][~is_centre], rtol=1e-4, atol=1e-7)
        attached = grads[False][i].norm(dim=1)
        assert attached[is_centre].mean() > 3 * attached[~is_centre].mean()
    # the defaults of rsmi and rsmi_batched detach the centres
    from translators.losses import rsmi_batched
    for fn, args in ((rsmi, (x, y)), (rsmi_batched, (x[None], y[None]))):
        xg = args[0].clone().requires_grad_(True)
        value = fn(xg, args[1]).sum()
        value.backward()
        assert value.item() == grads[True][0]
        assert torch.count_nonzero(xg.grad.reshape(100, -1)[is_centre]) == 0


def test_fused_contrastive_losses_run_in_float32_under_autocast():
    """bf16 embeddings under CPU autocast: the loss is the float32 loss of the same values, and
    the gradient comes back in the embeddings' dtype."""
    q32, k32 = _feats(16, 8, 11), _feats(16, 8, 12)
    q = q32.bfloat16().requires_grad_(True)
    k = k32.bfloat16()
    w = hdce_weights(k32, 0.5, 2)
    for fn, kwargs in ((patchnce_loss, {}), (hdce_loss, {"weights": w})):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fn(q, k, tau=0.07, batch_size=2, **kwargs)
        assert got.dtype == torch.float32
        want = fn(q.detach().float(), k.float(), tau=0.07, batch_size=2, **kwargs)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        (grad,) = torch.autograd.grad(got.sum(), q)
        assert grad.dtype == torch.bfloat16 and grad.abs().sum() > 0


# --------------------------------------------------------------------------- boundaries, defaults, errors
def _np_patchnce(q: torch.Tensor, k: torch.Tensor, tau: float, batch_size: int) -> np.ndarray:
    """CUT's PatchNCE (module docstring) in float64 numpy: -log e^{pos} / (e^{pos} + sum_j e^{s_ij}),
    s_ii = -10, per image."""
    q, k = q.double().numpy(), k.double().numpy()
    out = []
    for qb, kb in zip(np.split(q, batch_size), np.split(k, batch_size)):
        s = qb @ kb.T
        pos = np.diag(s).copy()
        np.fill_diagonal(s, -10.0)
        out.append(np.logaddexp(pos / tau, np.logaddexp.reduce(s / tau, axis=1)) - pos / tau)
    return np.concatenate(out)


def _np_hdce(q: torch.Tensor, k: torch.Tensor, w: np.ndarray | None, tau: float, batch_size: int,
             form: str) -> np.ndarray:
    """Decoupled NCE (hdce docstring) in float64 numpy: logsumexp_j z_ij - s_ii / tau with z_ii = -10 / tau."""
    q, k = q.double().numpy(), k.double().numpy()
    out = []
    for b, (qb, kb) in enumerate(zip(np.split(q, batch_size), np.split(k, batch_size))):
        s = qb @ kb.T
        pos = np.diag(s).copy() / tau
        if w is None:
            z = s / tau
        else:
            wb = np.asarray(w[b if len(w) > 1 else 0], dtype=np.float64)
            with np.errstate(divide="ignore"):
                z = wb * s / tau if form == "src" else s / tau + np.log(wb)
        np.fill_diagonal(z, -10.0 / tau)
        out.append(np.logaddexp.reduce(z, axis=1) - pos)
    return np.concatenate(out)


def test_contrastive_defaults_are_tau_007_and_one_image():
    """Defaults of the fused losses and their references: tau = 0.07, batch_size = 1, form = "src"
    (5 patches: a batch default of 2 could not split them)."""
    q, k = _feats(5, 4, 20), _feats(5, 4, 21)
    want_nce = _np_patchnce(q, k, 0.07, 1)
    np.testing.assert_allclose(patchnce_loss(q, k).double().numpy(), want_nce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(patchnce_loss_reference(q, k).double().numpy(), want_nce, rtol=1e-5, atol=1e-5)
    w = hdce_weights(k, 0.5)
    want_hdce = _np_hdce(q, k, w.numpy(), 0.07, 1, "src")
    np.testing.assert_allclose(hdce_loss(q, k, w).double().numpy(), want_hdce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hdce_loss_reference(q, k, w).double().numpy(), want_hdce, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tau", [0.5, 3.0])
def test_masked_self_term_counts_at_large_tau(tau):
    """At large tau the masked self term exp(-10 / tau) is a visible share of the denominator: the
    fused losses must add exactly exp(-10 / tau) for it (float64, written-out formulas)."""
    g = torch.Generator().manual_seed(22)
    batch, p = 2, 4
    q = l2_normalize(torch.randn(batch * p, 3, generator=g, dtype=torch.float64))
    k = l2_normalize(torch.randn(batch * p, 3, generator=g, dtype=torch.float64))
    w = hdce_weights(k, 0.5, batch)
    np.testing.assert_allclose(patchnce_loss(q, k, tau, batch).numpy(), _np_patchnce(q, k, tau, batch),
                               rtol=1e-12, atol=1e-12)
    for form in ("src", "paper"):
        for weights in (None, w):
            want = _np_hdce(q, k, None if weights is None else weights.numpy(), tau, batch, form)
            np.testing.assert_allclose(hdce_loss(q, k, weights, tau, batch, form).numpy(), want,
                                       rtol=1e-12, atol=1e-12)


def test_fused_losses_stay_finite_when_every_logit_is_far_below_zero():
    """Every key anti-aligned with every query (s_ij = -1) at tau = 1e-3: all real logits are -1000,
    far below 0 but above the mask (-10000). Exactly, PatchNCE = log P and hDCE = log(P - 1); the
    fused losses must shift by the largest real logit (not the mask), or everything underflows."""
    q = torch.tensor([[1.0, 0.0]] * 3, dtype=torch.float64)
    k = -q
    tau = 1e-3
    np.testing.assert_allclose(patchnce_loss(q, k, tau).numpy(), [math.log(3)] * 3, rtol=1e-12)
    np.testing.assert_allclose(hdce_loss(q, k, None, tau).numpy(), [math.log(2)] * 3, rtol=1e-12)
    np.testing.assert_allclose(_np_patchnce(q, k, tau, 1), [math.log(3)] * 3, rtol=1e-12)
    np.testing.assert_allclose(_np_hdce(q, k, None, tau, 1, "src"), [math.log(2)] * 3, rtol=1e-12)


def test_hdce_two_patches_is_the_minimum():
    """P = 2 (one positive, one negative) is valid: w = [[0, 1], [1, 0]] and l_i = (s_ij - s_ii) / tau
    (src form, weight 1); P = 1 is rejected by every hDCE entry point."""
    q, k, tau = _feats(2, 3, 23), _feats(2, 3, 24), 0.3
    w = hdce_weights(k, 0.5)
    torch.testing.assert_close(w, torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    s = (q.double() @ k.double().T).numpy()
    want = [(s[0, 1] - s[0, 0]) / tau, (s[1, 0] - s[1, 1]) / tau]
    for fn in (hdce_loss, hdce_loss_reference):
        np.testing.assert_allclose(fn(q, k, w, tau).double().numpy(), want, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"^hDCE needs at least 2 patches per image \(one positive, >= 1 negative\)$"):
            fn(_feats(2, 3, 0), _feats(2, 3, 1), None, tau, 2)
    with pytest.raises(ValueError, match=r"^hDCE needs at least 2 patches per image \(one positive, >= 1 negative\)$"):
        hdce_weights(_feats(2, 3, 1), 0.5, batch_size=2)


def test_hdce_weights_validation_and_dtype():
    k = _feats(8, 4, 25)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"gamma must be positive, got {bad}"):
            hdce_weights(k, bad)
    for dtype in (torch.float64, torch.bfloat16):
        w = hdce_weights(k.to(dtype), 0.5, 2)
        assert w.dtype == dtype
        torch.testing.assert_close(w, hdce_weights(k.to(dtype).float(), 0.5, 2).to(dtype), rtol=0, atol=0)


def test_hdce_rejects_misshaped_weights():
    q, k = _feats(8, 4, 26), _feats(8, 4, 27)
    for shape in [(3, 4, 4), (4, 4), (1, 1, 4, 4), (2, 4, 5), (2, 5, 4)]:
        for fn in (hdce_loss, hdce_loss_reference):
            with pytest.raises(ValueError, match=re.escape(f"hDCE weights must be (2 or 1, 4, 4) (from "
                                                           f"hdce_weights); got {shape}")):
                fn(q, k, torch.ones(shape), 0.07, 2)


def test_hdce_weights_are_cast_to_the_feature_dtype():
    """Weights given in bf16 act as their float32 values: the paper form's log w is taken in the
    features' precision, not in bf16."""
    q, k = _feats(8, 4, 28), _feats(8, 4, 29)
    w = hdce_weights(k, 0.3, 2).bfloat16()
    for form in ("src", "paper"):
        for fn in (hdce_loss, hdce_loss_reference):
            torch.testing.assert_close(fn(q, k, w, 0.07, 2, form), fn(q, k, w.float(), 0.07, 2, form),
                                       rtol=0, atol=0)
            np.testing.assert_allclose(fn(q.double(), k.double(), w, 0.07, 2, form).numpy(),
                                       _np_hdce(q, k, w.float().numpy(), 0.07, 2, form), rtol=1e-12, atol=1e-12)


def test_hdce_reference_rejects_unknown_form():
    with pytest.raises(ValueError, match=r"hDCE form must be one of \('src', 'paper'\), got 'SRC'"):
        hdce_loss_reference(_feats(4, 3, 0), _feats(4, 3, 1), form="SRC")


def test_hdce_gamma_boundaries():
    # total_epochs must be positive (0 rejected, 1 accepted)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"total_epochs must be positive, got {bad}"):
            hdce_gamma(1, bad)
    assert hdce_gamma(0.5, 1, gamma_start=50, gamma_end=10) == pytest.approx(30)
    # the step applies strictly after step_epoch
    assert hdce_gamma(200, 400, gamma_start=50, gamma_end=10, step_epoch=200) == pytest.approx(30)
    assert hdce_gamma(200.5, 400, gamma_start=50, gamma_end=10, step_epoch=200, step_gamma=2) == 2.0


def test_contrastive_inputs_are_checked():
    q = _feats(6, 4, 30)
    for fn in (patchnce_loss, patchnce_loss_reference, hdce_loss, hdce_loss_reference):
        with pytest.raises(TypeError, match=re.escape("contrastive losses take one layer's (B*P, C) tensors; "
                                                      "loop over the layers of PatchSampleF's output (got list)")):
            fn([q], q)
        if fn in (patchnce_loss, hdce_loss):  # the references detach the key before checking
            with pytest.raises(TypeError, match=re.escape("(B*P, C) tensors; loop over the layers of "
                                                          "PatchSampleF's output (got Tensor)")):
                fn(q, [q])
        with pytest.raises(ValueError, match=re.escape("feat_q and feat_k must both be (B*P, C); got (6, 4) "
                                                       "and (6, 5)")):
            fn(q, _feats(6, 5, 31))
        with pytest.raises(ValueError, match=re.escape("feat_q and feat_k must both be (B*P, C); got (2, 3, 4) "
                                                       "and (2, 3, 4)")):
            fn(q.reshape(2, 3, 4), q.reshape(2, 3, 4))


def test_full_precision_inputs_follow_the_first_tensor():
    """The first tensor (the queries) decides the precision: half/bf16 -> float32, float64 stays."""
    from translators.losses.patchnce import full_precision_inputs
    a16, a64 = torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float64)
    assert [t.dtype for t in full_precision_inputs(a16, a64)] == [torch.float32, torch.float32]
    assert [t.dtype for t in full_precision_inputs(a64, a16)] == [torch.float64, torch.float64]
    assert [t.dtype for t in full_precision_inputs(a16.half())] == [torch.float32]
    q, k = _feats(6, 4, 32), _feats(6, 4, 33)
    assert patchnce_loss(q.bfloat16(), k.double()).dtype == torch.float32
    assert hdce_loss(q.double(), k.bfloat16()).dtype == torch.float64


def test_references_build_their_masks_on_the_inputs_device():
    """The reference losses and median_distance create their index/mask tensors on the inputs'
    device, not on the default device (checked with a meta default device and CPU inputs)."""
    from translators.losses import median_distance
    q, k = _feats(6, 4, 34), _feats(6, 4, 35)
    want = (patchnce_loss_reference(q, k, 0.07, 2), hdce_loss_reference(q, k, None, 0.07, 2),
            median_distance(q))
    with torch.device("meta"):
        got = (patchnce_loss_reference(q, k, 0.07, 2), hdce_loss_reference(q, k, None, 0.07, 2),
               median_distance(q))
    for a, b in zip(got, want):
        assert a.device.type == "cpu"
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_median_distance_is_the_all_pairs_median():
    """7 rows -> 21 (odd) pairs, so the median is one of the distances; (G, N, D) gives one per group;
    detached; clamped at 1e-6 for identical rows."""
    from translators.losses import median_distance
    g = torch.Generator().manual_seed(36)
    x = 0.1 * torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    want = [np.median([np.linalg.norm(v[i] - v[j]) for i in range(7) for j in range(i + 1, 7)])
            for v in x.numpy()]
    assert max(want) < 1.0
    got = median_distance(x.requires_grad_(True))
    assert got.shape == (3,) and not got.requires_grad
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    for i in range(3):
        single = median_distance(x[i])
        assert single.shape == () and not single.requires_grad
        assert float(single) == pytest.approx(want[i], rel=1e-12)
    same = torch.ones(5, 3)
    assert float(median_distance(same)) == pytest.approx(1e-6, rel=1e-6)
    np.testing.assert_allclose(median_distance(torch.ones(2, 5, 3)).numpy(), [1e-6, 1e-6], rtol=1e-6)
