"""Tests of translators.networks: CUT generator taps, PatchGAN, PatchSampleF, ASPP scale attention."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from translators.losses import hdce_loss, hdce_weights, lsgan_loss, patchnce_loss, ts_loss
from translators.networks import (BlurDownsample, BlurUpsample, NLayerDiscriminator, PatchSampleF,
                                  ResnetBlock, ResnetGenerator, ScaleAttention, init_weights)

CUT_LAYERS = [0, 4, 8, 12, 16]


def _img(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def small_g() -> ResnetGenerator:
    torch.manual_seed(0)
    return init_weights(ResnetGenerator(ngf=8, n_blocks=3), "normal", 0.02)


# --------------------------------------------------------------------------- generator
def test_generator_output_shape_and_range(small_g):
    x = _img(2, 32, 48)
    y = small_g(x)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_cut_taps_at_nine_blocks():
    """Taps 0,4,8,12,16 (docs/reference.md §1.3): padded RGB, pre-norm conv at full res (2ngf), pre-norm
    conv at H/2 (4ngf), output of residual block 1 and block 5 (4ngf at H/4)."""
    g = ResnetGenerator(ngf=4, n_blocks=9)
    m = g.model
    assert isinstance(m[0], nn.ReflectionPad2d)
    assert isinstance(m[4], nn.Conv2d) and m[4].stride == (1, 1)
    assert isinstance(m[7], BlurDownsample) and isinstance(m[11], BlurDownsample)
    assert isinstance(m[8], nn.Conv2d)
    assert all(isinstance(m[i], ResnetBlock) for i in range(12, 21))
    assert isinstance(m[21], BlurUpsample) and isinstance(m[-1], nn.Tanh)
    assert g.bottleneck_index == 20
    x = _img(1, 32, 32)
    feats = g(x, CUT_LAYERS, encode_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(3, 38, 38), (8, 32, 32), (16, 16, 16), (16, 8, 8), (16, 8, 8)]
    torch.testing.assert_close(feats[0], F.pad(x, (3, 3, 3, 3), mode="reflect"))
    assert g.feature_channels(CUT_LAYERS) == [3, 8, 16, 16, 16]
    assert g.feature_strides(CUT_LAYERS) == [1, 1, 2, 4, 4]
    assert g.encoder_layers() == CUT_LAYERS


def test_generator_full_size_parameter_count():
    """ngf=64, 9 blocks: 11,378,179 parameters as computed for CUT's resnet_9blocks."""
    assert sum(p.numel() for p in ResnetGenerator().parameters()) == 11_378_179


def test_feature_channels_match_actual_features(small_g):
    layers = list(range(len(small_g.model)))
    feats = small_g(_img(1, 16, 16), layers, encode_only=True)
    assert [f.shape[1] for f in feats] == small_g.feature_channels(layers)
    assert small_g.encoder_layers() == [0, 4, 8, 12, 14]  # tap 16 lies in the decoder at 3 blocks
    with pytest.raises(ValueError, match="outside"):
        small_g.feature_channels([99])


def test_forward_with_features_is_one_consistent_pass(small_g):
    x = _img(2, 32, 32, seed=1)
    layers = small_g.encoder_layers()
    image, feats = small_g.forward_with_features(x, layers)
    torch.testing.assert_close(image, small_g(x))
    for a, b in zip(feats, small_g(x, layers, encode_only=True)):
        torch.testing.assert_close(a, b)
    # taps followed by an in-place ReLU are not overwritten (index 2 = norm, 3 = ReLU(inplace))
    pre_relu = small_g(x, [2], encode_only=True)[0]
    _, (tap,) = small_g.forward_with_features(x, [2])
    torch.testing.assert_close(tap, pre_relu)
    assert (tap < 0).any()
    enc = small_g.encode(x)
    assert enc.shape == (2, small_g.bottleneck_channels, 8, 8)
    torch.testing.assert_close(enc, small_g(x, [small_g.bottleneck_index], encode_only=True)[0])


def test_non_antialiased_variant_shapes():
    g = ResnetGenerator(ngf=4, n_blocks=2, antialias=False)
    x = _img(1, 16, 16)
    assert g(x).shape == x.shape
    # stride-2 convs shift the indices: pad, down-conv 1, down-conv 2, blocks 1..
    assert g.encoder_layers() == [0, 4, 7, 10, 11]
    assert g.feature_strides(g.encoder_layers()) == [1, 2, 4, 4, 4]
    assert g.feature_channels(g.encoder_layers()) == [3, 8, 16, 16, 16]


