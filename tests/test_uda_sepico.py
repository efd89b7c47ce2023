"""SePiCo segmentor (segmenters/uda/sepico.py): EMA teacher, ClassMix self-training, gated pixel
contrast, optimiser split, Runner training with checkpoints and final.pth export."""
from __future__ import annotations

import uuid

import pytest
import torch

import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
from mmengine.dataset import pseudo_collate
from mmengine.logging import MessageHub
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS
from segmenters.configs import load_config
from segmenters.datasets import UDADataset
from segmenters.uda import TrainInputs
from segmenters.uda.base import TrainError
from segmenters.uda.ema import ema_alpha
from segmenters.uda.sepico import SePiCo, SePiCoOptimWrapperConstructor, sepico_config

# 64x32 images, batch 1 (as tests/test_segmenters_train.py)
SMALL = ["crop_size=(32,64)", "model.data_preprocessor.size=(32,64)", "train_scale=(64,32)",
         "target_scale=(64,32)", "test_scale=(64,32)", "batch_size=1", "log_interval=1"]
START = 2  # start_distribution_iter used by the tests


def _cfg(mode: str = "dist", start: int = START, **extra):
    cfg = load_config("deeplabv2", "tiny", SMALL)
    cfg.uda["sepico"] = dict(contrast_mode=mode, start_distribution_iter=start, proj_dim=16, **extra)
    return cfg


def _setup(tiny_prepared, mode: str = "dist", start: int = START, **extra):
    cfg = _cfg(mode, start, **extra)
    inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"])
    method = SePiCo()
    with DefaultScope.overwrite_default_scope("mmseg"):
        torch.manual_seed(0)
        model = MODELS.build(method.model(cfg, inputs))
        model.init_weights()
        ow = method.optim_wrapper(cfg)
        optim = SePiCoOptimWrapperConstructor({k: v for k, v in ow.items() if k != "constructor"})(model)
        spec = method.train_dataset(cfg, inputs)
        data = UDADataset(spec["source"], spec["target"], seed=spec["seed"])
    return cfg, model, optim, data


def _step(model, optim, data, t: int):
    hub = MessageHub.get_instance(f"sepico_test_{uuid.uuid4().hex[:8]}")  # becomes the current instance
    hub.update_info("iter", t)
    return model.train_step(pseudo_collate([data[t]]), optim)


def test_config_presets_and_unknown_key():
    paper = sepico_config(load_config("deeplabv2", "paper"))
    assert paper.start_distribution_iter == 3000 and paper.contrast_mode == "dist" and paper.pseudo_threshold == 0.968
    tiny = sepico_config(load_config("deeplabv2", "tiny"))
    assert tiny.start_distribution_iter == 20 and tiny.proj_dim == 64
    assert sepico_config(load_config("fcn8s", "tiny")).proj_in_index == 2
    cfg = load_config("deeplabv2", "tiny")
    cfg.uda["sepico"] = dict(contrast_mod="proto")
    with pytest.raises(TrainError, match=r"uda\.sepico\.contrast_mod"):
        sepico_config(cfg)


def test_optimiser_excludes_teacher_and_gives_proj_head_head_lr(tiny_prepared):
    cfg, model, optim, _ = _setup(tiny_prepared)
    assert set(optim.keys()) == {"segmentor"}
    groups = optim["segmentor"].optimizer.param_groups
    in_opt = {id(p): g["lr"] for g in groups for p in g["params"]}
    for name in ("ema_teacher", "ema_proj_head", "class_stats"):
        assert not any(id(p) in in_opt for p in getattr(model, name).parameters())
    base_lr = cfg.optim_wrapper.optimizer.lr
    assert all(in_opt[id(p)] == pytest.approx(10 * base_lr) for p in model.proj_head.parameters())
    assert all(in_opt[id(p)] == pytest.approx(10 * base_lr) for p in model.decode_head.parameters())
    assert in_opt[id(next(model.backbone.parameters()))] == pytest.approx(base_lr)


