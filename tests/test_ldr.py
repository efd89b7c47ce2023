"""Label-driven reconstruction (segmenters/uda/ldr.py, segmenters/uda/ldr_parts.py) and the shared
pix2pixHD blocks it uses (nets/pix2pixhd.py, nets/vgg.py, nets/losses.py): Boltzmann softmax, pix2pixHD
loss weights, the LDR segmentor's four-optimiser train_step, its registration and the CLI."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision

import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS
from nets.losses import feature_matching_loss, lsgan_multiscale, perceptual_loss
from nets.pix2pixhd import GlobalGenerator, MultiscaleDiscriminator
from nets.vgg import VGG_LAYER_WEIGHTS, VGG19Features, vgg19_features_layers
from segmenters import uda as seg_uda
from segmenters.configs import load_config
from segmenters.datasets import UDADataset
from segmenters.uda import TrainInputs
from segmenters.uda.base import UDAOptimWrapperConstructor
from segmenters.uda.ldr import LDR, ldr_params, one_hot_labels
from segmenters.uda.ldr_parts import boltzmann_softmax, load_vgg19_features

SMALL = ["crop_size=(32,64)", "model.data_preprocessor.size=(32,64)", "train_scale=(64,32)",
         "target_scale=(64,32)", "test_scale=(64,32)", "batch_size=1", "log_interval=1"]


# ------------------------------------------------------------------ Boltzmann softmax (Eq. 3)
def test_boltzmann_softmax_tends_to_one_hot_and_stays_differentiable():
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 4, 4) * 3
    hard = torch.nn.functional.one_hot(logits.argmax(1), 19).permute(0, 3, 1, 2).float()
    errs = [(boltzmann_softmax(logits, tau) - hard).abs().max().item() for tau in (1.0, 0.1, 0.01, 0.001)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-6 and errs[0] > 0.1
    # huge logits / tau do not overflow (max subtraction, float32) even in half precision input
    big = boltzmann_softmax((logits * 100).half(), 1e-3)
    assert big.dtype == torch.float32 and torch.isfinite(big).all() and torch.allclose(big.sum(1), torch.ones(2, 4, 4))
    # non-tied logits with a small margin: finite, non-zero gradient at tau = 0.001
    z = torch.tensor([[0.0, 0.004, -0.01], [0.02, 0.0, 0.013]]).view(2, 3, 1, 1).requires_grad_(True)
    omega = boltzmann_softmax(z, 1e-3)
    (omega * torch.arange(3.0).view(1, 3, 1, 1)).sum().backward()
    assert torch.isfinite(z.grad).all() and (z.grad.abs().amax(1) > 1e-3).all()
    with pytest.raises(ValueError, match="tau"):
        boltzmann_softmax(z, 0.0)


def test_one_hot_labels_zero_on_ignore():
    lab = torch.tensor([[[0, 2], [255, 1]]])
    oh = one_hot_labels(lab, 3)
    assert oh.shape == (1, 3, 2, 2) and oh[0, :, 1, 0].sum() == 0 and oh[0, 2, 0, 1] == 1


# ------------------------------------------------------------------ pix2pixHD blocks and loss weights
def test_generator_and_multiscale_discriminator_shapes():
    g = GlobalGenerator(19, 3, ngf=4, n_downsample=2, n_blocks=1)
    y = g(torch.rand(1, 19, 16, 24))
    assert y.shape == (1, 3, 16, 24) and y.abs().max() <= 1
    with pytest.raises(ValueError, match="multiple of 4"):
        g(torch.rand(1, 19, 10, 24))
    d = MultiscaleDiscriminator(22, ndf=4, n_layers=2, num_D=3)
    out = d(torch.rand(1, 22, 32, 64))
    assert len(out) == 3 and all(len(f) == 4 for f in out)          # n_layers + 2 outputs per scale
    assert out[1][-1].shape[-1] < out[0][-1].shape[-1]               # coarser scale, smaller map
    sn = MultiscaleDiscriminator(3, ndf=4, n_layers=1, num_D=1, spectral=True)
    assert any("parametrizations" in k for k in sn.state_dict())


def test_feature_matching_weights_are_pix2pixhd():
    # two scales, three intermediate layers each (n_layers = 2) + the score map (ignored)
    real = [[torch.zeros(1, 1, 2, 2)] * 3 + [torch.zeros(1, 1, 1, 1)] for _ in range(2)]
    fake = [[torch.ones(1, 1, 2, 2)] * 3 + [torch.full((1, 1, 1, 1), 9.0)] for _ in range(2)]
    # per layer: lambda * 4/(n_layers+1) / num_D = 10 * 4/3 / 2; 6 layers of |1 - 0| = 1
    assert math.isclose(feature_matching_loss(real, fake, 10.0).item(), 6 * 10 * (4 / 3) / 2, rel_tol=1e-6)
    r = [[t.clone().requires_grad_(True) for t in s] for s in real]
    f = [[t.clone().requires_grad_(True) for t in s] for s in fake]
    feature_matching_loss(r, f, 1.0).backward()  # the real side is a detached target
    assert all(t.grad is None for s in r for t in s) and f[0][0].grad is not None and f[0][-1].grad is None
    assert lsgan_multiscale(fake, True).item() == pytest.approx(2 * 64.0)


def test_vgg_layer_weights_and_slices():
    assert VGG_LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    torch.manual_seed(0)
    vgg = VGG19Features()  # random weights for the test
    assert [len(s) for s in vgg.slices] == [2, 5, 5, 9, 9]
    assert all(isinstance(s[-1], torch.nn.ReLU) for s in vgg.slices)
    assert not any(p.requires_grad for p in vgg.parameters())
    feats = [torch.zeros(1, 1, 1, 1)] * 5
    ones = [torch.ones(1, 1, 1, 1)] * 5
    assert math.isclose(perceptual_loss(ones, feats).item(), sum(VGG_LAYER_WEIGHTS), rel_tol=1e-6)
    one_layer = [torch.zeros(1, 1, 1, 1)] * 3 + [torch.ones(1, 1, 1, 1)] + [torch.zeros(1, 1, 1, 1)]
    assert math.isclose(perceptual_loss(one_layer, feats).item(), 1 / 4, rel_tol=1e-6)
    x = torch.rand(1, 3, 32, 32, requires_grad=True) * 2 - 1
    f = vgg(x)
    assert [t.shape[1] for t in f] == [64, 128, 256, 512, 512] and f[-1].shape[-1] == 2


def test_load_vgg19_weights_file(tmp_path):
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])  # = vgg19().features
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)  # torchvision file layout
    vgg = load_vgg19_features(path)
    assert torch.equal(vgg.slices[0][0].weight, features[0].weight)
    assert torch.equal(vgg.slices[4][-2].weight, features[28].weight)
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        load_vgg19_features(bad)
    with pytest.raises(FileNotFoundError, match="uda.vgg19_weights"):
        load_vgg19_features(tmp_path / "missing.pth")


# ------------------------------------------------------------------ the LDR segmentor
def _setup(tiny_prepared, arch: str, ldr: dict | None = None, vgg: Path | None = None):
    options = list(SMALL)
    cfg = load_config(arch, "tiny", options)
    if ldr is not None:
        cfg.uda["ldr"] = ldr
    if vgg is not None:
        cfg.uda["vgg19_weights"] = str(vgg)
    inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"])
    method = LDR()
    with DefaultScope.overwrite_default_scope("mmseg"):
        torch.manual_seed(0)
        model = MODELS.build(method.model(cfg, inputs))
        model.init_weights()
        optim = UDAOptimWrapperConstructor(
            {k: v for k, v in method.optim_wrapper(cfg).items() if k != "constructor"})(model)
        spec = method.train_dataset(cfg, inputs)
        data = UDADataset(spec["source"], spec["target"], seed=spec["seed"])
        batch = pseudo_collate([data[0]])
    return cfg, model, optim, batch


def test_ldr_params_defaults_and_errors(tiny_prepared):
    cfg = load_config("fcn8s", "tiny", SMALL)
    p = ldr_params(cfg)
    assert p["tau"] == 1e-3 and p["beta"] == 10.0 and p["alpha"] == 1e-2 and p["num_D"] == 3
    assert ldr_params(load_config("deeplabv2", "paper"))["alpha"] == 1e-3
    assert ldr_params(load_config("deeplabv2", "paper"))["n_blocks"] == 9
    cfg.uda["ldr"] = {"taus": 1}
    with pytest.raises(ValueError, match="uda.ldr"):
        ldr_params(cfg)


def test_ldr_train_step_updates_all_four_networks(tiny_prepared, tmp_path):
    torch.manual_seed(0)
    vgg_path = tmp_path / "vgg19.pth"
    torch.save(vgg19_features_layers().state_dict(), vgg_path)  # features-only layout, random weights
    cfg, model, optim, batch = _setup(tiny_prepared, "deeplabv2", ldr={"recon_warmup_iters": 1}, vgg=vgg_path)
    assert set(optim.keys()) == {"segmentor", "discriminator", "reconstructor", "recon_discriminator"}
    owned = {k: {id(p) for g in optim[k].optimizer.param_groups for p in g["params"]} for k in optim.keys()}
    assert not owned["segmentor"] & (owned["reconstructor"] | owned["recon_discriminator"] | owned["discriminator"])
    assert isinstance(optim["reconstructor"].optimizer, torch.optim.Adam)
    assert optim["reconstructor"].optimizer.defaults["betas"] == (0.5, 0.999)
    assert not any("_vgg" in k or "slices" in k for k in model.state_dict())  # VGG is not checkpointed

    def snapshot():
        return {k: [p.detach().clone() for p in getattr(model, k).parameters()][:2]
                for k in ("backbone", "reconstructor", "recon_discriminator", "discriminator")}

    model.train()
    before = snapshot()
    logs = model.train_step(batch, optim)              # warm-up step: M pre-trained from source labels
    assert "src.loss_recon_fm" in logs and "trg.loss_recon_fm" not in logs
    logs = model.train_step(batch, optim)              # joint step: reconstruction of both domains
    after = snapshot()
    for name in before:
        assert any(not torch.equal(a, b) for a, b in zip(before[name], after[name])), name
    for key in ("src.loss_recon_adv", "src.loss_recon_fm", "src.loss_recon_vgg", "trg.loss_recon_vgg",
                "trg.loss_adv", "disc.loss_d", "recon_disc.loss_d", "loss"):
        assert key in logs and math.isfinite(float(logs[key])), key
    assert int(model.ldr_iter) == 2


def test_ldr_without_vgg_weights_warns_and_drops_the_perceptual_term(tiny_prepared, caplog):
    with caplog.at_level("WARNING"):
        cfg, model, optim, batch = _setup(tiny_prepared, "fcn8s")
    assert "uda.vgg19_weights" in caplog.text and "target images" in caplog.text
    model.train()
    logs = model.train_step(batch, optim)
    assert "src.loss_recon_fm" in logs and not any("vgg" in k for k in logs)
    assert all(math.isfinite(float(v)) for v in logs.values())


def test_ldr_reconstruction_gradient_reaches_the_segmenter(tiny_prepared):
    cfg, model, optim, batch = _setup(tiny_prepared, "fcn8s", ldr={"tau": 1.0})
    model.train()
    src, _ = model.preprocess_pair(batch)
    _, logits = model.seg_forward(src["inputs"])
    omega, image = model.recon_inputs(logits, src["inputs"])
    losses, _ = model.reconstruction_losses(omega, image, "src")
    sum(losses.values()).backward()
    grads = [p.grad for p in model.decode_head.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert image.min() >= -1 and image.max() <= 1


def test_ldr_cli_trains_and_writes_final(tiny_prepared, tmp_path):
    # always registered by the package import: a de-registration fails here instead of skipping
    assert isinstance(seg_uda.METHODS.get("ldr"), LDR)
    from segmenters.loader import load_segmenter
    from segmenters.train import build_parser, train

    args = build_parser().parse_args(
        ["--arch", "fcn8s", "--preset", "tiny", "--uda", "ldr", "--source", str(tiny_prepared["source"]),
         "--target", str(tiny_prepared["target"]), "--work-dir", str(tmp_path / "w"), "--max-iters", "2",
         "--workers", "0", "--cfg-options", *SMALL])
    res = train(args)
    seg = load_segmenter(res.final)
    assert seg.meta["uda"] == "ldr" and res.end_iter == 2