# --------------------------------------------------------------------------- discriminator
@pytest.mark.parametrize("size,out", [(64, 6), (256, 30)])
def test_patchgan_output_shape(size, out):
    d = NLayerDiscriminator(ndf=8)
    assert d(_img(1, size, size)).shape == (1, 1, out, out)


def test_patchgan_full_size_parameter_count():
    assert sum(p.numel() for p in NLayerDiscriminator().parameters()) == 2_764_737


# --------------------------------------------------------------------------- PatchSampleF
def test_patch_sampler_alignment_normalisation_and_all_positions(small_g):
    layers = small_g.encoder_layers()
    # gain 1 so the embeddings are far above the 1e-7 eps of the normalisation (CUT's gain 0.02 on
    # a gain-0.02 generator gives norms ~1e-5, where x / (|x| + 1e-7) is visibly below 1)
    net_f = PatchSampleF(small_g.feature_channels(layers), nc=16, init_gain=1.0)
    x = _img(2, 32, 32, seed=2)
    feats = small_g(x, layers, encode_only=True)
    emb, ids = net_f(feats, num_patches=10)
    assert [e.shape for e in emb] == [(20, 16)] * len(layers)
    for e in emb:
        torch.testing.assert_close(e.norm(dim=1), torch.ones(20), atol=1e-5, rtol=0)
    # reusing the ids gives the same rows; the rows are the MLP of the features at those positions
    emb2, ids2 = net_f(feats, patch_ids=ids)
    for a, b, i, j in zip(emb, emb2, ids, ids2):
        torch.testing.assert_close(a, b)
        assert torch.equal(i, j)
    l = 2
    f = feats[l]
    pos = ids[l]
    rows = f.flatten(2)[:, :, pos].permute(0, 2, 1).reshape(-1, f.shape[1])  # image-major
    direct = net_f.mlps[l](rows)
    torch.testing.assert_close(emb[l], direct / direct.norm(dim=1, keepdim=True), atol=1e-5, rtol=1e-4)
    # ids are valid distinct positions, shared across the batch
    assert len(set(pos.tolist())) == 10 and int(pos.max()) < f.shape[2] * f.shape[3]
    # num_patches=0: every position
    all_emb, all_ids = net_f(feats, num_patches=0)
    assert [e.shape[0] for e in all_emb] == [2 * t.shape[2] * t.shape[3] for t in feats]
    assert torch.equal(all_ids[0], torch.arange(feats[0].shape[2] * feats[0].shape[3]))
    # eager construction: parameters exist before any forward pass
    fresh = PatchSampleF([3, 8], nc=4)
    assert sum(p.numel() for p in fresh.parameters()) == (3 * 4 + 4 + 4 * 4 + 4) + (8 * 4 + 4 + 4 * 4 + 4)
    with pytest.raises(ValueError, match="channels"):
        fresh([torch.zeros(1, 5, 4, 4), torch.zeros(1, 8, 4, 4)])


def test_patch_sampler_generator_reproducible():
    net_f = PatchSampleF([4], nc=8)
    feat = [torch.randn(1, 4, 8, 8)]
    _, a = net_f(feat, 5, generator=torch.Generator().manual_seed(3))
    _, b = net_f(feat, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0])


# --------------------------------------------------------------------------- scale attention
def test_scale_attention_range_and_shape():
    head = ScaleAttention(16, mid_channels=8)
    m = head(torch.randn(2, 16, 8, 8) * 5, (32, 40))
    assert m.shape == (2, 1, 32, 40)
    assert m.min() > 0 and m.max() < 1
    even = ScaleAttention(16, mid_channels=8, kernel_size=4, proj_kernel=1, norm="instance")
    assert even.logits(torch.randn(1, 16, 6, 6)).shape == (1, 1, 6, 6)


