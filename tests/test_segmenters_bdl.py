"""BDL (segmenters/uda/bdl.py): loss signs, the two-optimiser train_step, CLI runs with pseudo-labels."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
from domains.prepared import PreparedDataset
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS
from segmenters.configs import load_config
from segmenters.datasets import UDADataset
from segmenters.uda import BDL, FCDiscriminator, TrainInputs
from segmenters.uda.base import UDAOptimWrapperConstructor
from segmenters.uda.bdl import adversarial_generator_loss, discriminator_loss

from test_segmenters_train import SMALL, cli_args, run


def test_generator_term_pushes_target_towards_the_source_label():
    d = torch.zeros(1, 1, 2, 2, requires_grad=True)
    loss = adversarial_generator_loss(d)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    loss.backward()
    assert bool((d.grad > 0).all())  # descending lowers D's logit: target looks like source (label 0)
    assert adversarial_generator_loss(torch.full((1, 1, 2, 2), -5.0)) < adversarial_generator_loss(torch.full((1, 1, 2, 2), 5.0))


def test_discriminator_loss_labels_source_0_target_1():
    lo, hi = torch.full((1, 1, 2, 2), -6.0), torch.full((1, 1, 2, 2), 6.0)
    assert discriminator_loss(lo, hi) < 0.01 < discriminator_loss(hi, lo)
    zeros = torch.zeros(1, 1, 2, 2)
    assert math.isclose(discriminator_loss(zeros, zeros).item(), math.log(2), rel_tol=1e-6)


def test_fc_discriminator_shape_and_widths():
    d = FCDiscriminator(num_classes=19, ndf=64)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert d(torch.rand(2, 19, 64, 128)).shape == (2, 1, 2, 4)


def _setup(tiny_prepared, arch: str, pseudo: Path | None = None):
    cfg = load_config(arch, "tiny", SMALL)
    inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"], pseudo=pseudo)
    method = BDL()
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


@pytest.mark.parametrize("arch", ["deeplabv2", "fcn8s"])
def test_train_step_updates_both_networks_with_documented_losses(tiny_prepared, arch):
    cfg, model, optim, batch = _setup(tiny_prepared, arch)
    # optimisers: the config's for the segmenter (10x head lr for DeepLab-V2), Adam for D
    seg_opt, d_opt = optim["segmentor"].optimizer, optim["discriminator"].optimizer
    d_params = {id(p) for p in model.discriminator.parameters()}
    assert all(id(p) in d_params for g in d_opt.param_groups for p in g["params"])
    assert not any(id(p) in d_params for g in seg_opt.param_groups for p in g["params"])
    assert isinstance(d_opt, torch.optim.Adam) and d_opt.defaults["lr"] == cfg.uda.d_optimizer.lr
    if arch == "deeplabv2":
        lrs = {g["lr"] for g in seg_opt.param_groups}
        assert max(lrs) == pytest.approx(10 * cfg.optim_wrapper.optimizer.lr)

    # expected generator term, computed before the step with the same inputs (BN uses batch stats)
    with torch.no_grad():
        trg = model.data_preprocessor(batch["trg"], True)
        _, logits_t = model.seg_forward(trg["inputs"])
        prob_t = torch.softmax(model.upsample(logits_t, trg["inputs"]), dim=1)
        d_t = model.discriminator(prob_t)
        expected_adv = cfg.uda.lambda_adv * torch.nn.functional.binary_cross_entropy_with_logits(d_t, torch.zeros_like(d_t))

    d_grad_calls = []
    handles = [p.register_hook(lambda g: d_grad_calls.append(float(g.abs().sum()))) for p in model.discriminator.parameters()]
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    g_before = [p.detach().clone() for p in model.decode_head.parameters() if p.requires_grad]
    log_vars = model.train_step(batch, optim)
    for h in handles:
        h.remove()

    assert set(log_vars) >= {"loss", "src.decode.loss_ce", "trg.loss_adv", "disc.loss_d"}
    assert "trg.decode.loss_ce" not in log_vars  # no pseudo-labels given
    assert float(log_vars["trg.loss_adv"]) == pytest.approx(float(expected_adv), rel=1e-4)
    # D got gradients exactly once per parameter (its own step; frozen during the generator step)
    n_d = len(list(model.discriminator.parameters()))
    assert len(d_grad_calls) == n_d and sum(d_grad_calls) > 0
    assert any(not torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g_before, [p for p in model.decode_head.parameters() if p.requires_grad]))
    assert all(p.requires_grad for p in model.discriminator.parameters())


def test_adversarial_gradient_step_makes_target_look_like_source(tiny_prepared):
    """One gradient step on the segmenter with only lambda_adv * L_adv lowers D's logit on the target."""
    _, model, _, batch = _setup(tiny_prepared, "fcn8s")
    model.eval()  # deterministic forward (no dropout)
    trg = model.data_preprocessor(batch["trg"], True)
    for p in model.discriminator.parameters():
        p.requires_grad_(False)

    def d_logit() -> torch.Tensor:
        _, logits = model.seg_forward(trg["inputs"])
        return model.discriminator(torch.softmax(model.upsample(logits, trg["inputs"]), dim=1))

    before = d_logit()
    adversarial_generator_loss(before).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad / (p.grad.norm() + 1e-12)
    with torch.no_grad():
        after = d_logit()
    assert after.mean() < before.detach().mean()


def _pseudo_dir(tiny_prepared, tmp_path: Path) -> Path:
    target = PreparedDataset.load(tiny_prepared["target"])
    out = tmp_path / "pseudo"
    out.mkdir()
    for s in target.samples("train"):
        lab = np.array(Image.open(s.label))
        lab[: lab.shape[0] // 4] = 255  # some ignored pixels, as the BDL rule leaves
        Image.fromarray(lab).save(out / f"{s.stem}.png")
    return out


@pytest.mark.parametrize("arch", ["deeplabv2", "fcn8s"])
def test_bdl_cli_with_pseudo_labels(tiny_prepared, tmp_path, arch):
    from segmenters.loader import load_segmenter

    pseudo = _pseudo_dir(tiny_prepared, tmp_path)
    result = run(cli_args(tiny_prepared, tmp_path / "run", "bdl", arch, "--pseudo", str(pseudo), "--val-interval", "2"))
    assert result.end_iter == 2 and "mIoU" in result.metrics
    final = torch.load(result.final, weights_only=True)
    assert final["meta"]["uda"] == "bdl" and final["meta"]["pseudo"] == str(pseudo)
    assert not any(k.startswith("discriminator") for k in final["state_dict"])
    seg = load_segmenter(result.final)
    assert seg.predict_probs(torch.full((1, 3, 32, 64), 100.0)).sum(1).allclose(torch.ones(1, 32, 64), atol=1e-4)
    rows = [line for p in (tmp_path / "run").glob("*/vis_data/scalars.json") for line in p.read_text().splitlines()]
    assert any('"trg.decode.loss_ce"' in r for r in rows)  # pseudo-label CE on the target was trained
