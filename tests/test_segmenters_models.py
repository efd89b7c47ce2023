"""DeepLab-V2 / FCN-8s models and configs: build at both presets, tiny training, head semantics, init weights."""
from __future__ import annotations

import importlib

import pytest
import torch

import segmenters  # noqa: F401  (stand-in + registration before mmseg)
from segmenters.checkpoint import build_segmentor, load_init_weights
from segmenters.configs import config_path, load_config

ARCHS = ("deeplabv2", "fcn8s")
CONTRACT_KEYS = ("model", "crop_size", "train_scale", "target_scale", "test_scale", "optim_wrapper",
                 "param_scheduler", "max_iters", "uda", "num_classes", "batch_size", "init_from", "init_strict")


def make_batch(n: int, h: int, w: int, seed: int = 0) -> dict:
    """A fixed, learnable batch: class = horizontal band (sky / building / road) with band colours."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for _ in range(n):
        label = torch.full((h, w), 2, dtype=torch.long)
        cut = h // 3 + int(torch.randint(-2, 3, (1,), generator=g))
        label[:cut] = 10
        label[2 * h // 3:] = 0
        colours = torch.tensor([[128, 64, 128]] * 19, dtype=torch.float32)
        colours[10] = torch.tensor([70, 130, 180.0])
        colours[2] = torch.tensor([70, 70, 70.0])
        img = colours[label].permute(2, 0, 1) + 10 * torch.randn(3, h, w, generator=g)
        inputs.append(img.clamp(0, 255).to(torch.uint8).flip(0))  # BGR like cv2-loaded images
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=label[None])
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", ("tiny", "paper"))
def test_config_defines_contract_keys(arch, preset):
    cfg = load_config(arch, preset)
    assert config_path(arch, preset).is_file()
    for key in CONTRACT_KEYS:
        assert key in cfg, f"{config_path(arch, preset).name} lacks {key}"
    assert cfg.arch == arch and cfg.preset == preset and cfg.num_classes == 19
    assert cfg.model.type == "EncoderDecoder"
    pre = cfg.model.data_preprocessor
    assert pre.type == "SegDataPreProcessor" and pre.bgr_to_rgb is True
    assert list(pre.mean) == [123.675, 116.28, 103.53] and tuple(pre.size) == tuple(cfg.crop_size)
    assert cfg.model.decode_head.num_classes == 19
    assert cfg.model.decode_head.loss_decode.avg_non_ignore is True
    assert cfg.uda.lambda_adv == {"deeplabv2": 1e-3, "fcn8s": 1e-4}[arch]
    if arch == "deeplabv2":
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys["decode_head"]["lr_mult"] == 10.0
        assert cfg.param_scheduler[0].type == "PolyLR" and cfg.param_scheduler[0].power == 0.9


def test_paper_configs_follow_the_recipes():
    dl = load_config("deeplabv2", "paper")
    assert dl.model.backbone.depth == 101 and tuple(dl.model.backbone.dilations) == (1, 1, 2, 4)
    assert tuple(dl.model.backbone.strides) == (1, 2, 1, 1) and dl.model.backbone.contract_dilation
    assert tuple(dl.model.decode_head.dilations) == (6, 12, 18, 24)
    assert dl.optim_wrapper.optimizer == dict(type="SGD", lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
    assert tuple(dl.train_scale) == (1280, 720) and tuple(dl.target_scale) == (1024, 512)
    assert dl.uda.d_optimizer.lr == 1e-4 and tuple(dl.uda.d_optimizer.betas) == (0.9, 0.99)
    fc = load_config("fcn8s", "paper")
    assert fc.optim_wrapper.optimizer.type == "Adam" and fc.optim_wrapper.optimizer.lr == 1e-5
    assert tuple(fc.optim_wrapper.optimizer.betas) == (0.9, 0.99)
    assert tuple(fc.model.backbone.widths) == (64, 128, 256, 512, 512)


@pytest.mark.parametrize("arch,low,high", [("deeplabv2", 42e6, 46e6), ("fcn8s", 130e6, 138e6)])
def test_paper_models_build_count_and_trace(arch, low, high):
    """Paper scale built on the meta device (no memory): parameter count and a shape-only forward."""
    cfg = load_config(arch, "paper")
    model = build_segmentor(cfg.model, device="meta")
    n_params = sum(p.numel() for p in model.parameters())
    assert low < n_params < high, f"{arch}: {n_params / 1e6:.2f}M parameters"
    model.eval()
    x = torch.empty(1, 3, 256, 512, device="meta")
    with torch.no_grad():
        feats = model.extract_feat(x)
        logits = model.decode_head(feats)
    expected_stride = 8
    assert tuple(logits.shape) == (1, 19, 256 // expected_stride, 512 // expected_stride)


def test_resnet101_dlv2_forward_small_input():
    """One real forward of the paper-scale DeepLab-V2 at a small input (output stride 8)."""
    model = build_segmentor(load_config("deeplabv2", "paper").model).eval()
    with torch.no_grad():
        out = model.decode_head(model.extract_feat(torch.randn(1, 3, 64, 64)))
    assert out.shape == (1, 19, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_learns_fixed_batch(arch):
    from mmengine.optim import build_optim_wrapper

    torch.manual_seed(0)
    cfg = load_config(arch, "tiny")
    model = build_segmentor(cfg.model)
    model.init_weights()
    model.train()
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    data = make_batch(2, 32, 64)
    losses = []
    for _ in range(6):
        log_vars = model.train_step(data, wrapper)
        losses.append(float(log_vars["loss"].detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < 0.7 * losses[0], losses
    if arch == "deeplabv2":  # 10x head lr from paramwise_cfg
        lrs = {g["lr"] for g in wrapper.optimizer.param_groups}
        assert max(lrs) == pytest.approx(10 * min(lrs))


def test_dlv2_head_is_sum_of_branches_and_two_branch_variant():
    from mmseg.registry import MODELS

    torch.manual_seed(0)
    head = MODELS.build(dict(type="DLV2Head", in_channels=16, in_index=3, num_classes=5))
    head.init_weights()
    assert not hasattr(head, "conv_seg")
    assert [m.conv.dilation[0] for m in head.aspp_modules] == [6, 12, 18, 24]
    assert all(m.conv.kernel_size == (3, 3) and not m.with_norm and not m.with_activation
               and m.conv.bias is not None for m in head.aspp_modules)
    feats = [torch.randn(2, 4, 9, 11)] * 3 + [torch.randn(2, 16, 9, 11)]
    branches = head.branch_outputs(feats)
    out = head(feats)
    assert out.shape == (2, 5, 9, 11)
    assert torch.allclose(out, sum(branches), atol=1e-6)
    assert torch.allclose(out, sum(torch.nn.functional.conv2d(feats[3], m.conv.weight, m.conv.bias,
                                                              padding=d, dilation=d)
                                   for m, d in zip(head.aspp_modules, (6, 12, 18, 24))), atol=1e-5)

    two = MODELS.build(dict(type="DLV2Head", in_channels=16, in_index=3, num_classes=5, dilations=(6, 12)))
    two.aspp_modules.load_state_dict({k: v for k, v in head.aspp_modules.state_dict().items()
                                      if k.split(".")[0] in ("0", "1")})
    assert len(two.aspp_modules) == 2
    assert torch.allclose(two(feats), branches[0] + branches[1], atol=1e-6)
    with pytest.raises(ValueError, match="dropout_ratio"):
        MODELS.build(dict(type="DLV2Head", in_channels=16, num_classes=5, dropout_ratio=0.1))


def test_fcn8s_output_matches_input_size_for_odd_sizes():
    cfg = load_config("fcn8s", "tiny")
    model = build_segmentor(cfg.model)
    model.init_weights()
    for p in model.decode_head.parameters():  # zero-init scores would give a constant map
        torch.nn.init.normal_(p, std=0.1)
    model.eval()
    for h, w in ((37, 53), (64, 128), (100, 30)):
        x = torch.randn(1, 3, h, w)
        pool3, pool4, fc7 = model.extract_feat(x)
        assert pool3.shape[-2:] == (-(-h // 8), -(-w // 8)) and fc7.shape[-2:] == (-(-h // 32), -(-w // 32))
        out = model.encode_decode(x, [dict(img_shape=(h, w))])
        assert out.shape == (1, 19, h, w)
    # skip fusion: with score_pool3 zeroed, pool3 does not influence the output
    head = model.decode_head
    feats = [torch.randn(1, 32, 8, 16), torch.randn(1, 64, 4, 8), torch.randn(1, 128, 2, 4)]
    torch.nn.init.zeros_(head.score_pool3.weight)
    a = head(feats)
    b = head([torch.randn_like(feats[0])] + feats[1:])
    assert torch.allclose(a, b)


def test_fcn8s_pool_scales_are_applied():
    from mmseg.registry import MODELS

    head = MODELS.build(dict(type="FCN8sHead", in_channels=(4, 4, 4), num_classes=3,
                             pool4_scale=0.01, pool3_scale=1e-4))
    for conv in (head.conv_seg, head.score_pool4, head.score_pool3):
        torch.nn.init.ones_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    zero = torch.zeros(1, 4, 2, 2)
    pool4 = torch.ones(1, 4, 2, 2)
    out = head([torch.zeros(1, 4, 4, 4), pool4, torch.zeros(1, 4, 1, 1)])
    assert torch.allclose(out, torch.full((1, 3, 4, 4), 4 * 0.01))
    out = head([torch.ones(1, 4, 4, 4), zero, torch.zeros(1, 4, 1, 1)])
    assert torch.allclose(out, torch.full((1, 3, 4, 4), 4 * 1e-4))


def test_registration_survives_reimport():
    from mmseg.registry import MODELS

    for name in ("segmenters.models.dlv2_head", "segmenters.models.vgg", "segmenters.models.fcn8s_head"):
        importlib.reload(importlib.import_module(name))
    assert MODELS.get("DLV2Head") is importlib.import_module("segmenters.models.dlv2_head").DLV2Head
    assert MODELS.get("FCNVGG") is not None and MODELS.get("FCN8sHead") is not None


def test_load_config_cfg_options():
    cfg = load_config("deeplabv2", "tiny", ["max_iters=7", "param_scheduler.0.end=7", "uda.lambda_adv=0.5",
                                            "train_scale=(64,32)"])
    assert cfg.max_iters == 7 and cfg.param_scheduler[0].end == 7 and cfg.uda.lambda_adv == 0.5
    assert tuple(cfg.train_scale) == (64, 32)
    cfg = load_config("fcn8s", "tiny", {"model.decode_head.pool3_scale": 0.5})
    assert cfg.model.decode_head.pool3_scale == 0.5
    with pytest.raises(KeyError, match="uda.lamda_adv"):
        load_config("deeplabv2", "tiny", ["uda.lamda_adv=1"])
    with pytest.raises(KeyError, match="model.backbone.widht"):
        load_config("fcn8s", "tiny", {"model.backbone.widht": 3})
    with pytest.raises(KeyError, match="param_scheduler.3.end"):
        load_config("fcn8s", "tiny", ["param_scheduler.3.end=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config("fcn8s", "tiny", ["max_iters"])
    with pytest.raises(ValueError, match="arch"):
        config_path("pspnet", "tiny")


def test_init_weights_strict_and_partial(tmp_path):
    torch.manual_seed(0)
    cfg = load_config("deeplabv2", "tiny")
    src = build_segmentor(cfg.model)
    src.init_weights()
    dst = build_segmentor(cfg.model)

    full = tmp_path / "full.pth"
    torch.save({"state_dict": src.state_dict()}, full)
    report = load_init_weights(dst, full)
    assert not report["missing"] and not report["unexpected"]
    assert torch.equal(dst.backbone.stem[0].weight, src.backbone.stem[0].weight)

    backbone_only = tmp_path / "backbone.pth"
    torch.save(src.backbone.state_dict(), backbone_only)  # ImageNet-style backbone file: the head keeps its init
    report = load_init_weights(build_segmentor(cfg.model), backbone_only)
    assert report["loaded"] and all(k.startswith("backbone.") for k in report["loaded"]) and not report["missing"]
    assert report["kept"] and all(k.startswith("decode_head.") for k in report["kept"])
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in src.backbone.state_dict().items() if not k.startswith("layer4.")}, partial)
    with pytest.raises(ValueError, match=r"partial\.pth.*missing.*backbone\.layer4"):
        load_init_weights(build_segmentor(cfg.model), partial)
    report = load_init_weights(build_segmentor(cfg.model), partial, strict=False)
    assert report["loaded"] and all(k.startswith("backbone.layer4.") for k in report["missing"])

    other = tmp_path / "fcn.pth"
    torch.save(build_segmentor(load_config("fcn8s", "tiny").model).state_dict(), other)
    with pytest.raises(ValueError, match=r"fcn\.pth.*(unexpected|no parameter)"):
        load_init_weights(dst, other)

    wrong_classes = tmp_path / "c5.pth"
    sd = src.state_dict()
    sd = {k: (v[:5] if k.startswith("decode_head") else v) for k, v in sd.items()}
    torch.save(sd, wrong_classes)
    with pytest.raises(ValueError, match=r"c5\.pth.*mismatched.*decode_head"):
        load_init_weights(dst, wrong_classes)

    not_weights = tmp_path / "junk.pth"
    torch.save({"lr": 0.1}, not_weights)
    with pytest.raises(ValueError, match="junk.pth.*not a state dict"):
        load_init_weights(dst, not_weights)
