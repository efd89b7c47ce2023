"""FID / KID statistics against direct numpy computations; Inception loading and its errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import linalg

from translators.metrics.__main__ import main as cli
from translators.metrics.features import (FeatureExtractor, InceptionFeatures, InceptionWeightsError,
                                          RandomConvFeatures, build_fid_inception)
from translators.metrics.fid import (FeatureStats, FIDInputError, accumulate, fid_kid, frechet_distance,
                                     kid_from_features, list_images, mmd2_unbiased)


def numpy_fid(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, pair by pair (O(n^2) Python loops)."""
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_streaming_statistics_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (103, 6)) @ rng.normal(size=(6, 6))   # correlated, far from zero mean
    stats = FeatureStats(6, kid_max_samples=1000)
    for chunk in np.array_split(x, [1, 10, 50, 51]):                 # uneven batches, one of size 1
        stats.update(torch.from_numpy(chunk).float() if len(chunk) == 9 else chunk)
    assert stats.n == 103
    assert np.allclose(stats.mean, x.mean(0), atol=1e-5)
    assert np.allclose(stats.cov, np.cov(x, rowvar=False), atol=1e-4, rtol=1e-5)
    assert np.allclose(stats.kid_features, x, atol=1e-4)             # under the cap: every feature, in order
    with pytest.raises(ValueError, match=r"shape \(B, 6\)"):
        stats.update(np.zeros((2, 5)))


def test_kid_sample_is_bounded_and_uniform_subset():
    x = np.arange(5000, dtype=np.float64)[:, None].repeat(2, 1)
    stats = FeatureStats(2, kid_max_samples=500, seed=3)
    for chunk in np.array_split(x, 37):
        stats.update(chunk)
    kept = stats.kid_features[:, 0]
    assert len(kept) == 500 and len(np.unique(kept)) == 500 and np.isin(kept, x[:, 0]).all()
    assert 1800 < kept.mean() < 3200                                   # not just the first rows
    assert np.allclose(stats.mean, x.mean(0)) and stats.n == 5000     # FID statistics still use every row


def test_frechet_distance_matches_numpy_and_closed_form():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0, 1, (400, 5)), rng.normal(0.5, 2, (300, 5)) @ rng.normal(size=(5, 5))
    fid = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fid == pytest.approx(numpy_fid(x, y), rel=1e-9)
    # diagonal Gaussians: ||mu1 - mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    mu1, mu2, s1, s2 = np.array([0.0, 1, 2]), np.array([1.0, 1, 0]), np.array([1.0, 4, 9]), np.array([4.0, 1, 1])
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(5 + (5 - 4) + (5 - 4) + (10 - 6))
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_singular_covariances_use_the_eps_offset(caplog):
    s1 = np.array([[5.0, 0, 2], [0, 0, 0], [2, 0, 4]])                 # rank 2
    s2 = np.full((3, 3), 4.0)                                          # rank 1: sqrtm(s1 @ s2) is not finite
    mu1, mu2 = np.zeros(3), np.array([1.0, 0, 0])
    value = frechet_distance(mu1, s1, mu2, s2, eps=1e-6)
    off = np.eye(3) * 1e-6
    expected = 1.0 + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm((s1 + off) @ (s2 + off)).real)
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-6)
    assert "singular" in caplog.text
    # a plainly singular but finite case needs no offset
    sigma = np.diag([1.0, 0, 0])
    assert frechet_distance(np.zeros(3), sigma, np.ones(3), sigma) == pytest.approx(3.0, abs=1e-9)


def test_kid_matches_brute_force_mmd():
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1, (14, 4)), rng.normal(0.3, 1.2, (11, 4))
    assert mmd2_unbiased(x, y) == pytest.approx(brute_force_mmd2(x, y), rel=1e-10)
    # one subset of all rows = the full unbiased estimate (order does not matter)
    mean, std, m = kid_from_features(x, y, subsets=1, subset_size=11, seed=0)
    ix = np.random.default_rng(0).choice(14, 11, replace=False)
    assert m == 11 and std == 0 and mean == pytest.approx(brute_force_mmd2(x[ix], y), rel=1e-10)
    # several subsets: the mean of brute-force MMDs on the same reproducible draws
    mean, std, m = kid_from_features(x, y, subsets=4, subset_size=6, seed=7)
    draw = np.random.default_rng(7)
    values = []
    for _ in range(4):
        ix, iy = draw.choice(14, 6, replace=False), draw.choice(11, 6, replace=False)
        values.append(brute_force_mmd2(x[ix], y[iy]))
    assert m == 6 and mean == pytest.approx(np.mean(values), rel=1e-10) and std == pytest.approx(np.std(values))
    # subset size larger than a set is clipped to it
    assert kid_from_features(x, y, subsets=2, subset_size=1000)[2] == 11


