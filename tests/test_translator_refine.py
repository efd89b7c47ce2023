"""`python -m translators refine`: the checkpoint's own translation, every image once, atomically, resumable,
bounded memory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domains.prepared import PreparedDataset
from translators.__main__ import main
from translators.checkpoint import sha256
from translators.config import load_config
from translators.data import DataError
from translators.methods import build_method
from translators.networks import ResnetGenerator
from translators.refine import refine
from translators.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "translators" / "configs"
TINY = ["model.ngf=8", "model.ndf=8", "model.n_blocks=2", "model.n_layers_D=2", "model.netF_nc=32",
        "model.scale_mid_channels=8", "loss.nce_layers=[0,4,8,12,13]", "loss.num_patches=32",
        "data.crop=32", "data.local_crop=32", "data.global_crop=16", "data.prefetch=false",
        "refine.tile=32", "refine.global_max_side=64"]


@pytest.fixture(scope="module")
def checkpoints(tiny_prepared, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refine_ckpts")
    out = {}
    for name, method, seed in (("semst", "semst", 0), ("semst_b", "semst", 1), ("cut", "cut", 0)):
        cfg = load_config(CONFIGS / f"{method}_tiny.yaml", TINY + ["train.iters=2"])
        train(cfg, tiny_prepared["source"], tiny_prepared["target"], root / name, seed=seed, show_progress=False)
        out[name] = root / name / "final.pt"
    return out


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}


def test_refine_writes_every_image_once_and_resumes(tiny_prepared, checkpoints, tmp_path):
    src = tiny_prepared["source"]
    out = tmp_path / "refined"
    res = refine(checkpoints["semst"], src, out, split="train", show_progress=False)
    ds = PreparedDataset.load(src)
    stems = ds.stems("train")
    assert res.written == res.total == len(stems) and res.skipped == 0
    for stem in stems:  # same stems and sizes; found through the prepared contract
        refined = ds.image_path("train", stem, image_dir=out)
        assert refined.is_file()
        assert Image.open(refined).size == Image.open(ds.image_path("train", stem)).size
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == sha256(checkpoints["semst"])
    assert manifest["count"] == len(stems) and manifest["written"] == len(stems) and manifest["method"] == "semst"
    assert manifest["source_dataset"] == "tiny_source" and manifest["config"]["method"] == "semst"

    before = _mtimes(out)
    manifest_mtime = (out / "manifest.json").stat().st_mtime_ns
    rc = main(["refine", "--checkpoint", str(checkpoints["semst"]), "--source", str(src), "--out", str(out),
               "--no-progress"])
    assert rc == 0 and _mtimes(out) == before
    assert (out / "manifest.json").stat().st_mtime_ns == manifest_mtime

    # an interrupted run (one image lost) only redoes the missing one
    (out / f"{stems[3]}.png").unlink()
    res = refine(checkpoints["semst"], src, out, show_progress=False)
    assert res.written == 1 and res.skipped == len(stems) - 1

    # a different checkpoint redoes everything
    res = refine(checkpoints["semst_b"], src, out, show_progress=False)
    assert res.written == len(stems)
    assert all(_mtimes(out)[k] != v for k, v in before.items())
    assert json.loads((out / "manifest.json").read_text())["checkpoint_sha256"] == sha256(checkpoints["semst_b"])


def test_refine_cut_plain_folder_keeps_subfolders(checkpoints, tmp_path):
    src = tmp_path / "plain" / "city"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(src / "b.jpg")
    res = refine(checkpoints["cut"], tmp_path / "plain", tmp_path / "out", batch_size=2, tile_overlap=0.5,
                 show_progress=False)
    assert res.written == 2
    assert Image.open(tmp_path / "out" / "city" / "a.png").size == (70, 40)
    assert Image.open(tmp_path / "out" / "city" / "b.png").size == (36, 36)


def test_refine_large_image_uses_bounded_tiles(checkpoints, tmp_path, monkeypatch):
    """A 1024x512 image: the local generator only ever sees tiles of refine.tile, the global
    branch tiles of at most refine.global_max_side on the 2x downsampled image."""
    src = tmp_path / "big"
    src.mkdir()
    yy, xx = np.mgrid[0:512, 0:1024]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(img).save(src / "big.png")
    seen: list[tuple[int, int]] = []
    orig = ResnetGenerator.forward_with_features

    def spy(self, x, layers):
        seen.append(tuple(x.shape[-2:]))
        return orig(self, x, layers)
    monkeypatch.setattr(ResnetGenerator, "forward_with_features", spy)
    orig_fwd = ResnetGenerator.forward

    def spy_fwd(self, x, layers=None, encode_only=False):
        seen.append(tuple(x.shape[-2:]))
        return orig_fwd(self, x, layers, encode_only)
    monkeypatch.setattr(ResnetGenerator, "forward", spy_fwd)
    res = refine(checkpoints["semst"], src, tmp_path / "out", batch_size=8, show_progress=False)
    assert res.written == 1
    assert Image.open(tmp_path / "out" / "big.png").size == (1024, 512)
    assert seen and max(max(s) for s in seen) <= 64  # tiles of 32 (local) and <= 64 (global)
    assert (32, 32) in seen


def test_refine_bad_inputs(tiny_prepared, checkpoints, tmp_path, caplog):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="x.png"):
        refine(checkpoints["cut"], broken, tmp_path / "o1", show_progress=False)
    assert main(["refine", "--checkpoint", str(tmp_path / "missing.pt"), "--source", str(tiny_prepared["source"]),
                 "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "missing.pt" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["refine", "--checkpoint", str(checkpoints["cut"]), "--source", str(empty),
                 "--out", str(tmp_path / "o3"), "--no-progress"]) == 2
    assert "empty" in caplog.text


# ----------------------------------------------------------------------------- pixels
def _perturbed_checkpoint(method_name: str, path: Path) -> tuple[Path, dict]:
    """A final.pt (the layout documented in translators/checkpoint.py) whose weights are a seeded
    fresh initialisation plus large noise, so they differ from any fresh initialisation."""
    cfg = load_config(CONFIGS / f"{method_name}_tiny.yaml", TINY)
    torch.manual_seed(0)
    fresh = build_method(cfg).state_dict()
    gen = torch.Generator().manual_seed(1)
    models = {}
    for k, v in fresh.items():
        if v.is_floating_point():
            scale = max(float(v.std()) if v.numel() > 1 else 0.0, 0.05)
            v = v + 0.5 * scale * torch.randn(v.shape, generator=gen)
        models[k] = v.clone()
    ckpt = {"format": 1, "method": cfg.method, "arch": cfg.arch(), "config": cfg.to_dict(), "step": 1,
            "finished": True, "models": models}
    torch.save(ckpt, path)
    return path, fresh


def _translate_by_hand(method_name: str, state: dict, img: np.ndarray, tile: int, overlap: float,
                       batch_size: int) -> np.ndarray:
    """The method's own full-image translation of ``img`` with the given weights; the image I/O
    (uint8 RGB <-> [-1, 1] CHW) written out here rather than taken from translators.data."""
    cfg = load_config(CONFIGS / f"{method_name}_tiny.yaml", TINY)
    method = build_method(cfg)
    method.load_state_dict(state)
    method.eval()
    x = torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        y = method.translate_full(x, tile=tile, overlap=overlap, batch_size=batch_size, blend=cfg.refine.blend)
    y = y[0].permute(1, 2, 0).numpy().astype(np.float64)
    return np.clip(np.rint((y + 1.0) * 127.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method_name", ["semst", "cut"])
def test_refine_pixels_equal_the_checkpoint_translation(method_name, tmp_path):
    """The refined PNG is the loaded checkpoint's ``translate_full`` of the source image (to 8-bit
    rounding), not that of a freshly initialised translator, and the channels keep their order."""
    ckpt, fresh = _perturbed_checkpoint(method_name, tmp_path / "final.pt")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:70]
    img = np.stack([4 * xx, 6 * yy, np.full_like(xx, 40)], -1) + rng.integers(0, 60, (40, 70, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)  # red and green ramps, flat blue: channel order matters
    Image.fromarray(img).save(src / "scene.png")
    rc = main(["refine", "--checkpoint", str(ckpt), "--source", str(src), "--out", str(tmp_path / "out"),
               "--tile", "32", "--tile-overlap", "0.25", "--batch-size", "2", "--device", "cpu", "--no-progress"])
    assert rc == 0
    with Image.open(tmp_path / "out" / "scene.png") as im:
        assert im.mode == "RGB"
        refined = np.asarray(im).astype(int)

    trained = torch.load(ckpt, weights_only=True)["models"]
    want = _translate_by_hand(method_name, trained, img, 32, 0.25, 2).astype(int)
    assert refined.shape == want.shape == (40, 70, 3)
    assert np.abs(refined - want).max() <= 1
    # the check has teeth: fresh weights (the very initialisation the checkpoint was perturbed
    # from), the input's channels swapped, or the output left un-normalised all land far away
    untrained = _translate_by_hand(method_name, fresh, img, 32, 0.25, 2).astype(int)
    assert np.abs(untrained - want).mean() > 10 and np.abs(untrained - want).max() > 50
    swapped = _translate_by_hand(method_name, trained, img[..., ::-1].copy(), 32, 0.25, 2).astype(int)
    assert np.abs(swapped - want).mean() > 5
    assert np.abs(want[..., ::-1] - want).mean() > 5
