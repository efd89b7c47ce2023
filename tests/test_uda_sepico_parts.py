"""SePiCo components (segmenters/uda/sepico_parts.py): contrastive losses, class statistics,
pseudo-label weights, class-balanced cropping, projection head, config."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segmenters.uda.sepico_parts import (ClassStatistics, ProjectionHead, SePiCoConfig, bank_contrastive_loss,
                                         class_balanced_crop_box, contrastive_regulariser, crop,
                                         dist_contrastive_loss, downscale_labels, flatten_labelled_features,
                                         proto_contrastive_loss, pseudo_label_weight)


def _toy(n=6, d=4, c=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.arange(n) % c
    mu = torch.randn(c, d, generator=g, dtype=dtype)
    sigma = 0.2 + 0.4 * torch.rand(c, d, generator=g, dtype=dtype)
    return f, y, mu, sigma


def test_protocl_is_cross_entropy_over_centroid_logits():
    f, y, mu, _ = _toy(dtype=torch.float32)
    f = F.normalize(f, dim=1).requires_grad_()
    for tau in (100.0, 0.1):
        expected = F.cross_entropy(f @ mu.t() / tau, y)
        torch.testing.assert_close(proto_contrastive_loss(f, y, mu, tau), expected)
    loss = proto_contrastive_loss(f, y, mu, 0.1)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    # ignore label and per-pixel weights
    y2 = y.clone()
    y2[0] = 255
    w = torch.linspace(0.5, 1.5, 6)
    manual = (F.cross_entropy(f[1:] @ mu.t() / 0.1, y[1:], reduction="none") * w[1:]).mean()
    torch.testing.assert_close(proto_contrastive_loss(f, y2, mu, 0.1, weight=w), manual)


def test_distcl_closed_form_is_the_jensen_bound_of_the_expected_loss():
    """With centres c_k ~ N(mu_k, diag Sigma_k) and z_k = f.c_k / tau, the expected CE is
    E[-z_y + log sum_k exp z_k]. DistCL must equal the Jensen bound -E[z_y] + log E[sum_k exp z_k]
    (checked by Monte Carlo of the moment-generating function: this pins down the logits AND the
    positive-class term), must be >= the Monte-Carlo expected CE (it is an upper bound), and the
    gap must vanish as Sigma -> 0 (where DistCL reduces to ProtoCL)."""
    f, y, mu, sigma = _toy()
    tau, samples = 1.0, 200_000
    g = torch.Generator().manual_seed(1)
    centres = mu + sigma.sqrt() * torch.randn(samples, *mu.shape, generator=g, dtype=mu.dtype)  # (S, C, D)
    z = torch.einsum("nd,scd->snc", f, centres) / tau  # (S, N, C)
    mc_expected_ce = (torch.logsumexp(z, 2) - z.gather(2, y.view(1, -1, 1).expand(samples, -1, 1))[..., 0]).mean()
    mc_bound = (-(f * mu[y]).sum(1) / tau + torch.log(torch.exp(z).sum(2).mean(0))).mean()

    closed = dist_contrastive_loss(f, y, mu, sigma, tau)
    assert abs(closed.item() - mc_bound.item()) < 0.02 * abs(mc_bound.item()) + 0.01
    assert closed.item() >= mc_expected_ce.item() - 0.01
    assert closed.item() - mc_expected_ce.item() > 0.05  # the bound is not tight at this variance

    tiny = sigma * 1e-4
    z_small = torch.einsum("nd,scd->snc", f, mu + tiny.sqrt() * torch.randn(20_000, *mu.shape, generator=g,
                                                                          dtype=mu.dtype)) / tau
    mc_small = (torch.logsumexp(z_small, 2) - z_small.gather(2, y.view(1, -1, 1).expand(20_000, -1, 1))[..., 0]).mean()
    assert abs(dist_contrastive_loss(f, y, mu, tiny, tau).item() - mc_small.item()) < 1e-3
    torch.testing.assert_close(dist_contrastive_loss(f, y, mu, torch.zeros_like(sigma), tau),
                               proto_contrastive_loss(f, y, mu, tau))


def test_distcl_matches_the_public_formula():
    f, y, mu, sigma = _toy()
    tau = 100.0
    logits = (f @ mu.t() + 0.5 * (f ** 2) @ sigma.t() / tau) / tau
    expected = F.cross_entropy(logits, y, reduction="none") + 0.5 * ((f ** 2) * sigma[y]).sum(1) / tau ** 2
    torch.testing.assert_close(dist_contrastive_loss(f, y, mu, sigma, tau), expected.mean())


def test_uninitialised_classes_are_left_out_of_the_losses():
    f, y, mu, sigma = _toy(n=9, c=3)
    valid = torch.tensor([True, False, True])
    keep = y != 1
    sub = torch.tensor([0, 0, 1])  # class id in the reduced problem
    expected = F.cross_entropy(f[keep] @ mu[[0, 2]].t() / 2.0, sub[y[keep]])
    torch.testing.assert_close(proto_contrastive_loss(f, y, mu, 2.0, valid_classes=valid), expected)
    exp_dist = dist_contrastive_loss(f[keep], sub[y[keep]], mu[[0, 2]], sigma[[0, 2]], 2.0)
    torch.testing.assert_close(dist_contrastive_loss(f, y, mu, sigma, 2.0, valid_classes=valid), exp_dist)
    none_valid = torch.zeros(3, dtype=torch.bool)
    out = proto_contrastive_loss(f.requires_grad_(), y, mu, 2.0, valid_classes=none_valid)
    assert out.item() == 0.0 and out.requires_grad


def test_bankcl_reduces_to_protocl_with_one_entry_and_matches_hand_formula():
    f, y, mu, _ = _toy(n=8, c=3, dtype=torch.float32)
    bank = mu[:, None].clone()
    valid = torch.ones(3, 1, dtype=torch.bool)
    torch.testing.assert_close(bank_contrastive_loss(f, y, bank, valid, 0.5), proto_contrastive_loss(f, y, mu, 0.5))
    # two entries for class 0, one slot empty for classes 1 and 2; class-2 bank empty entirely
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(3, 2, 4, generator=g)
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    tau = 0.5
    losses = []
    for fi, yi in zip(f, y.tolist()):
        if yi == 2:
            continue  # no positives for class 2
        negs = [fi @ bank[j][valid[j]].mean(0) / tau for j in range(3) if j != yi and valid[j].any()]
        s = sum(torch.exp(n) for n in negs)
        pos = bank[yi][valid[yi]] @ fi / tau
        losses.append((-torch.log(torch.exp(pos) / (torch.exp(pos) + s))).mean())
    torch.testing.assert_close(bank_contrastive_loss(f, y, bank, valid, tau), torch.stack(losses).mean())


def test_class_statistics_pooled_moments_absent_and_unseen_classes():
    g = torch.Generator().manual_seed(0)
    stats = ClassStatistics(num_classes=4, feat_dim=3, memory_length=2)
    f1, y1 = torch.randn(50, 3, generator=g), torch.randint(0, 3, (50,), generator=g)
    f2, y2 = torch.randn(40, 3, generator=g) + 2, torch.randint(0, 2, (40,), generator=g)  # class 2 absent
    y2[:3] = 255
    stats.update(f1, y1)
    class2 = (stats.mean[2].clone(), stats.variance[2].clone(), stats.count[2].item())
    present = stats.update(f2, y2)
    assert present.tolist() == [True, True, False, False]
    allf, ally = torch.cat([f1, f2[3:]]), torch.cat([y1, y2[3:]])
    for k in range(3):  # exact pooled mean and (biased) variance of every pixel seen
        torch.testing.assert_close(stats.mean[k], allf[ally == k].mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stats.variance[k], allf[ally == k].var(0, unbiased=False), atol=1e-5, rtol=1e-5)
    # absent class kept its statistics; never-seen class 3 is uninitialised and zero
    assert torch.equal(stats.mean[2], class2[0]) and torch.equal(stats.variance[2], class2[1])
    assert stats.count[2].item() == class2[2]
    assert stats.initialized.tolist() == [True, True, True, False]
    assert stats.mean[3].abs().sum() == 0 and stats.bank_valid[3].sum() == 0
    # memory bank: last batch means, ring of length 2
    assert stats.bank_valid.sum(1).tolist() == [2, 2, 1, 0]
    torch.testing.assert_close(stats.bank[0, 1], f2[3:][y2[3:] == 0].mean(0))
    stats.update(f1, y1)
    torch.testing.assert_close(stats.bank[0, 0], f1[y1 == 0].mean(0))  # oldest slot overwritten
    # buffers travel with state_dict (training checkpoints)
    assert {"mean", "variance", "count", "bank", "bank_size", "bank_next"} <= set(stats.state_dict())


def test_class_statistics_momentum_mode():
    stats = ClassStatistics(2, 2, momentum=0.1)
    stats.update(torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.tensor([0, 0]))  # first sight: batch stats
    torch.testing.assert_close(stats.mean[0], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(stats.variance[0], torch.tensor([1.0, 1.0]))
    stats.update(torch.tensor([[12.0, 2.0]]), torch.tensor([0]))
    torch.testing.assert_close(stats.mean[0], torch.tensor([0.9 * 2 + 0.1 * 12, 2.0]))
    torch.testing.assert_close(stats.variance[0], torch.tensor([0.9 * 1 + 0.09 * 100, 0.9]))


def test_contrastive_regulariser_value():
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    f = torch.tensor([[0.6, 0.8], [0.2, -0.4]], requires_grad=True)
    tau = 0.5
    expected = F.log_softmax(f.mean(0, keepdim=True) @ mu.t() / tau, 1).sum() / (3 * math.log(3))
    torch.testing.assert_close(contrastive_regulariser(f, mu, tau), expected)
    # at uniform similarity it is exactly -1 (sum of log(1/C) over C classes / (C log C))
    assert contrastive_regulariser(torch.zeros(4, 2), mu, tau).item() == pytest.approx(-1.0)
    valid = torch.tensor([True, True, False])
    exp2 = F.log_softmax(f.mean(0, keepdim=True) @ mu[:2].t() / tau, 1).sum() / (3 * math.log(3))
    torch.testing.assert_close(contrastive_regulariser(f, mu, tau, valid), exp2)


def test_pseudo_label_weight_hand_example():
    probs = torch.zeros(2, 2, 4, 2)
    probs[:, 0] = 0.99  # 0.99 >= 0.968: confident class 0
    probs[:, 1] = 0.01
    probs[0, :, 0, 0] = torch.tensor([0.3, 0.7])  # two unconfident pixels in image 0
    probs[0, :, 1, 1] = torch.tensor([0.5, 0.5])
    probs[1, :, 3, :] = torch.tensor([0.968, 0.032]).view(2, 1)  # exactly at the threshold: confident
    labels, weight = pseudo_label_weight(probs, 0.968)
    assert labels[0, 0, 0] == 1 and labels[1].eq(0).all()
    assert torch.allclose(weight[0], torch.full((4, 2), 6 / 8)) and torch.allclose(weight[1], torch.ones(4, 2))
    _, w2 = pseudo_label_weight(probs, 0.968, ignore_top=1, ignore_bottom=2)
    assert w2[:, 0].eq(0).all() and w2[:, 2:].eq(0).all() and torch.allclose(w2[0, 1], torch.full((2,), 0.75))
    _, w_batch = pseudo_label_weight(probs, 0.968, per_image=False)  # public code: pooled over the batch
    assert torch.allclose(w_batch, torch.full((2, 4, 2), 14 / 16))


def test_cbc_respects_cat_max_ratio():
    # 64x64: left 40 columns class 0, right 24 columns class 1; 32x32 crops are balanced (ratio < 0.75)
    # only when x1 > 16 (class-1 share > 0.25); half of the 33 offsets.
    lbl = torch.zeros(64, 64, dtype=torch.long)
    lbl[:, 40:] = 1
    lbl[:4] = 255
    balanced_hits = 0
    for seed in range(20):
        box = class_balanced_crop_box(lbl, (32, 32), 0.75, tries=10, generator=torch.Generator().manual_seed(seed))
        assert (box.y2 - box.y1, box.x2 - box.x1) == (32, 32)
        c = crop(lbl, box)
        counts = torch.bincount(c[c != 255].flatten(), minlength=2).float()
        ratio = (counts.max() / counts.sum()).item()
        assert box.balanced == (ratio < 0.75 and (counts > 0).sum() > 1)
        balanced_hits += box.balanced
    assert balanced_hits >= 19  # P(no balanced box in 10 tries) ~ 1e-3
    # among balanced boxes the most even one wins: with many tries we reach the 50/50 split
    best = class_balanced_crop_box(lbl, (32, 32), 0.75, tries=200, generator=torch.Generator().manual_seed(0))
    assert abs(best.x1 - 24) <= 2
    # infeasible: single class -> first random box, not balanced; small image -> whole side
    one = torch.zeros(20, 50, dtype=torch.long)
    box = class_balanced_crop_box(one, (32, 32), generator=torch.Generator().manual_seed(0))
    assert not box.balanced and (box.y1, box.y2) == (0, 20) and box.x2 - box.x1 == 32
    images = torch.rand(3, 20, 50)
    assert crop(images, box).shape == (3, 20, 32)


def test_downscale_labels_majority_and_min_ratio():
    lbl = torch.tensor([[0, 0, 1, 1],
                        [0, 0, 1, 2],
                        [3, 3, 255, 255],
                        [3, 4, 255, 255]]).view(1, 4, 4)
    out = downscale_labels(lbl, (2, 2), num_classes=5, min_ratio=0.75)
    assert out.tolist() == [[[0, 1], [3, 255]]]
    out = downscale_labels(lbl, (2, 2), num_classes=5, min_ratio=0.5)
    assert out.tolist() == [[[0, 1], [3, 255]]]
    out = downscale_labels(lbl, (2, 2), num_classes=5, min_ratio=0.8)
    assert out.tolist() == [[[0, 255], [255, 255]]]
    feats = torch.arange(8.0).view(1, 2, 2, 2)
    f, y = flatten_labelled_features(feats, lbl, num_classes=5)
    assert y.tolist() == [0, 1, 3] and f.tolist() == [[0.0, 4.0], [1.0, 5.0], [2.0, 6.0]]


def test_projection_head_and_config():
    head = ProjectionHead(16, proj_dim=8)
    out = head(torch.randn(2, 16, 5, 7))
    assert out.shape == (2, 8, 5, 7)
    norms = out.norm(dim=1)
    # unit length, except where the final ReLU zeroed every channel (kept from the public head)
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0)) and (norms > 0).float().mean() > 0.9
    assert out.min() >= 0
    assert sum(isinstance(m, torch.nn.Conv2d) for m in head.modules()) == 2
    cfg = SePiCoConfig()
    assert (cfg.tau, cfg.proj_dim, cfg.contrastive_weight, cfg.start_distribution_iter) == (100.0, 512, 1.0, 3000)
    assert cfg.ignore_rows(640) == (15, 120) and cfg.ignore_rows(128) == (3, 24)
    assert SePiCoConfig.from_dict({"type": "SePiCo", "tau": 50, "crop_size": [64, 64]}).crop_size == (64, 64)
    with pytest.raises(ValueError, match="uda.temperature"):
        SePiCoConfig.from_dict({"temperature": 1.0})
    with pytest.raises(ValueError, match="contrast_mode"):
        SePiCoConfig(contrast_mode="other")