@pytest.mark.parametrize("mode,threshold", [("dist", 0.968), ("proto", 0.0), ("bank", 0.0)])
def test_train_steps_ema_teacher_and_gated_contrast(tiny_prepared, mode, threshold):
    _, model, optim, data = _setup(tiny_prepared, mode, pseudo_threshold=threshold)
    model.train()
    logs = []
    for t in range(START + 1):
        student_before = {k: v.detach().clone() for k, v in model.student_network().named_parameters()}
        teacher_before = {k: v.detach().clone() for k, v in model.ema_teacher.named_parameters()}
        log = _step(model, optim, data, t)
        logs.append(log)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log.values()), log
        # teacher <- alpha_t teacher + (1 - alpha_t) student(before this step's update); no gradients
        alpha = ema_alpha(t, 0.999)
        assert float(log["sepico.alpha"]) == pytest.approx(alpha)
        for k, p in model.ema_teacher.named_parameters():
            expected = alpha * teacher_before[k] + (1 - alpha) * student_before[k]
            torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
            assert p.grad is None and not p.requires_grad
        assert all(p.grad is None for p in model.ema_proj_head.parameters())
    # t = 0 copied the student; t = 1 mixed with alpha 0.5
    assert logs[0]["sepico.alpha"] == 0.0 and logs[1]["sepico.alpha"] == pytest.approx(0.5)
    for log in logs:
        assert {"loss", "src.decode.loss_ce", "mix.loss_ce", "trg.pseudo_weight"} <= set(log)
    # the contrastive terms are absent before start_distribution_iter and present from it on
    for log in logs[:START]:
        assert not any("contrast" in k or "loss_reg" in k for k in log)
    last = logs[START]
    assert {"src.loss_contrast", "trg.loss_contrast", "src.loss_reg"} <= set(last)
    assert float(last["src.loss_contrast"]) > 0
    if threshold == 0.0:  # every pseudo-label confident: weight 1 outside the ignored rows
        assert float(logs[0]["trg.pseudo_weight"]) > 0.5
        assert float(last["trg.loss_contrast"]) > 0
    # class statistics were fed by the teacher's source features (sky / building / road / car seen)
    assert int(model.class_stats.initialized.sum()) >= 2


def test_contrast_reaches_projection_head(tiny_prepared):
    """After the start iteration the projection head is trained (it gets gradients and moves)."""
    _, model, optim, data = _setup(tiny_prepared, "dist", start=0)
    model.train()
    before = [p.detach().clone() for p in model.proj_head.parameters()]
    _step(model, optim, data, 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.proj_head.parameters()))


def test_cli_run_resume_and_final_export(tiny_prepared, tmp_path):
    """``python -m segmenters train --uda sepico`` (the method the package import registers): Runner
    checkpoints keep teacher / projection heads / class statistics and a resume restores them;
    final.pth holds only the EncoderDecoder and loads with the segmenter loader."""
    from segmenters import uda as uda_pkg
    from segmenters.loader import load_segmenter
    from test_segmenters_train import cli_args, run, scalars

    # registered by `import segmenters.uda` itself (a de-registration must fail here, not be patched over)
    assert isinstance(uda_pkg.METHODS.get("sepico"), SePiCo)
    assert isinstance(uda_pkg.get_method("sepico"), SePiCo)
    small = ("uda.sepico.start_distribution_iter=2", "uda.sepico.proj_dim=16")
    work = tmp_path / "run"
    first = run(cli_args(tiny_prepared, work, "sepico", "deeplabv2", max_iters=2,
                         options=("checkpoint_interval=2", *small)))
    assert (first.start_iter, first.end_iter) == (0, 2)
    ckpt2 = torch.load(work / "iter_2.pth", weights_only=False, map_location="cpu")
    for prefix in ("ema_teacher.", "ema_proj_head.", "proj_head.", "class_stats."):
        assert any(k.startswith(prefix) for k in ckpt2["state_dict"]), prefix
    assert set(ckpt2["optimizer"]) == {"segmentor"}
    count2 = ckpt2["state_dict"]["class_stats.count"].sum()
    assert count2 > 0

    second = run(cli_args(tiny_prepared, work, "sepico", "deeplabv2", "--resume", max_iters=3,
                          options=("checkpoint_interval=1", *small)))
    assert (second.start_iter, second.end_iter) == (2, 3)
    ckpt3 = torch.load(work / "iter_3.pth", weights_only=False, map_location="cpu")
    # statistics kept accumulating from the resumed state (a fresh start would hold one iteration's)
    assert ckpt3["state_dict"]["class_stats.count"].sum() > count2 * 1.4
    rows = [r for r in scalars(work) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "src.loss_contrast" not in rows[1] and "src.loss_contrast" in rows[2]  # iter index 2 = step 3
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)

    final = torch.load(second.final, weights_only=True)
    assert final["meta"]["uda"] == "sepico"
    assert not any(k.startswith(("ema_", "proj_head", "class_stats")) for k in final["state_dict"])
    for k, v in final["state_dict"].items():
        torch.testing.assert_close(v, ckpt3["state_dict"][k])
    seg = load_segmenter(second.final)
    assert seg.predict_logits(torch.full((1, 3, 32, 64), 100.0)).shape == (1, 19, 32, 64)


