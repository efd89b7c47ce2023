"""Translator methods (CUT, SemST): configs, crop alignment, fusion, tiling, feedback, NaN guard."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from translators.config import ConfigError, TranslatorConfig, load_config
from translators.data import CropSpec, crop_image, resize
from translators.feedback import semantic_consistency_loss
from translators.methods import NonFiniteLossError, build_method, tiled_apply
from translators.methods.base import pad_to_multiple, tile_starts
from translators.methods.semst import sample_window, window_grid
from translators.train import make_adam

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "translators" / "configs"
TINY = ["model.ngf=8", "model.ndf=8", "model.n_blocks=2", "model.n_layers_D=2", "model.netF_nc=32", "model.scale_mid_channels=8",
        "loss.nce_layers=[0,4,8,12,13]", "loss.num_patches=32", "data.crop=32", "data.local_crop=32",
        "data.global_crop=16"]


def tiny(method: str, *extra: str) -> TranslatorConfig:
    return load_config(CONFIGS / f"{method}_tiny.yaml", TINY + list(extra))


def dag_variants(pair: str = "gta2cs") -> dict[str, tuple[Path, list[str]]]:
    """The translator variants of config/config.yaml (SemST Table 3 ablations: ``translators.<name>.cfg_options``),
    as the workflow's jobs load them for ``pair`` (a paper-preset pair by default): ``--config`` and the
    ``--cfg-options`` items, built by wflib as common.smk builds them. The ablations are defined there only."""
    import yaml

    sys.path.append(str(REPO / "workflow" / "lib"))
    from wflib import pipeline_config as wfc
    from wflib import schema as wfschema
    from wflib import validate as wfv

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    wfc.load_pairs(config, REPO, REPO)
    wfschema.fill_defaults(config)
    preset = config["pairs"][pair]["preset"]
    return {name: (wfv.translator_config_path(REPO, spec["method"], preset),
                   wfv.cfg_option_items(wfv.translator_overrides(config, pair, name)))
            for name, spec in config["translators"].items() if spec["cfg_options"]}


#: the SemST ablations whose config differs from semst_paper.yaml (semst_ts2 sets SemST's default 2)
ABLATIONS = {name: job for name, job in dag_variants().items()
             if job[0].name == "semst_paper.yaml" and load_config(*job).to_dict() != load_config(job[0]).to_dict()}


# ----------------------------------------------------------------------------- config
def test_unknown_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: " + str(CONFIGS / "cut_tiny.yaml") + "\nloss: {lambda_nce: 2.0}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.lambda_nce'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"unknown config key 'train.iterz'"):
        load_config(CONFIGS / "cut_tiny.yaml", ["train.iterz=3"])
    with pytest.raises(ConfigError, match=r"'train.iters' must be an integer"):
        load_config(CONFIGS / "cut_tiny.yaml", ["train.iters=abc"])
    with pytest.raises(ConfigError, match=r"loss.contrastive"):
        load_config(CONFIGS / "semst_tiny.yaml", ["loss.contrastive=infonce"])
    cfg = load_config(CONFIGS / "semst_tiny.yaml", ["train.lr=1e-4", "loss.nce_layers=[0,4]"])
    assert cfg.train.lr == 1e-4 and cfg.loss.nce_layers == [0, 4]


def test_base_files_are_read_by_mmengine_with_its_merge_rules(tmp_path):
    """``_base_`` as mmengine.Config merges it (the segmenters' configs too): nested sections key by key,
    lists and null replaced as a whole, ``_delete_: true`` replacing a section (its other keys: defaults)."""
    (tmp_path / "base.yaml").write_text("method: semst\nmodel: {ngf: 16, ndf: 16}\n"
                                        "loss: {nce_layers: [0, 4, 8], lambda_TS: 1.0}\ndata: {resize_short: 512}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel: {ngf: 8}\nloss: {nce_layers: [1]}\n"
                                         "data: {resize_short: null}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.method, cfg.model.ngf, cfg.model.ndf) == ("semst", 8, 16)
    assert cfg.loss.nce_layers == [1] and cfg.loss.lambda_TS == 1.0 and cfg.data.resize_short is None
    (tmp_path / "delete.yaml").write_text("_base_: base.yaml\nmodel: {_delete_: true, ngf: 4}\n")
    cfg = load_config(tmp_path / "delete.yaml")
    assert (cfg.model.ngf, cfg.model.ndf, cfg.loss.lambda_TS) == (4, TranslatorConfig().model.ndf, 1.0)


@pytest.mark.parametrize("files, message", [
    ({}, "config file {dir}/top.yaml not found"),
    ({"top.yaml": "_base_: nope.yaml\n"},
     "config file {dir}/top.yaml: its _base_ file \"{dir}/nope.yaml\" does not exist"),
    ({"top.yaml": "_base_: other.yaml\n", "other.yaml": "_base_: top.yaml\n"},
     "config file {dir}/top.yaml: _base_ cycle"),
    ({"top.yaml": "model: {ngf: [1\n"}, "config file {dir}/top.yaml (or a _base_ file it names) is not valid YAML"),
    ({"top.yaml": "- 1\n- 2\n"}, "config file {dir}/top.yaml (or a _base_ file it names) must hold a mapping"),
], ids=["missing", "missing_base", "base_cycle", "bad_yaml", "not_a_mapping"])
def test_unreadable_config_files_are_named(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "top.yaml")
    assert str(info.value).startswith(message.format(dir=tmp_path)), str(info.value)


@pytest.mark.parametrize("item, key, want", [
    ("train.iters=7", "train.iters", 7), ("train.iters=1e3", "train.iters", 1000),
    ("train.lr=1e-4", "train.lr", 1e-4), ("loss.lambda_TS=1", "loss.lambda_TS", 1.0),
    ("data.flip=false", "data.flip", False), ("data.flip=False", "data.flip", False),
    ("data.flip=off", "data.flip", False),
    ("data.flip=yes", "data.flip", True), ("train.cpu_amp=on", "train.cpu_amp", True),
    ("train.cpu_amp=auto", "train.cpu_amp", "auto"),
    ("refine.tile=None", "refine.tile", None), ("refine.tile=null", "refine.tile", None),
    ("refine.tile=~", "refine.tile", None), ("refine.tile=", "refine.tile", None),
    ("loss.nce_layers=[0,4]", "loss.nce_layers", [0, 4]), ("loss.nce_layers=[0, 4]", "loss.nce_layers", [0, 4]),
    ("loss.nce_layers=0,4", "loss.nce_layers", [0, 4]), ("loss.nce_layers=(0,4)", "loss.nce_layers", [0, 4]),
    ("semst.gan_on=fused", "semst.gan_on", ["fused"]),
    ("semst.gan_on=[fused,'local']", "semst.gan_on", ["fused", "local"]),
    ("loss.contrastive=patchnce", "loss.contrastive", "patchnce"),
    ("loss.contrastive='patchnce'", "loss.contrastive", "patchnce"),
])
def test_cfg_options_are_typed_then_converted_to_the_field_type(item, key, want):
    """DictAction types the value (domains/cfg_options.py); the field's type converts it. YAML's spellings
    that the former --set read (on/off, yes/no, null, ~, nothing) keep their meaning."""
    got = load_config(CONFIGS / "semst_tiny.yaml", [item]).get(key)
    assert got == want and type(got) is type(want), (item, got)


def test_bad_cfg_options_items_are_named():
    with pytest.raises(ConfigError, match=r"--cfg-options item 'train.iters' is not key=value"):
        load_config(CONFIGS / "cut_tiny.yaml", ["train.iters"])
    with pytest.raises(ConfigError, match=r"--cfg-options item 'loss.nce_layers=\[0,4': .*[Ii]mbalanced"):
        load_config(CONFIGS / "cut_tiny.yaml", ["loss.nce_layers=[0,4"])
    with pytest.raises(ConfigError, match=r"'data.flip' must be true/false, got 1"):
        load_config(CONFIGS / "cut_tiny.yaml", ["data.flip=1"])
    with pytest.raises(ConfigError, match=r"'refine.tile' must be an integer, got 'none'"):
        load_config(CONFIGS / "cut_tiny.yaml", ["refine.tile=none"])
    assert load_config(CONFIGS / "cut_tiny.yaml", {"train.iters": 9, "refine.tile": None}).train.iters == 9  # a mapping


#: the CUT and SemST preset files, and the SemST ablations as the workflow runs them:
#: id -> (--config, --cfg-options items)
BUILD_CASES = {**{p.stem: (p, []) for p in sorted([*CONFIGS.glob("cut_*.yaml"), *CONFIGS.glob("semst_*.yaml")])},
               **ABLATIONS}


@pytest.mark.parametrize("path, overrides", list(BUILD_CASES.values()), ids=list(BUILD_CASES))
def test_every_config_builds(path, overrides):
    """Paper and tiny presets (and the Table 3 ablations, as the workflow runs them) load and build their networks."""
    cfg = load_config(path, overrides)
    method = build_method(cfg)
    groups = method.param_groups()
    assert all(len(v) > 0 for v in groups.values())
    if cfg.method == "semst":
        assert cfg.loss.contrastive in ("hdce", "patchnce")
        assert hasattr(method, "G_g") == cfg.semst.multiscale


def test_semst_ablation_configs():
    """SemST Table 3's ablations are the config/config.yaml translators the workflow runs (--cfg-options
    over semst_paper)."""
    cfgs = {name: load_config(*job) for name, job in dag_variants().items()}
    assert set(ABLATIONS) == {"semst_noms", "semst_nohdce", "semst_ts0", "semst_ts1"}
    assert cfgs["semst_noms"].semst.multiscale is False
    assert cfgs["semst_nohdce"].loss.contrastive == "patchnce"
    assert [cfgs[f"semst_ts{w}"].loss.lambda_TS for w in (0, 1, 2)] == [0.0, 1.0, 2.0]
    assert load_config(CONFIGS / "semst_paper.yaml").loss.lambda_TS == 2.0
    assert cfgs["semst_ts2"].to_dict() == load_config(CONFIGS / "semst_paper.yaml").to_dict()
    paper = _flat(load_config(CONFIGS / "semst_paper.yaml").to_dict())
    for name in ABLATIONS:  # each differs from the paper config in the one setting it ablates
        diff = {k for k, v in _flat(cfgs[name].to_dict()).items() if v != paper[k]}
        assert len(diff) == 1, (name, diff)


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


# ----------------------------------------------------------------------------- geometry
def test_window_grid_equals_upsample_then_crop():
    torch.manual_seed(0)
    m = torch.randn(2, 3, 16, 16)
    box = torch.tensor([[5.0, 9.0, 32.0, 32.0], [0.0, 16.0, 32.0, 32.0]])
    got = sample_window(m, window_grid(box, (16, 16)))
    up = F.interpolate(m, size=(32, 32), mode="bilinear", align_corners=False)
    want = torch.stack([up[0, :, 5:21, 9:25], up[1, :, 0:16, 16:32]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_semst_crops_lie_inside_their_window():
    img = (torch.arange(64 * 128 * 3) % 251).reshape(64, 128, 3).to(torch.uint8).numpy()
    spec = CropSpec(local=(16, 16), global_=(16, 16), ratio=2.0)
    import numpy as np
    out = crop_image(img, spec, np.random.default_rng(3), flip=False)
    top, left, wh, ww = out["box"].tolist()
    assert (wh, ww) == (32, 32) and 0 <= top <= 16 and 0 <= left <= 16
    assert out["g"].shape == (3, 16, 16) and out["l"].shape == (3, 16, 16)


def test_tiles_cover_and_weights_sum_to_one():
    assert tile_starts(100, 32, 0.25) == [0, 24, 48, 68] and tile_starts(20, 32, 0.25) == [0]
    x = torch.randn(1, 3, 37, 53)
    for blend in ("mean", "linear"):
        ones = tiled_apply(lambda t: torch.ones_like(t[:, :1]), x, tile=16, overlap=0.3, batch_size=3, blend=blend)
        torch.testing.assert_close(ones, torch.ones(1, 1, 37, 53))
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        torch.testing.assert_close(tiled_apply(conv, x, tile=16, overlap=0.25), conv(x), atol=1e-5, rtol=0)


def test_tiling_reproduces_whole_image_within_receptive_field():
    """Two 5x5 convs (receptive radius 4): tiles [0, 24) and [16, 40) of a 40-px image reproduce the
    whole-image output exactly wherever only one tile covers a pixel and its receptive field lies
    inside that tile; only the overlap band [16, 24) is an average of two tiles."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Conv2d(4, 3, 5, padding=2))
    x = torch.randn(1, 3, 40, 40)
    assert tile_starts(40, 24, 1 / 3) == [0, 16]
    with torch.no_grad():
        whole = net(x)
        tiled = tiled_apply(net, x, tile=24, overlap=1 / 3, blend="mean")
    keep = torch.ones(40, dtype=torch.bool)
    keep[16:24] = False
    mask = keep[:, None] & keep[None, :]
    torch.testing.assert_close(tiled[..., mask], whole[..., mask], atol=1e-5, rtol=0)
    assert (tiled - whole).abs().max() < 1.0  # the band is a blend of two plausible outputs