def test_gradients_reach_generators_f_and_scale_head():
    """SemST composite step in miniature: global/local G and F, scale-map fusion, hDCE + TS + GAN."""
    torch.manual_seed(0)
    g_g, g_l = ResnetGenerator(ngf=4, n_blocks=2), ResnetGenerator(ngf=4, n_blocks=2)
    layers = g_g.encoder_layers()
    f_g = PatchSampleF(g_g.feature_channels(layers), nc=16)
    f_l = PatchSampleF(g_l.feature_channels(layers), nc=16)
    head = ScaleAttention(g_g.bottleneck_channels, mid_channels=8, dilations=(1, 2))
    d = NLayerDiscriminator(ndf=4, n_layers=2)
    for net in (g_g, g_l, f_g, f_l, head, d):
        init_weights(net, "xavier", 0.02)
    x_g, x_l = _img(1, 32, 32, 5), _img(1, 32, 32, 6)
    total = 0.0
    for g, f, x in ((g_g, f_g, x_g), (g_l, f_l, x_l)):
        fake, feat_k_map = g.forward_with_features(x, layers)  # input features + image, one pass
        q, ids = f(g(fake, layers, encode_only=True), num_patches=16)
        k, _ = f(feat_k_map, patch_ids=ids)
        for ql, kl in zip(q, k):
            total = total + hdce_loss(ql, kl, hdce_weights(kl, gamma=1.0)).mean() / len(q)
            total = total + patchnce_loss(ql, kl).mean() / len(q)
        total = total + ts_loss(k, q)
        if g is g_g:
            y_g, enc = fake, g.encode(x)
        else:
            y_l = fake
    m_s = head(enc, y_g.shape[-2:])
    fused = m_s * y_l + (1 - m_s) * y_g
    total = total + lsgan_loss(d(fused), True)
    total.backward()
    for name, net in (("G_g", g_g), ("G_l", g_l), ("F_g", f_g), ("F_l", f_l), ("scale", head)):
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert all(gr is not None for gr in grads), name
        assert sum(float(gr.abs().sum()) for gr in grads) > 0, name
        assert all(torch.isfinite(gr).all() for gr in grads), name


def test_blur_resampling_sizes_and_constants():
    x = torch.full((1, 2, 8, 6), 0.7)
    down, up = BlurDownsample(2), BlurUpsample(2)
    assert down(x).shape == (1, 2, 4, 3) and up(x).shape == (1, 2, 16, 12)
    torch.testing.assert_close(down(x), torch.full((1, 2, 4, 3), 0.7))
    torch.testing.assert_close(up(x), torch.full((1, 2, 16, 12), 0.7))
    assert not any(True for _ in down.parameters()) and "kernel" not in down.state_dict()
    # the blur really low-passes: a +-1 checkerboard (Nyquist) is attenuated
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1
    assert down(checker.expand(1, 2, 8, 8).contiguous()).abs().max() < 0.5


def test_pads_keep_bf16_and_blur_runs_in_float32_under_cpu_autocast():
    """CPU autocast would run reflection/replication pads in float32 (two casts per pad); ours keep
    the input dtype, exactly. The fixed blur filters run in float32 (oneDNN has no fast bf16
    depthwise kernels) on the same values."""
    from translators.networks.blocks import ReflectionPad2d, ReplicationPad2d
    x = torch.randn(1, 4, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for pad, mode in ((ReflectionPad2d(2), "reflect"), (ReplicationPad2d(1), "replicate")):
            y = pad(x)
            assert y.dtype == torch.bfloat16
            torch.testing.assert_close(y, F.pad(x.float(), pad.padding, mode=mode).bfloat16(), rtol=0, atol=0)
        down, up = BlurDownsample(4)(x), BlurUpsample(4)(x)
    assert down.dtype == up.dtype == torch.float32
    torch.testing.assert_close(down, BlurDownsample(4)(x.float()))
    torch.testing.assert_close(up, BlurUpsample(4)(x.float()))


def test_l2_normalize_fused_backward_matches_autograd():
    from translators.networks import l2_normalize
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    x[2] = 0.0  # a zero row: output 0, finite gradient
    x.requires_grad_(True)
    y = l2_normalize(x)
    ref = x / (x.norm(dim=1, keepdim=True) + 1e-7)
    torch.testing.assert_close(y, ref)
    w = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    (g,) = torch.autograd.grad(y, x, w)
    rows = [0, 1, 3, 4, 5]
    (g_ref,) = torch.autograd.grad(ref[rows], x, w[rows])
    torch.testing.assert_close(g[rows], g_ref[rows])
    assert torch.isfinite(g).all()
    assert torch.autograd.gradcheck(lambda t: l2_normalize(t[[0, 1, 3]], dim=1), (x,))
    low = torch.randn(4, 8).bfloat16().requires_grad_(True)
    out = l2_normalize(low)
    assert out.dtype == torch.float32
    (g_low,) = torch.autograd.grad(out.sum(), low)
    assert g_low.dtype == torch.bfloat16
