"""segmenters.compat: the mmcv.ops stand-in (fresh interpreters) and the torch.load weights_only policy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"subprocess failed:\nSTDOUT\n{proc.stdout[-3000:]}\nSTDERR\n{proc.stderr[-5000:]}"
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fresh_interpreter_imports_mmseg_models_and_trains_one_step():
    proc = run_python("""
        import json, sys
        import segmenters
        import mmseg.models
        import torch
        from mmengine.config import ConfigDict
        from mmengine.optim import OptimWrapper
        from mmengine.registry import DefaultScope
        from mmengine.structures import PixelData
        from mmseg.registry import MODELS
        from mmseg.structures import SegDataSample
        from segmenters import compat

        torch.manual_seed(0)
        stand_in = compat.is_stand_in(sys.modules["mmcv.ops"])
        cfg = ConfigDict(
            type="EncoderDecoder",
            data_preprocessor=dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                                   std=[58.395, 57.12, 57.375], bgr_to_rgb=True, size=(32, 64)),
            backbone=dict(type="ResNetV1c", depth=18, stem_channels=8, base_channels=8,
                          dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), contract_dilation=True),
            decode_head=dict(type="DLV2Head", in_channels=64, in_index=3, num_classes=19,
                             loss_decode=dict(type="CrossEntropyLoss", avg_non_ignore=True)),
            train_cfg=dict(), test_cfg=dict(mode="whole"))
        with DefaultScope.overwrite_default_scope("mmseg"):
            model = MODELS.build(cfg)
        model.init_weights()
        samples = []
        for _ in range(2):
            s = SegDataSample()
            s.gt_sem_seg = PixelData(data=torch.randint(0, 19, (1, 32, 64)))
            s.set_metainfo(dict(img_shape=(32, 64), ori_shape=(32, 64)))
            samples.append(s)
        data = dict(inputs=[torch.randint(0, 256, (3, 32, 64), dtype=torch.uint8) for _ in range(2)],
                    data_samples=samples)
        wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
        before = model.decode_head.aspp_modules[0].conv.weight.detach().clone()
        log_vars = model.train_step(data, wrapper)
        changed = not torch.equal(before, model.decode_head.aspp_modules[0].conv.weight)
        print(json.dumps(dict(stand_in=stand_in, loss=float(log_vars["loss"]), changed=changed,
                              has_ps=callable(sys.modules["mmcv.ops"].point_sample))))
    """)
    out = last_json(proc)
    assert out["stand_in"] is True
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    assert out["changed"] and out["has_ps"]


def test_stand_in_steps_aside_for_an_existing_mmcv_ops():
    """A compiled mmcv makes `mmcv.ops` importable: segmenters must use it, not the stand-in."""
    proc = run_python("""
        import json, sys, types
        import importlib.util, mmcv, pathlib
        spec = importlib.util.spec_from_file_location(
            "ps", pathlib.Path(mmcv.__file__).parent / "ops" / "point_sample.py")
        ps = importlib.util.module_from_spec(spec); spec.loader.exec_module(ps)
        sentinel = types.ModuleType("mmcv.ops")
        sentinel.SENTINEL = 1234
        sentinel.point_sample = ps.point_sample
        sentinel.sigmoid_focal_loss = lambda *a, **k: None
        def missing(name):  # the compiled module has every op; mmseg only needs the try/except ones
            if name.startswith("__"):
                raise AttributeError(name)
            raise ModuleNotFoundError(name)
        sentinel.__getattr__ = missing
        sys.modules["mmcv.ops"] = sentinel
        mmcv.ops = sentinel
        import segmenters
        import mmseg.models
        from segmenters import compat
        ops = sys.modules["mmcv.ops"]
        print(json.dumps(dict(sentinel=getattr(ops, "SENTINEL", None), stand_in=compat.is_stand_in(ops),
                              install=compat.install_mmcv_ops_stand_in())))
    """)
    assert last_json(proc) == {"sentinel": 1234, "stand_in": False, "install": False}


def test_stand_in_not_installed_when_compiled_extension_present(monkeypatch):
    """With a (fake) compiled `mmcv._ext` importable and mmcv.ops not yet imported: no stand-in."""
    import types

    from segmenters import compat

    monkeypatch.delitem(sys.modules, "mmcv.ops", raising=False)
    monkeypatch.setitem(sys.modules, "mmcv._ext", types.ModuleType("mmcv._ext"))
    assert compat.compiled_mmcv_available()
    assert compat.install_mmcv_ops_stand_in() is False
    assert "mmcv.ops" not in sys.modules
    monkeypatch.delitem(sys.modules, "mmcv._ext")
    assert not compat.compiled_mmcv_available()  # mmcv-lite here: no compiled extension on disk


def test_stand_in_getattr_behaviour():
    import segmenters  # noqa: F401
    from segmenters import compat

    ops = sys.modules["mmcv.ops"]
    if not compat.is_stand_in(ops):
        pytest.skip("a compiled mmcv is installed; the stand-in is not used")
    import mmcv

    assert mmcv.ops is ops
    with pytest.raises(AttributeError):
        ops.__file__  # noqa: B018  (inspect probes dunders: must be AttributeError)
    assert not hasattr(ops, "__path__")
    with pytest.raises(ModuleNotFoundError, match="compiled mmcv ops"):
        ops.CrissCrossAttention  # noqa: B018
    with pytest.raises(ImportError):  # what mmseg's `try: from mmcv.ops import X` blocks catch
        from mmcv.ops import PSAMask  # noqa: F401
    with pytest.raises(ImportError):
        import mmcv.ops.multi_scale_deform_attn  # noqa: F401
    with pytest.raises(RuntimeError, match="compiled mmcv"):
        ops.sigmoid_focal_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    # point_sample is mmcv's own pure-torch implementation
    feats = torch.arange(16.0).reshape(1, 1, 4, 4)
    centre = ops.point_sample(feats, torch.tensor([[[0.5, 0.5]]]), align_corners=False)
    assert centre.shape == (1, 1, 1)
    assert torch.allclose(centre, feats.mean().reshape(1, 1, 1))


def _runner_like_checkpoint(path: Path) -> None:
    from mmengine.logging import HistoryBuffer

    hb = HistoryBuffer()
    hb.update(1.5)
    torch.save({"meta": {"iter": 3, "seed": np.int64(0)}, "message_hub": {"log_scalars": {"loss": hb}},
                "state_dict": {"w": torch.ones(2)}}, path)


def test_trusted_checkpoints_scoped_to_run_dir(tmp_path):
    from mmengine.runner.checkpoint import _load_checkpoint

    from segmenters.compat import load_untrusted, trusted_checkpoints

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    own = run_dir / "iter_3.pth"
    _runner_like_checkpoint(own)
    foreign = tmp_path / "user.pth"
    _runner_like_checkpoint(foreign)

    with pytest.raises(Exception, match="(?i)weights only"):
        _load_checkpoint(str(own), map_location="cpu")  # torch>=2.6 default breaks mmengine resume
    original = torch.load
    with trusted_checkpoints(run_dir):
        ckpt = _load_checkpoint(str(own), map_location="cpu")  # mmengine's own loader, as Runner.resume
        assert ckpt["meta"]["iter"] == 3
        with pytest.raises(Exception, match="(?i)weights only"):
            _load_checkpoint(str(foreign), map_location="cpu")
    assert torch.load is original
    with pytest.raises(ValueError, match="user.pth"):
        load_untrusted(foreign)
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pth")
    assert torch.equal(load_untrusted(tmp_path / "plain.pth")["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_untrusted(tmp_path / "missing.pth")