def test_cut_translate_keeps_any_size():
    cfg = tiny("cut")
    method = build_method(cfg).eval()
    x = torch.rand(1, 3, 50, 70) * 2 - 1
    with torch.inference_mode():
        y = method.translate_full(x, tile=32, overlap=0.25, batch_size=2)
        whole = method.translate(x)
    assert y.shape == x.shape == whole.shape and torch.isfinite(y).all() and y.abs().max() <= 1


class _PointwiseG(nn.Module):
    """A 1x1-conv stand-in for G_l (no spatial context), so tiles == whole image exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x, layers=None, encode_only=False):
        return torch.tanh(self.conv(x))

    def forward_with_features(self, x, layers):
        y = self.forward(x)
        return y, [x for _ in layers]


def test_semst_training_fusion_matches_full_resolution_inference():
    """Eq. 6 alignment: the fused local crop in training equals the same window of the
    full-resolution inference output when the global window covers the whole image."""
    cfg = tiny("semst", "loss.nce_idt=false")
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    method.G_l = _PointwiseG()
    img = torch.rand(1, 3, 32, 32) * 2 - 1           # = the global window (16 * ratio 2)
    top, left, size = 8, 12, 16                        # a local crop inside the window
    batch = {"A_l": img[..., top:top + size, left:left + size], "A_g": resize(img, (16, 16)),
             "A_box": torch.tensor([[top, left, 32.0, 32.0]])}
    with torch.no_grad():
        state = method.forward_translation(batch)
        full = method.translate_full(img, tile=16, overlap=0.5)
    torch.testing.assert_close(state["fused"], full[..., top:top + size, left:left + size], atol=1e-5, rtol=0)
    assert 0 < state["m_win"].min() and state["m_win"].max() < 1


def test_pad_to_multiple_restores_size():
    f = pad_to_multiple(lambda t: t * 2)
    x = torch.randn(1, 3, 17, 30)
    torch.testing.assert_close(f(x), x * 2)


# ----------------------------------------------------------------------------- feedback
@pytest.fixture(scope="module")
def feedback_segmenter(tmp_path_factory):
    """A real tiny FCN-8s (MMSeg EncoderDecoder) with random weights, written with
    segmenters.checkpoint.save_final: (path of final.pth, the in-memory model)."""
    from segmenters.checkpoint import build_segmentor, save_final
    from segmenters.configs import load_config as load_segmenter_config

    torch.manual_seed(0)
    cfg = load_segmenter_config("fcn8s", "tiny")
    model = build_segmentor(cfg.model)
    model.init_weights()
    for p in model.decode_head.parameters():  # FCN-8s scores are zero-initialised: make them informative
        nn.init.normal_(p, std=0.05)
    model.eval()
    meta = dict(arch="fcn8s", preset="tiny", num_classes=19, uda="source_only", iter=1,
                test_scale=cfg.test_scale, model_cfg=cfg.model)
    return save_final(model, meta, tmp_path_factory.mktemp("feedback") / "final.pth"), model


def _hand_logits(model, x: torch.Tensor) -> torch.Tensor:
    """Logits of the in-memory segmenter for translator images x in [-1, 1]: to RGB [0, 255],
    ImageNet mean/std (RGB order), backbone, FCN-8s head, bilinear back to the input size."""
    rgb = (x + 1.0) * 127.5
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    logits = model.decode_head(model.extract_feat((rgb - mean) / std))
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _hand_instance_norm(t: torch.Tensor) -> torch.Tensor:
    mu = t.mean(dim=(2, 3), keepdim=True)
    var = t.var(dim=(2, 3), unbiased=False, keepdim=True)
    return (t - mu) / torch.sqrt(var + 1e-5)


def test_feedback_loss_equals_hand_computation_with_a_real_segmenter(feedback_segmenter):
    """``load_feedback`` on a real final.pth: weight * MSE of the instance-normalised logit maps of
    the frozen segmenter on G(x) and x, with the gradient reaching G through f(G(x)) only."""
    from translators.feedback import load_feedback

    path, model = feedback_segmenter
    fb = load_feedback(path, 0.1, "cpu")
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) * 2 - 1  # fc7 2x2: train-mode dropout is not a shift IN removes
    assert fb(x, x.clone()).item() == pytest.approx(0.0, abs=1e-10)
    g = nn.Conv2d(3, 3, 3, padding=1)
    y = torch.tanh(g(x))
    loss = fb(x, y)
    with torch.no_grad():
        logits_in = _hand_logits(model, x)
    logits_out = _hand_logits(model, y)
    assert logits_out.shape == (2, 19, 64, 64) and logits_out.std() > 0.05
    hand = 0.1 * ((_hand_instance_norm(logits_out) - _hand_instance_norm(logits_in)) ** 2).mean()
    assert hand.item() > 1e-3
    assert loss.item() == pytest.approx(hand.item(), rel=1e-4)
    assert fb(x, y).item() * 5 == pytest.approx(load_feedback(path, 0.5, "cpu")(x, y).item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, g.weight, retain_graph=True)
    (grad_hand,) = torch.autograd.grad(hand, g.weight)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, grad_hand, rtol=1e-3, atol=1e-7)
    assert all(p.grad is None and not p.requires_grad for p in fb.model.parameters())
    assert not fb.model.training
    assert not fb(x.clone().requires_grad_(True), y.detach()).requires_grad  # f(x) has no graph
    a, b = torch.randn(1, 5, 4, 4), torch.randn(1, 5, 4, 4)
    assert semantic_consistency_loss(a, a * 3 + 1).item() == pytest.approx(0.0, abs=1e-6)  # IN-invariant
    assert semantic_consistency_loss(a, b).item() == pytest.approx(
        ((_hand_instance_norm(a) - _hand_instance_norm(b)) ** 2).mean().item(), rel=1e-5)


# ----------------------------------------------------------------------------- train step
def _batch(method, n=1):
    torch.manual_seed(1)
    spec = method.crop_spec()
    out = {"A_l": torch.rand(n, 3, *spec.local) * 2 - 1, "B_l": torch.rand(n, 3, *spec.local) * 2 - 1}
    if spec.global_ is not None:
        out.update(A_g=torch.rand(n, 3, *spec.global_) * 2 - 1, B_g=torch.rand(n, 3, *spec.global_) * 2 - 1,
                   A_box=torch.tensor([[0.0, 0.0, 32.0, 32.0]] * n), B_box=torch.tensor([[0.0, 0.0, 32.0, 32.0]] * n))
    return out


@pytest.mark.parametrize("method_name,extra", [("cut", []), ("semst", []),
                                               ("semst", ["semst.multiscale=false", "loss.contrastive=patchnce"]),
                                               ("semst", ["semst.gan_on=[fused,local,global]", "loss.lambda_TS=0"])])
def test_train_step_updates_all_networks(method_name, extra):
    cfg = tiny(method_name, *extra)
    torch.manual_seed(0)
    method = build_method(cfg)
    opts = {k: make_adam(p, 2e-4, (0.5, 0.999)) for k, p in method.param_groups().items()}
    before = {k: v.clone() for k, v in method.state_dict().items()}
    logs, _ = method.train_step(_batch(method, 2), 0.1, opts, torch.amp.GradScaler("cpu", enabled=False))
    assert all(v == v for v in logs.values()) and "NCE" in logs
    # hDCE runs also log SRC's value (coupled CE, > 0) beside the decoupled loss; PatchNCE runs do not
    ce_keys = {k for k in logs if k.startswith("NCE_ce")}
    if cfg.loss.contrastive == "hdce":
        assert ce_keys == ({"NCE_ce_l", "NCE_ce_g"} if cfg.semst.multiscale else {"NCE_ce_l"})
        assert all(logs[k] > 0 for k in ce_keys)
    else:
        assert not ce_keys
    if cfg.loss.lambda_TS > 0:
        assert "TS" in logs
    changed = {k.split(".")[0] for k, v in method.state_dict().items() if not torch.equal(v, before[k])}
    expected = {"G", "F", "D"} if method_name == "cut" else (
        {"G_l", "F_l", "D"} | ({"G_g", "F_g", "S"} if cfg.semst.multiscale else set())
        | ({"D_g"} if "global" in cfg.semst.gan_on else set()))
    assert changed == expected


def test_nan_loss_raises_before_any_update(monkeypatch):
    cfg = tiny("cut")
    torch.manual_seed(0)
    method = build_method(cfg)
    opts = {k: make_adam(p, 2e-4, (0.5, 0.999)) for k, p in method.param_groups().items()}
    before = {k: v.clone() for k, v in method.state_dict().items()}
    orig = type(method).generator_loss

    def nan_loss(self, *a, **k):
        total, logs = orig(self, *a, **k)
        return total * float("nan"), logs
    monkeypatch.setattr(type(method), "generator_loss", nan_loss)
    with pytest.raises(NonFiniteLossError, match="'G'"):
        method.train_step(_batch(method), 0.0, opts, torch.amp.GradScaler("cpu", enabled=False))
    changed = [k for k, v in method.state_dict().items() if not torch.equal(v, before[k])]
    assert all(k.startswith("D.") for k in changed)  # D had its (finite) step; G and F untouched


# ----------------------------------------------------------------------------- speed-path equivalences
def _reference_cut_g_loss(method, real_a, real_b, ids):
    """CUT's generator loss computed the straightforward way: re-encode the real images for the
    keys (a second encoder pass with autograd, as the original code), separate source and identity
    NCE calls, cross-entropy over [l_pos, l_neg]. Same patch ids as the fast path."""
    c = method.cfg.loss
    real = torch.cat([real_a, real_b])
    fake_all = method.G(real)
    terms = {}
    for name, sl in (("NCE", slice(0, 1)), ("NCE_idt", slice(1, 2))):
        feat_k = method.G(real[sl], c.nce_layers, encode_only=True)
        feat_q = method.G(fake_all[sl], c.nce_layers, encode_only=True)
        k, _ = method.F(feat_k, c.num_patches, ids)
        q, _ = method.F(feat_q, c.num_patches, ids)
        per_layer = []
        for ql, kl in zip(q, k):
            kl = kl.detach()
            l_pos = (ql * kl).sum(1, keepdim=True)
            l_neg = ql @ kl.t()
            l_neg = l_neg.masked_fill(torch.eye(len(ql), dtype=torch.bool), -10.0)
            logits = torch.cat([l_pos, l_neg], 1) / c.nce_T
            per_layer.append(F.cross_entropy(logits, torch.zeros(len(ql), dtype=torch.long)))
        terms[name] = torch.stack(per_layer).mean()
    gan = F.mse_loss(method.D(fake_all[:1]), torch.ones(1, 1, 1, 1).expand_as(method.D(fake_all[:1])))
    return c.lambda_GAN * gan + c.lambda_NCE * 0.5 * (terms["NCE"] + terms["NCE_idt"])


def test_cut_fast_generator_loss_equals_recompute_version():
    """Keys from the translation pass (no second encoder pass), one batched NCE call for source +
    identity rows and the logsumexp form give the same loss and the same G/F gradients."""
    cfg = tiny("cut")
    torch.manual_seed(0)
    method = build_method(cfg)
    for p in method.D.parameters():
        p.requires_grad_(False)
    real_a, real_b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    batch = {"A_l": real_a, "B_l": real_b}
    torch.manual_seed(1)
    state = method.forward_translation(batch)
    loss, _ = method.generator_loss(state, batch, 0.1)
    # the patch ids the fast path drew: same seed, same draws (randperm per layer on the keys)
    torch.manual_seed(1)
    with torch.no_grad():
        _, ids = method.F(method.G(torch.cat([real_a, real_b]), cfg.loss.nce_layers, encode_only=True),
                          cfg.loss.num_patches)
    params = [p for n in ("G", "F") for p in getattr(method, n).parameters()]
    grads = torch.autograd.grad(loss, params)
    ref = _reference_cut_g_loss(method, real_a, real_b, ids)
    ref_grads = torch.autograd.grad(ref, params)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    # float32 summation orders differ; biases feeding an InstanceNorm have a true gradient of 0
    # and float noise, so the tolerance is relative to the largest gradient
    scale = max(r.abs().max() for r in ref_grads)
    for g, r in zip(grads, ref_grads):
        assert (g - r).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize("contrastive", ["patchnce", "hdce"])
def test_batched_contrastive_equals_separate_calls(contrastive):
    cfg = tiny("semst", f"loss.contrastive={contrastive}")
    method = build_method(cfg)
    gen = torch.Generator().manual_seed(0)
    q = [F.normalize(torch.randn(2 * 16, 8, generator=gen), dim=1).requires_grad_(True) for _ in range(3)]
    k = [F.normalize(torch.randn(2 * 16, 8, generator=gen), dim=1) for _ in range(3)]
    both = method.contrastive_per_query(q, k, 2, 0.3)
    src = method.contrastive([t[:16] for t in q], [t[:16] for t in k], 1, 0.3)
    idt = method.contrastive([t[16:] for t in q], [t[16:] for t in k], 1, 0.3)
    torch.testing.assert_close(torch.stack([t[:16].mean() for t in both]).mean(), src)
    torch.testing.assert_close(torch.stack([t[16:].mean() for t in both]).mean(), idt)


def test_cpu_allocator_tuning_is_idempotent_and_setup_keeps_working():
    import sys

    from translators.methods.base import tune_cpu_allocator
    first, second = tune_cpu_allocator(), tune_cpu_allocator()
    assert first == second
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert first  # glibc's mallopt accepted the settings
    method = build_method(tiny("cut")).setup(torch.device("cpu"))
    assert method.translate(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- CPU bf16 autocast
def test_cpu_amp_setting_is_validated_and_resolved():
    from translators.methods.base import cpu_has_native_bf16, resolve_cpu_amp
    with pytest.raises(ConfigError, match="train.cpu_amp"):
        tiny("cut", "train.cpu_amp=maybe")
    assert resolve_cpu_amp("on") and not resolve_cpu_amp("off")
    assert resolve_cpu_amp("auto") == cpu_has_native_bf16()
    for text, want in (("off", False), ("on", True), ("false", False), ("true", True), ("auto", cpu_has_native_bf16())):
        # on/off (YAML's booleans, as the former --set read them) and true/false: every spelling must work
        assert resolve_cpu_amp(tiny("cut", f"train.cpu_amp={text}").train.cpu_amp) == want, text
    method = build_method(tiny("cut"))
    assert not method.setup(torch.device("cpu")).amp_enabled          # inference/refine: float32
    assert method.setup(torch.device("cpu"), cpu_amp=True).amp_dtype == torch.bfloat16


@pytest.mark.parametrize("method_name", ["cut", "semst"])
def test_cpu_bf16_step_tracks_the_float32_step(method_name):
    """One training step under CPU bf16 autocast gives the float32 losses to bf16 accuracy and
    updates the same networks; the contrastive/TS losses themselves are computed in float32."""
    cfg = tiny(method_name)
    torch.manual_seed(0)
    ref = build_method(cfg).setup(torch.device("cpu"))
    amp = build_method(cfg).setup(torch.device("cpu"), cpu_amp=True)
    amp.load_state_dict(ref.state_dict())
    batch = _batch(ref, 1)
    logs = {}
    for name, m in (("fp32", ref), ("bf16", amp)):
        opts = {k: make_adam(p, 2e-4, (0.5, 0.999)) for k, p in m.param_groups().items()}
        torch.manual_seed(1)
        logs[name], _ = m.train_step(dict(batch), 0.1, opts, torch.amp.GradScaler("cpu", enabled=False))
    assert set(logs["fp32"]) == set(logs["bf16"])
    for key, value in logs["fp32"].items():
        assert logs["bf16"][key] == pytest.approx(value, rel=0.05, abs=0.02), key
    drift = [(a - b).abs().max().item() for a, b in zip(amp.state_dict().values(), ref.state_dict().values())
             if a.is_floating_point()]
    assert 0 < max(drift) < 1e-2  # same update up to bf16 rounding (Adam steps are ~lr = 2e-4 each)


@pytest.mark.parametrize("detach", [True, False])
def test_ts_term_follows_the_detach_centres_setting(detach):
    """``loss.ts_detach_centres`` reaches rSMI: the TS value is the same, the centre patches of the
    output embeddings get gradient only when the setting is false (default true)."""
    extra = [] if detach else ["loss.ts_detach_centres=false"]
    cfg = tiny("semst", *extra)
    assert cfg.loss.ts_detach_centres is detach
    method = build_method(cfg)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2 * 64, 3, generator=gen)
    k = [torch.tanh(z @ torch.randn(3, 8, generator=gen))]
    q = [(torch.tanh(z @ torch.randn(3, 8, generator=gen)) + 0.1 * torch.randn(128, 8, generator=gen))
         .requires_grad_(True)]
    value = method.ts(k, q, 2)
    value.backward()
    centres = torch.linspace(0, 63, 16).round().long()
    grad = q[0].grad.reshape(2, 64, 8)
    centre_grad = grad[:, centres].abs().sum()
    assert (centre_grad == 0) if detach else (centre_grad > 0)
    assert grad.abs().sum() > centre_grad
