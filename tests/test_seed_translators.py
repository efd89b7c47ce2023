"""The seed translators: CycleGAN (BDL), the SPADE-guided translator, and their building blocks
(SPADE denormalisation, symmetric cross-entropy, cycle losses, image pool); their registration and CLI runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import translators.config as tconfig
from translators.config import ConfigError, TranslatorConfig
from translators.losses.cycle import cycle_loss, identity_loss, latent_cycle_loss
from translators.losses.sce import symmetric_cross_entropy
from translators.losses.semantic import bdl_semantic_losses
from translators.methods.cyclegan import CycleGAN, CycleGANConfig, ImagePool
from translators.methods.spade_guided import SpadeConfig, SpadeGuided
from translators.networks.spade import SPADE, ContentEncoder, LayerNorm, SpadeDecoder
from translators.train import make_adam

CONFIGS = Path(__file__).resolve().parents[1] / "translators" / "configs"


@pytest.fixture(scope="session")
def guide_segmenter(tmp_path_factory) -> Path:
    """A tiny frozen FCN-8s written with segmenters.checkpoint.save_final (random weights)."""
    import segmenters  # noqa: F401
    from segmenters.checkpoint import build_segmentor, save_final
    from segmenters.configs import load_config

    torch.manual_seed(0)
    cfg = load_config("fcn8s", "tiny")
    model = build_segmentor(cfg.model)
    model.init_weights()
    for p in model.decode_head.parameters():  # FCN-8s scores are zero-initialised: make them informative
        nn.init.normal_(p, std=0.05)
    meta = dict(arch="fcn8s", preset="tiny", num_classes=19, uda="source_only", iter=1,
                test_scale=cfg.test_scale, model_cfg=cfg.model)
    return save_final(model, meta, tmp_path_factory.mktemp("guide") / "final.pth")


def tiny_cfg(method: str) -> TranslatorConfig:
    cfg = TranslatorConfig(method=method)
    m = cfg.model
    m.ngf, m.ndf, m.n_blocks, m.n_layers_D, m.antialias, m.init_type = 8, 8, 2, 2, False, "normal"
    cfg.data.crop = 32
    cfg.cyclegan = CycleGANConfig(pool_size=2)
    cfg.spade = SpadeConfig(n_res=1, spade_hidden=16, num_D=2)
    return cfg


def batch(seed: int = 0, n: int = 1, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"A_l": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "B_l": torch.rand(n, 3, size, size, generator=g) * 2 - 1}


def optimisers(method, lr=2e-4, betas=(0.5, 0.999)):
    return {k: make_adam(p, lr, betas) for k, p in method.param_groups().items()}


SCALER = torch.amp.GradScaler("cpu", enabled=False)


# ------------------------------------------------------------------ SPADE blocks
def test_spade_denormalisation_shape_and_one_plus_gamma_form():
    torch.manual_seed(0)
    layer = SPADE(channels=6, label_nc=5, hidden=128)
    assert layer.mlp_shared[0].out_channels == 128                   # shared hidden conv of width 128
    x, m = torch.randn(2, 6, 8, 12), torch.randn(2, 5, 32, 48)       # guidance resized to the activation
    out = layer(x, m)
    assert out.shape == x.shape
    gamma, beta = layer.modulation(x, m)
    assert gamma.shape == beta.shape == x.shape
    inorm = nn.functional.instance_norm(x)
    assert torch.allclose(out, inorm * (1 + gamma) + beta, atol=1e-5)
    for conv in (layer.mlp_gamma, layer.mlp_beta):                   # gamma = beta = 0 -> plain IN
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    assert torch.allclose(layer(x, m), inorm, atol=1e-5)
    nn.init.constant_(layer.mlp_gamma.bias, 1.0)                      # gamma = 1 -> 2 * IN(x)
    assert torch.allclose(layer(x, m), 2 * inorm, atol=1e-5)
    nearest = SPADE(6, 5, 16, seg_interp="nearest")
    assert nearest(x, m).shape == x.shape


def test_encoder_decoder_shapes_layernorm_and_spectral_norm():
    torch.manual_seed(0)
    e = ContentEncoder(3, ngf=4, n_downsample=2, n_res=1)
    g = SpadeDecoder(label_nc=5, ngf=4, n_downsample=2, n_res=1, hidden=8)
    z = e(torch.rand(2, 3, 16, 24))
    assert z.shape == (2, 16, 4, 6)
    y = g(z, torch.randn(2, 5, 16, 24))
    assert y.shape == (2, 3, 16, 24) and y.abs().max() <= 1
    assert any("parametrizations" in k for k in g.state_dict()) and any("parametrizations" in k for k in e.state_dict())
    assert not any(k.startswith("res.0.norm_0.mlp") and "parametrizations" in k for k in g.state_dict())
    ln = LayerNorm(3, affine=False)
    t = torch.randn(2, 3, 4, 4) * 5 + 2
    out = ln(t).reshape(2, -1)
    assert torch.allclose(out.mean(1), torch.zeros(2), atol=1e-5) and torch.allclose(out.std(1), torch.ones(2), atol=1e-3)


# ------------------------------------------------------------------ losses
def test_symmetric_cross_entropy_is_symmetric_and_matches_the_definition():
    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.allclose(symmetric_cross_entropy(a, b), symmetric_cross_entropy(b, a))
    pa, pb = a.softmax(1), b.softmax(1)
    ref = (-(pb * pa.log()).sum(1) - (pa * pb.log()).sum(1)).mean()
    assert torch.allclose(symmetric_cross_entropy(a, b), ref, atol=1e-6)
    # for a fixed a, SCE(a, b) is smallest when b agrees with a (sharp a)
    sharp = a * 20
    assert symmetric_cross_entropy(sharp, sharp) < symmetric_cross_entropy(sharp, b)
    b = b.requires_grad_(True)
    symmetric_cross_entropy(a, b).backward()
    assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shapes"):
        symmetric_cross_entropy(a, b[:, :3])


def test_cycle_losses_are_zero_for_identity_generators():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    ident = nn.Identity()
    assert cycle_loss(ident(ident(x)), x) == 0 and identity_loss(ident(x), x) == 0
    assert latent_cycle_loss(x, x) == 0 and cycle_loss(x + 0.5, x).item() == pytest.approx(0.5)
    method = CycleGAN(tiny_cfg("cyclegan"))
    method.G_A, method.G_B = nn.Identity(), nn.Identity()
    b = batch()
    state = method.forward_translation(b)
    _, logs = method.generator_loss(state, b, 0.0)
    assert logs["cycle_A"] == 0 and logs["cycle_B"] == 0 and logs["idt_A"] == 0 and logs["idt_B"] == 0


def test_image_pool_semantics():
    torch.manual_seed(0)
    pool = ImagePool(3)
    first = torch.arange(2.0).view(2, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and len(pool) == 2    # filling: returns its input
    second = torch.arange(2.0, 4.0).view(2, 1, 1, 1)
    out = pool.query(second)
    assert len(pool) == 3 and out[0].item() == 2.0                       # 3rd fills the pool
    seen = set()
    for i in range(40):
        new = torch.full((1, 1, 1, 1), 100.0 + i)
        got = pool.query(new).item()
        stored = {t.item() for t in pool.images}
        assert got == 100.0 + i or (got < 100.0 + i and (100.0 + i) in stored)  # input, or swapped with an old one
        assert len(pool) == 3
        seen.add(got == 100.0 + i)
    assert seen == {True, False}                                          # both branches happen (p = 1/2)
    assert torch.equal(ImagePool(0).query(first), first)
    assert pool.query(torch.ones(1, 1, 1, 1, requires_grad=True)).requires_grad is False
    with pytest.raises(ValueError):
        ImagePool(-1)


def test_bdl_semantic_terms_use_input_logits_without_graph(guide_segmenter):
    from translators.feedback import load_feedback

    fb = load_feedback(guide_segmenter, 0.1, "cpu")
    b = batch()
    fake = (b["A_l"] * 0.5).requires_grad_(True)
    terms = bdl_semantic_losses(fb.predict_logits, b["A_l"], fake, b["A_l"], b["B_l"], b["B_l"], b["B_l"])
    assert set(terms) == {"sem_A", "sem_B", "sem_rec_A", "sem_rec_B"}
    assert terms["sem_rec_A"].item() == pytest.approx(0.0, abs=1e-6)     # identical image -> 0
    assert terms["sem_A"].item() > 0
    terms["sem_A"].backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


# ------------------------------------------------------------------ one CPU training step
def test_cyclegan_train_step_without_and_with_semantic_loss(guide_segmenter):
    from translators.feedback import load_feedback

    torch.manual_seed(0)
    method = CycleGAN(tiny_cfg("cyclegan")).setup("cpu")
    assert set(method.param_groups()) == {"G", "D"}
    opts = optimisers(method)
    g_before = [p.detach().clone() for p in method.G_A.parameters()][:2]
    d_before = [p.detach().clone() for p in method.D_A.parameters()][:2]
    logs, state = method.train_step(batch(0), 0.0, opts, SCALER)
    assert all(math.isfinite(v) for v in logs.values())
    assert {"G", "D", "G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B", "D_A", "D_B"} <= set(logs)
    assert any(not torch.equal(a, b) for a, b in zip(g_before, method.G_A.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, method.D_A.parameters()))
    assert len(method.pool_A) == 1 and len(method.visuals(state, batch(0))) == 6
    fb = load_feedback(guide_segmenter, 0.1, "cpu")
    logs, _ = method.train_step(batch(1), 0.5, opts, SCALER, fb)
    assert {"sem_A", "sem_B", "sem_rec_A", "sem_rec_B"} <= set(logs) and all(math.isfinite(v) for v in logs.values())
    with torch.inference_mode():
        y = method.translate_full(torch.rand(1, 3, 36, 70) * 2 - 1, tile=32)
    assert y.shape == (1, 3, 36, 70)


def test_spade_needs_a_segmenter():
    method = SpadeGuided(tiny_cfg("spade"))
    opts = optimisers(method)
    with pytest.raises(ConfigError, match="--feedback-segmenter"):
        method.train_step(batch(), 0.0, opts, SCALER, None)
    with pytest.raises(ConfigError, match="spade.segmenter"):
        with torch.inference_mode():
            method.translate_full(torch.rand(1, 3, 32, 32))


def test_spade_train_step_ttur_poly_and_recorded_guidance(guide_segmenter, tmp_path):
    from translators.feedback import load_feedback

    torch.manual_seed(0)
    cfg = tiny_cfg("spade")
    cfg.train.lr = 1e-4
    method = SpadeGuided(cfg).setup("cpu")
    opts = optimisers(method, 1e-4, (0.9, 0.99))
    fb = load_feedback(guide_segmenter, 0.1, "cpu")
    logs, state = method.train_step(batch(0), 0.5, opts, SCALER, fb)
    assert {"recon", "G_GAN", "cycle", "latent", "SCE", "D_A", "D_B"} <= set(logs)
    assert all(math.isfinite(v) for v in logs.values())
    g_lr, d_lr = 1e-4 * 0.5 ** 0.9, 4e-4 * 0.5 ** 0.9                    # poly(0.9), D/G = 4
    assert logs["lr_G"] == pytest.approx(g_lr) and opts["D"].param_groups[0]["lr"] == pytest.approx(d_lr)
    assert method.lr_at(0.0) == pytest.approx((1e-4, 4e-4)) and method.lr_at(1.0) == (0.0, 0.0)
    assert cfg.spade.segmenter == str(Path(guide_segmenter).resolve()) and len(cfg.spade.segmenter_sha256) == 64
    assert state["m_A"].shape == (1, 19, 32, 32) and state["cyc_A"].shape == (1, 3, 32, 32)
    # a fresh method (as refine builds it) reloads the recorded segmenter for inference
    fresh = SpadeGuided(cfg).setup("cpu")
    fresh.load_state_dict(method.state_dict())
    with torch.inference_mode():
        y = fresh.translate_full(torch.rand(1, 3, 36, 68) * 2 - 1, tile=32)
    assert y.shape == (1, 3, 36, 68) and torch.isfinite(y).all()
    cfg.spade.segmenter_sha256 = "0" * 64
    with pytest.raises(ConfigError, match="changed"):
        SpadeGuided(cfg).translate_full(torch.rand(1, 3, 32, 32))


def test_config_yamls_hold_the_documented_settings():
    """The paper presets as loaded (the YAML lists only what differs from translators/config.py's
    defaults, tests/test_defaults.py)."""
    cg = tconfig.load_config(CONFIGS / "cyclegan_paper.yaml").to_dict()
    assert cg["cyclegan"] == {"lambda_cycle": 10.0, "lambda_identity": 0.5, "pool_size": 50,
                              "lambda_sem_reconstruction": 10.0}
    assert (cg["train"]["lr"], cg["train"]["beta1"], cg["train"]["beta2"]) == (2e-4, 0.5, 0.999)
    sp = tconfig.load_config(CONFIGS / "spade_paper.yaml").to_dict()
    assert {k: sp["spade"][k] for k in ("lambda_recon", "lambda_GAN", "lambda_cycle", "lambda_latent", "lambda_SCE")} \
        == {"lambda_recon": 10.0, "lambda_GAN": 1.0, "lambda_cycle": 10.0, "lambda_latent": 1.0, "lambda_SCE": 10.0}
    assert (sp["train"]["lr"], sp["train"]["beta1"], sp["train"]["beta2"]) == (1e-4, 0.9, 0.99)
    assert sp["spade"]["spade_hidden"] == 128 and sp["spade"]["spectral_norm"] is True
    assert {f for f in SpadeConfig.__dataclass_fields__} >= set(sp["spade"])
    assert {f for f in CycleGANConfig.__dataclass_fields__} >= set(cg["cyclegan"])


def test_seed_translators_are_registered():
    """cyclegan and spade are always registered: a de-registration fails here instead of skipping
    the tests below."""
    assert "cyclegan" in tconfig.METHODS and "spade" in tconfig.METHODS


@pytest.mark.parametrize("name", ["cyclegan_tiny", "cyclegan_paper", "spade_tiny", "spade_paper"])
def test_configs_load_and_build(name):
    from translators.methods import build_method

    assert name.split("_")[0] in tconfig.METHODS
    cfg = tconfig.load_config(CONFIGS / f"{name}.yaml")
    if name.endswith("tiny"):
        build_method(cfg)
    assert cfg.method == name.split("_")[0]


# ------------------------------------------------------------------ CLI (train + refine)
TINY_SET = ["model.ngf=8", "model.ndf=8", "model.n_blocks=2", "model.n_layers_D=2", "data.crop=32",
            "data.prefetch=false", "train.iters=2", "train.log_every=1", "train.save_every=2", "train.sample_every=2"]


def _cli_train(config: str, source: Path, target: Path, out: Path, *extra: str) -> int:
    from translators.__main__ import main

    args = ["train", "--config", str(CONFIGS / config), "--source", str(source), "--target", str(target),
            "--out", str(out), "--no-progress", "--device", "cpu"]
    return main(args + ["--cfg-options", *TINY_SET] + list(extra))


def _cli_refine(ckpt: Path, source: Path, out: Path) -> int:
    from translators.__main__ import main

    return main(["refine", "--checkpoint", str(ckpt), "--source", str(source), "--out", str(out), "--no-progress",
                 "--device", "cpu"])


def test_cli_train_and_refine_spade(tiny_prepared, guide_segmenter, tmp_path):
    assert "spade" in tconfig.METHODS
    src, tgt = tiny_prepared["source"], tiny_prepared["target"]
    run = tmp_path / "spade"
    assert _cli_train("spade_tiny.yaml", src, tgt, run, "--cfg-options", "spade.n_res=1", "spade.spade_hidden=8") == 2
    assert not (run / "final.pt").exists()                              # no segmenter: clear error, exit 2
    assert _cli_train("spade_tiny.yaml", src, tgt, run, "--cfg-options", "spade.n_res=1", "spade.spade_hidden=8",
                      "--feedback-segmenter", str(guide_segmenter)) == 0
    assert (run / "final.pt").is_file() and "SCE" in (run / "losses.csv").read_text()
    assert _cli_refine(run / "final.pt", src, tmp_path / "refined") == 0
    manifest = json.loads((tmp_path / "refined" / "manifest.json").read_text())
    assert manifest["method"] == "spade" and manifest["count"] == 8 and len(list((tmp_path / "refined").glob("*.png"))) == 8


def test_cli_cyclegan_target_to_source_feeds_ldr(tiny_prepared, guide_segmenter, tmp_path):
    """LDR's data flow: a CycleGAN trained target->source refines the target train split, and the LDR
    segmenter trains on original source images + those translated target images."""
    from segmenters import uda as seg_uda

    assert "cyclegan" in tconfig.METHODS and "ldr" in seg_uda.METHODS
    src, tgt = tiny_prepared["source"], tiny_prepared["target"]
    run = tmp_path / "cyclegan_t2s"
    assert _cli_train("cyclegan_tiny.yaml", tgt, src, run, "--feedback-segmenter", str(guide_segmenter)) == 0
    log = (run / "losses.csv").read_text()
    assert "sem_rec_A" in log and "cycle_A" in log
    translated = tmp_path / "target_as_source"
    assert _cli_refine(run / "final.pt", tgt, translated) == 0
    assert len(list(translated.glob("*.png"))) == 8

    from segmenters.loader import load_segmenter
    from segmenters.train import build_parser, train

    args = build_parser().parse_args(
        ["--arch", "fcn8s", "--preset", "tiny", "--uda", "ldr", "--source", str(src), "--target", str(tgt),
         "--target-images", str(translated), "--work-dir", str(tmp_path / "seg"), "--max-iters", "2",
         "--workers", "0", "--cfg-options", "crop_size=(32,64)", "model.data_preprocessor.size=(32,64)",
         "train_scale=(64,32)", "target_scale=(64,32)", "test_scale=(64,32)", "batch_size=1"])
    res = train(args)
    assert load_segmenter(res.final).meta["uda"] == "ldr"
