"""final.pth contract: save_final / load_segmenter round trip, clear errors, differentiable predictions."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import segmenters  # noqa: F401
from segmenters.checkpoint import build_segmentor, save_final
from segmenters.configs import load_config
from segmenters.loader import load_segmenter


#: modules of the real UDA models that must not reach final.pth: SePiCo keeps a whole EMA-teacher
#: EncoderDecoder (same key names under ``ema_teacher.``), projection heads and class statistics next
#: to the student; BDL a discriminator. ``module`` is nn.DataParallel's prefix.
EXTRA_PREFIXES = ("discriminator", "ema_teacher", "ema_proj_head", "proj_head", "class_stats", "module")


def build_uda_model(uda: str, cfg) -> nn.Module:
    """The training model of UDA method ``uda`` as ``segmenters train`` builds it."""
    from pathlib import Path

    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    from segmenters.uda import TrainInputs, get_method

    inputs = TrainInputs(source=Path("unused_source"), target=Path("unused_target"))
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(get_method(uda).model(cfg, inputs))


def make_final(tmp_path, arch: str = "deeplabv2", name: str = "final.pth", uda: str | None = "sepico",
               data_parallel: bool = False):
    """final.pth of a tiny ``arch`` with a non-trivial head, saved from the real training model of
    ``uda`` (None: a plain EncoderDecoder) whose extra modules hold other weights than the student,
    optionally inside ``nn.DataParallel`` (keys under ``module.``). Returns (the model, path)."""
    torch.manual_seed(0)
    cfg = load_config(arch, "tiny")
    model = build_uda_model(uda, cfg) if uda else build_segmentor(cfg.model)
    model.init_weights()
    for p in model.decode_head.parameters():  # non-trivial head (FCN-8s scores are zero-initialised)
        nn.init.normal_(p, std=0.05)
    with torch.no_grad():                     # extra weights differ from the student's, as after training
        for extra in getattr(model, "extra_modules", ()):
            for p in getattr(model, extra).parameters():
                p.add_(torch.randn_like(p))
    meta = dict(arch=arch, preset="tiny", num_classes=19, uda=uda or "source_only", iter=5,
                test_scale=cfg.test_scale, model_cfg=cfg.model)
    # .cpu(): with one visible GPU, DataParallel moves the module there
    path = save_final(nn.DataParallel(model).cpu() if data_parallel else model, meta, tmp_path / name)
    return model.eval(), path


def reference_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    pre = model.data_preprocessor
    x = (images - pre.mean.view(1, 3, 1, 1)) / pre.std.view(1, 3, 1, 1)
    with torch.no_grad():
        return model.encode_decode(x, [dict(img_shape=images.shape[-2:])] * images.shape[0])


@pytest.mark.parametrize("arch, uda, data_parallel", [("deeplabv2", "sepico", False), ("fcn8s", "bdl", False),
                                                     ("fcn8s", "sepico", True)])
def test_round_trip_identical_logits(tmp_path, arch, uda, data_parallel):
    model, path = make_final(tmp_path, arch, uda=uda, data_parallel=data_parallel)
    assert path.is_file() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    raw = torch.load(path, weights_only=True)  # the contract: loadable with weights_only=True
    assert set(raw) == {"meta", "state_dict"}
    assert not any(k.startswith(EXTRA_PREFIXES) for k in raw["state_dict"])
    student = {k: v for k, v in model.state_dict().items() if not k.startswith(EXTRA_PREFIXES)}
    assert set(raw["state_dict"]) == set(student)
    assert all(torch.equal(raw["state_dict"][k], v) for k, v in student.items())   # the student, not the teacher
    assert raw["meta"]["model_cfg"]["type"] == "EncoderDecoder" and raw["meta"]["test_scale"] == [256, 128]

    seg = load_segmenter(path, expect_num_classes=19, expect_arch=arch)
    assert seg.num_classes == 19 and seg.test_scale == (256, 128) and seg.meta["uda"] == uda
    assert seg.device == torch.device("cpu") and not seg.model.training
    assert all(not p.requires_grad for p in seg.model.parameters())
    images = torch.rand(2, 3, 64, 128) * 255
    with torch.inference_mode():
        logits = seg.predict_logits(images)
        probs = seg.predict_probs(images)
    assert logits.shape == (2, 19, 64, 128) and logits.dtype == torch.float32
    assert torch.allclose(logits, reference_logits(model, images), atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(2, 64, 128), atol=1e-5)


def test_any_input_size_and_scale(tmp_path):
    _, path = make_final(tmp_path, "fcn8s", uda=None)
    seg = load_segmenter(path)
    for h, w in ((37, 53), (128, 256), (17, 200)):
        with torch.no_grad():
            assert seg.predict_logits(torch.rand(1, 3, h, w) * 255).shape == (1, 19, h, w)
    with torch.no_grad():
        out = seg.predict_logits(torch.rand(1, 3, 50, 70) * 255, scale=seg.test_scale)
    assert out.shape == (1, 19, 50, 70)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        seg.predict_logits(torch.rand(3, 32, 32))


def test_predict_logits_is_differentiable_wrt_images(tmp_path):
    _, path = make_final(tmp_path, "deeplabv2")
    seg = load_segmenter(path)
    images = (torch.rand(1, 3, 32, 64) * 255).requires_grad_(True)
    loss = seg.predict_probs(images)[:, 0].mean()
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in seg.model.parameters())


def test_errors_name_the_file(tmp_path):
    _, path = make_final(tmp_path, "deeplabv2")
    with pytest.raises(ValueError, match=r"final\.pth.*19 classes, expected 16"):
        load_segmenter(path, expect_num_classes=16)
    with pytest.raises(ValueError, match=r"final\.pth.*'deeplabv2', expected 'fcn8s'"):
        load_segmenter(path, expect_arch="fcn8s")

    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(1)}, plain)
    with pytest.raises(ValueError, match=r"plain\.pth: not a segmenter final\.pth"):
        load_segmenter(plain)

    # weights of another architecture under this meta
    _, fcn_path = make_final(tmp_path, "fcn8s", name="fcn.pth")
    swapped = tmp_path / "swapped.pth"
    good = torch.load(path, weights_only=True)
    torch.save({"meta": good["meta"], "state_dict": torch.load(fcn_path, weights_only=True)["state_dict"]}, swapped)
    with pytest.raises(ValueError, match=r"swapped\.pth: weights do not fit"):
        load_segmenter(swapped)

    runner_ckpt = tmp_path / "iter_5.pth"
    from mmengine.logging import HistoryBuffer
    torch.save({"meta": {"hb": HistoryBuffer()}, "state_dict": {}}, runner_ckpt)
    with pytest.raises(ValueError, match=r"iter_5\.pth.*weights_only"):
        load_segmenter(runner_ckpt)


def test_save_final_validates_meta_and_is_atomic(tmp_path):
    torch.manual_seed(0)
    cfg = load_config("fcn8s", "tiny")
    model = build_segmentor(cfg.model)
    meta = dict(arch="fcn8s", preset="tiny", num_classes=19, uda="bdl", iter=1, test_scale=(256, 128),
                model_cfg=cfg.model)
    with pytest.raises(ValueError, match="meta lacks.*iter"):
        save_final(model, {k: v for k, v in meta.items() if k != "iter"}, tmp_path / "a.pth")
    with pytest.raises(ValueError, match="num_classes=16"):
        save_final(model, dict(meta, num_classes=16), tmp_path / "a.pth")
    other = build_segmentor(load_config("deeplabv2", "tiny").model)
    with pytest.raises(ValueError, match="does not contain the EncoderDecoder"):
        save_final(other, meta, tmp_path / "a.pth")
    assert not (tmp_path / "a.pth").exists() and not list(tmp_path.iterdir())

    target = tmp_path / "sub" / "final.pth"
    target.parent.mkdir()
    target.write_bytes(b"old")
    save_final(model, meta, target)
    assert load_segmenter(target).meta["uda"] == "bdl"
    assert [p.name for p in target.parent.iterdir()] == ["final.pth"]