def _image_folder(root: Path, n: int, seed: int, shift: int) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        size = (24 + 8 * (i % 2), 40)                                  # mixed sizes: resized to input_size
        img = np.clip(rng.normal(100 + shift, 40, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i:03d}.{'png' if i % 3 else 'jpg'}")
    return root


def test_fid_kid_on_image_folders_equals_direct_computation(tmp_path):
    real = list_images(_image_folder(tmp_path / "real", 24, 0, 0))
    fake = list_images(_image_folder(tmp_path / "fake", 20, 1, 40))
    extractor = RandomConvFeatures(dim=8, input_size=(32, 32), seed=0)
    assert isinstance(extractor, FeatureExtractor)
    res = fid_kid(real, fake, extractor, kid_subsets=5, kid_subset_size=10, batch_size=7)

    def direct(files):
        from segmenters.io import read_rgb

        imgs = [torch.nn.functional.interpolate(torch.from_numpy(read_rgb(f).transpose(2, 0, 1).copy()).float()[None],
                                                size=(32, 32), mode="bilinear", align_corners=False) for f in files]
        with torch.no_grad():
            return extractor(torch.cat(imgs)).double().numpy()

    fx, fy = direct(real), direct(fake)
    assert res.fid == pytest.approx(numpy_fid(fx, fy), rel=1e-4)
    kid, kid_std, m = kid_from_features(fx, fy, 5, 10, seed=0)
    assert res.kid_mean == pytest.approx(kid, rel=1e-4, abs=1e-7) and res.kid_subset_size == m == 10
    assert (res.n_real, res.n_fake) == (24, 20) and res.features.startswith("random-conv")
    assert res.fid > 0.1 and fid_kid(real, real, extractor, 3, 10).fid == pytest.approx(0, abs=1e-6)


def test_fid_cli_with_random_features_and_prepared_real(tiny_prepared, tmp_path):
    fake = _image_folder(tmp_path / "fake", 6, 1, 40)
    out = tmp_path / "fid.csv"
    assert cli(["fid", "--real-prepared", str(tiny_prepared["target"]), "--real-split", "train",
                "--fake-dir", str(fake), "--features", "random", "--kid-subsets", "3", "--out", str(out),
                "--translator", "semst"]) == 0
    row = pd.read_csv(out).iloc[0]
    assert row["translator"] == "semst" and row["n_real"] == 8 and row["n_fake"] == 6
    assert row["kid_subset_size"] == 6 and np.isfinite(row["FID"]) and row["KIDx100"] == pytest.approx(100 * row["KID"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_inception_weights_is_a_clear_error(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("FID_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(InceptionWeightsError, match="--inception-weights PATH"):
        InceptionFeatures(None)
    with pytest.raises(InceptionWeightsError, match="does not exist.*pt_inception-2015-12-05"):
        InceptionFeatures(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(2)}, bad)
    with pytest.raises(InceptionWeightsError, match="not an Inception-V3 state dict"):
        InceptionFeatures(bad)
    real = _image_folder(tmp_path / "r", 2, 0, 0)
    out = tmp_path / "fid.csv"
    assert cli(["fid", "--real-dir", str(real), "--fake-dir", str(real), "--out", str(out)]) == 2
    assert "--inception-weights" in caplog.text and not out.exists()
    assert cli(["fid", "--real-dir", str(tmp_path / "none"), "--fake-dir", str(real), "--features", "random",
                "--out", str(out)]) == 2
    assert "does not exist" in caplog.text


def test_inception_loads_fid_layout_file(tmp_path, monkeypatch):
    """A state dict in the pytorch-fid / torch-fidelity layout (1008-way fc) loads with weights_only."""
    torch.manual_seed(0)
    model = build_fid_inception()
    for mod in model.modules():                                        # non-trivial BN statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_var.fill_(1.0)
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.normal_(mod.weight, std=0.05)
    path = tmp_path / "pt_inception.pth"
    torch.save(model.state_dict(), path)
    monkeypatch.setenv("FID_INCEPTION_WEIGHTS", str(path))
    feats = InceptionFeatures(None)
    assert feats.layout == "fid" and feats.dim == 2048 and feats.name == "inception-v3-fid"
    assert feats.model.Mixed_7c.pool == "max" and feats.model.Mixed_7b.pool == "avg"
    assert feats.input_size == (299, 299)
    feats.input_size = (75, 75)              # the smallest Inception input: keeps the CPU test fast
    images = torch.rand(2, 3, 40, 60) * 255
    with torch.inference_mode():
        out = feats(images)
        pool3 = torch.nn.Sequential(*[m for n, m in model.eval().named_children() if n not in ("fc", "dropout")])
        x = torch.nn.functional.interpolate(images, size=(75, 75), mode="bilinear", align_corners=False)
        expected = pool3(x / 255 * 2 - 1).flatten(1)                 # pytorch-fid: [0, 1] -> [-1, 1]
    assert out.shape == (2, 2048) and torch.isfinite(out).all() and out.std() > 0
    assert torch.allclose(out, expected, atol=1e-5)
    # the TF pooling differs from torchvision's: average pools exclude padding, the last block max-pools
    x = torch.rand(1, 2048, 8, 8)
    with torch.inference_mode():
        mine = model.Mixed_7c(x)
        model.Mixed_7c.pool = "avg"
        assert not torch.allclose(mine, model.Mixed_7c(x))


def test_fid_input_errors(tmp_path):
    with pytest.raises(FIDInputError, match="no images"):
        list_images(tmp_path)
    one = _image_folder(tmp_path / "one", 1, 0, 0)
    with pytest.raises(FIDInputError, match="at least 2"):
        fid_kid(list_images(one), list_images(one), RandomConvFeatures())
    stats = accumulate(list_images(one), RandomConvFeatures(dim=4))
    with pytest.raises(FIDInputError, match="at least 2 images"):
        stats.cov