def test_class_balanced_crop_in_train_step(tiny_prepared):
    """CBC: a target loaded uncropped (128x64) is cropped to the source crop (32x64) on its
    pseudo-label, the teacher labels the crop again (regen_pseudo) and training proceeds."""
    cfg = load_config("deeplabv2", "tiny", SMALL + ["target_scale=(128,64)"])
    cfg.uda["sepico"] = dict(start_distribution_iter=0, proj_dim=16, pseudo_threshold=0.0, rcs_temperature=None)
    inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"])
    method = SePiCo()
    with DefaultScope.overwrite_default_scope("mmseg"):
        torch.manual_seed(0)
        model = MODELS.build(method.model(cfg, inputs))
        model.init_weights()
        ow = method.optim_wrapper(cfg)
        optim = SePiCoOptimWrapperConstructor({k: v for k, v in ow.items() if k != "constructor"})(model)
        spec = method.train_dataset(cfg, inputs)
        assert spec["type"] == "UDADataset"  # rcs off
        data = UDADataset(spec["source"], spec["target"], seed=spec["seed"])
    batch = pseudo_collate([data[0]])
    assert tuple(batch["trg"]["inputs"][0].shape[-2:]) == (64, 128)  # the target is not cropped by the pipeline
    model.train()
    model._teacher_train_mode()
    x_t = model.data_preprocessor(batch["trg"], True)["inputs"]
    probs = model.teacher_probs(x_t)
    g = torch.Generator().manual_seed(0)
    crop, crop_probs, balanced = model.class_balanced_crop(x_t, probs, (32, 64), g)
    assert crop.shape[-2:] == (32, 64) and balanced is not None and balanced.shape == (1,)
    torch.testing.assert_close(crop_probs, model.teacher_probs(crop))
    # the crop is a window of the image
    windows = x_t.unfold(2, 32, 1).unfold(3, 64, 1)  # (1, 3, 33, 65, 32, 64)
    assert any(torch.equal(windows[0, :, i, j], crop[0]) for i in range(33) for j in range(65))
    log = _step(model, optim, data, 1)
    assert "sepico.cbc_balanced" in log and all(torch.isfinite(torch.as_tensor(v)).all() for v in log.values())
    assert "trg.loss_contrast" in log


def test_rcs_and_no_crop_target_in_the_method_dataset(tiny_prepared):
    cfg = load_config("deeplabv2", "tiny", SMALL)
    inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"])
    spec = SePiCo().train_dataset(cfg, inputs)
    assert spec["type"] == "RCSUDADataset"
    assert spec["rare_class_sampling"] == dict(class_temp=0.01, min_pixels=50, min_crop_ratio=0.5)
    crop = [t for t in spec["target"]["pipeline"] if t["type"] == "RandomCrop"][0]
    assert crop["crop_size"] == (32, 64)  # = target_scale (h, w): CBC crops in the segmentor
    paper = sepico_config(load_config("deeplabv2", "paper"))
    assert (paper.pseudo_random_crop, paper.regen_pseudo) == (True, True)
    assert (paper.cat_max_ratio, paper.cbc_tries) == (0.75, 10)
    assert (paper.rcs_temperature, paper.rcs_min_pixels, paper.rcs_min_crop_ratio) == (0.01, 3000, 0.5)
    assert (paper.tau, paper.contrastive_weight, paper.reg_relative_weight, paper.alpha) == (100.0, 1.0, 1.0, 0.999)


def test_mismatched_teacher_checkpoint_is_refused(tiny_prepared, tmp_path):
    """A teacher from a checkpoint of another model: load_teacher_state names the file; a resume
    (mmengine's non-strict load) of mis-shaped SePiCo modules is an error, not a silent re-init."""
    from mmengine.runner.checkpoint import load_state_dict as mmengine_load_state_dict

    from segmenters.uda.ema import load_teacher_state

    _, model, _, _ = _setup(tiny_prepared)
    other_cfg = load_config("deeplabv2", "tiny", SMALL + ["model.decode_head.num_classes=7", "num_classes=7"])
    other_cfg.uda["sepico"] = dict(proj_dim=8)
    inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"])
    with DefaultScope.overwrite_default_scope("mmseg"):
        other = MODELS.build(SePiCo().model(other_cfg, inputs))
    path = tmp_path / "other_final.pth"
    torch.save({"meta": {}, "state_dict": other.student_network().state_dict()}, path)
    before = {k: v.clone() for k, v in model.ema_teacher.state_dict().items()}
    with pytest.raises(ValueError, match=r"other_final\.pth.*conv_seg|other_final\.pth.*shape"):
        load_teacher_state(model.ema_teacher, path)
    assert all(torch.equal(v, before[k]) for k, v in model.ema_teacher.state_dict().items())  # nothing loaded
    run_ckpt = tmp_path / "iter_2.pth"
    torch.save({"state_dict": other.state_dict()}, run_ckpt)
    with pytest.raises(ValueError, match=r"iter_2\.pth.*ema_teacher|iter_2\.pth.*shape"):
        load_teacher_state(model.ema_teacher, run_ckpt, prefix="ema_teacher.")
    # matching checkpoint loads (a final.pth student as the teacher)
    good = tmp_path / "good_final.pth"
    torch.save({"state_dict": model.student_network().state_dict()}, good)
    load_teacher_state(model.ema_teacher, good)
    with pytest.raises(TrainError, match=r"does not match this SePiCo model: ema_teacher: .*shape.*proj_dim"):
        mmengine_load_state_dict(model, other.state_dict(), strict=False)
