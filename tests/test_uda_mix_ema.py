"""EMA teacher update, ClassMix and the DACS strong augmentation (segmenters/uda/ema.py, mix.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segmenters.uda.ema import ema_alpha, ema_update
import torchvision.transforms.v2.functional as TF

from segmenters.uda.mix import blur_kernel_size, class_mix_masks, gaussian_blur, mix, strong_transform


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    net.train()
    net(torch.randn(8, 3))  # non-trivial running stats and num_batches_tracked = 1
    return net


@pytest.mark.parametrize("t, expected", [(0, 0.0), (1, 0.5), (3, 0.75), (999, 0.999), (1000, 0.999), (10**6, 0.999)])
def test_ema_alpha_schedule_and_cap(t, expected):
    assert ema_alpha(t, 0.999) == pytest.approx(expected)
    assert ema_alpha(None, 0.999) == 0.999  # fixed alpha (ProDA)


@pytest.mark.parametrize("t", [0, 4, 5000, None])
def test_ema_update_matches_formula(t):
    teacher, student = _net(0), _net(1)
    student(torch.randn(8, 3))  # student has seen 2 batches
    before = copy.deepcopy(teacher.state_dict())
    alpha = ema_update(teacher, student, t, alpha_max=0.999, buffers="ema")
    assert alpha == pytest.approx(ema_alpha(t))
    s = student.state_dict()
    for name, value in teacher.state_dict().items():
        if value.is_floating_point():
            expected = alpha * before[name] + (1 - alpha) * s[name]
            torch.testing.assert_close(value, expected)
        else:  # num_batches_tracked is copied, not averaged
            assert torch.equal(value, s[name])
    if t == 0:  # alpha 0: the teacher becomes a copy of the student
        for name, value in teacher.state_dict().items():
            torch.testing.assert_close(value, s[name].to(value.dtype))


def test_ema_buffer_modes_and_mismatch():
    teacher, student = _net(0), _net(1)
    t_bn_before = teacher[1].running_mean.clone()
    ema_update(teacher, student, None, buffers="none")
    assert torch.equal(teacher[1].running_mean, t_bn_before)  # SePiCo: parameters only
    ema_update(teacher, student, None, buffers="copy")
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)  # ProDA: buffers copied
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(3, 4), nn.Sequential(nn.Linear(3, 4)), 1)
    with pytest.raises(ValueError, match="shape"):
        ema_update(nn.Linear(3, 4), nn.Linear(3, 5), 1)


def _structured_pair(b: int = 3, h: int = 24, w: int = 32):
    """Source/target whose pixel colours encode (domain, label): channel 0 = 10 * label, channel 1 =
    0 on source / 200 on target, so every mixed pixel tells where it came from."""
    g = torch.Generator().manual_seed(0)
    src_lbl = torch.randint(0, 7, (b, h // 4, w // 4), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    src_lbl[:, :2, :5] = 255  # ignored source pixels
    trg_lbl = torch.randint(0, 19, (b, h, w), generator=g)
    src_img = torch.stack([src_lbl.float().clamp(max=25) * 10, torch.zeros(b, h, w), torch.full((b, h, w), 50.0)], 1)
    trg_img = torch.stack([trg_lbl.float() * 10, torch.full((b, h, w), 200.0), torch.full((b, h, w), 50.0)], 1)
    return src_img, src_lbl, trg_img, trg_lbl


def test_classmix_keeps_labels_and_weights_aligned_with_pixels():
    src_img, src_lbl, trg_img, trg_lbl = _structured_pair()
    g = torch.Generator().manual_seed(3)
    masks = class_mix_masks(src_lbl, "half", generator=g)
    assert masks.shape == (3, 1, 24, 32) and masks.dtype == torch.float32
    mixed_img = mix(masks, src_img, trg_img)
    mixed_lbl = mix(masks, src_lbl, trg_lbl)
    trg_weight = torch.full(trg_lbl.shape, 0.4)
    mixed_w = mix(masks, torch.ones_like(trg_weight), trg_weight)
    assert mixed_lbl.dtype == src_lbl.dtype
    from_source = mixed_img[:, 1] == 0
    # every mixed pixel's label (and weight) is the one of the image its colour came from
    assert torch.equal(mixed_lbl[from_source], src_lbl[from_source])
    assert torch.equal(mixed_lbl[~from_source], trg_lbl[~from_source])
    assert torch.equal((mixed_img[:, 0] / 10).round().long()[~from_source], mixed_lbl[~from_source])
    assert torch.all(mixed_w[from_source] == 1.0) and torch.all(mixed_w[~from_source] == 0.4)
    # ignored source pixels are never pasted; whole classes are pasted; ceil(n/2) of them
    assert not from_source[:, :2, :5].any()
    for i in range(3):
        present = [c for c in torch.unique(src_lbl[i]).tolist() if c != 255]
        picked = [c for c in present if from_source[i][src_lbl[i] == c].all()]
        partial = [c for c in present if from_source[i][src_lbl[i] == c].any() and c not in picked]
        assert not partial
        assert len(picked) == (len(present) + 1) // 2


def test_class_mix_masks_deterministic_and_counts():
    lbl = torch.arange(6).repeat_interleave(4).view(1, 4, 6).repeat(2, 1, 1)
    a = class_mix_masks(lbl, "half", torch.Generator().manual_seed(5))
    b = class_mix_masks(lbl, "half", torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    two = class_mix_masks(lbl, 2, torch.Generator().manual_seed(1))
    assert [len(torch.unique(lbl[i][two[i, 0].bool()])) for i in range(2)] == [2, 2]
    assert class_mix_masks(torch.full((1, 4, 4), 255), "half").sum() == 0
    with pytest.raises(ValueError, match="num_classes_to_pick"):
        class_mix_masks(lbl, "third")


def test_strong_transform_normalisation_determinism_and_ranges():
    g = torch.Generator().manual_seed(0)
    raw = torch.rand(4, 3, 20, 30, generator=g) * 255
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    normed = (raw - m) / s
    # no jitter (u > 1 never), no blur: denormalise -> normalise is the identity
    same = strong_transform(normed, torch.Generator().manual_seed(1), mean, std, color_jitter_p=1.0, blur=False)
    torch.testing.assert_close(same, normed, atol=1e-4, rtol=1e-4)
    # same generator state -> same output; jitter always on -> changed, still valid 0..255 images
    a = strong_transform(raw, torch.Generator().manual_seed(7), color_jitter_p=-1.0)
    b = strong_transform(raw, torch.Generator().manual_seed(7), color_jitter_p=-1.0)
    assert torch.equal(a, b)
    assert (a - raw).abs().mean() > 1.0 and a.min() >= 0 and a.max() <= 255
    c = strong_transform(normed, torch.Generator().manual_seed(7), mean, std, color_jitter_p=-1.0)
    torch.testing.assert_close(c * s + m, a, atol=1e-3, rtol=1e-4)  # same augmentation in both conventions


def test_strong_transform_blur_is_per_image_with_dacs_kernel():
    assert [blur_kernel_size(n) for n in (640, 512, 128, 64, 10, 3)] == [63, 51, 13, 7, 1, 1]
    # the separable blur is torchvision's 2-D Gaussian blur (same kernel, reflect padding)
    x = torch.rand(2, 3, 40, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gaussian_blur(x, (5, 7), 0.9), TF.gaussian_blur(x, [7, 5], [0.9, 0.9]))
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float() * 255
    imgs = checker.expand(16, 3, 32, 32).clone()
    out = strong_transform(imgs, torch.Generator().manual_seed(0), color_jitter_p=1.0, blur=True)
    blurred = (out - imgs).abs().amax(dim=(1, 2, 3)) > 1e-2  # above the /255 *255 round-off
    assert torch.all(out.std(dim=(1, 2, 3)) <= imgs.std(dim=(1, 2, 3)) + 1e-3)  # blur only smooths
    assert 3 <= int(blurred.sum()) <= 13  # probability 0.5 per image
