"""`python -m translators refine`: the checkpoint's own translation, every image once, atomically, resumable,
bounded memory."""
from __future__ import annotations

import datetime
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domains.prepared import PreparedDataset
from translators.__main__ import main
from translators.checkpoint import CheckpointError, sha256
from translators.config import ConfigError, load_config
from translators.data import DataError
from translators.methods import build_method
from translators.networks import ResnetGenerator
from translators.refine import RefineResult, output_name, refine
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


# ----------------------------------------------------------------------------- options, names, manifest, resume
class _Clock:
    """``time`` for translators.refine: time() alternates 1000.0 (start) and 1001.23456 (end of the
    run), so the manifest's ``seconds`` is known exactly; strftime is the real one."""

    def __init__(self):
        self.calls = 0

    def time(self) -> float:
        self.calls += 1
        return 1000.0 if self.calls % 2 else 1001.23456

    strftime = staticmethod(__import__("time").strftime)


def _hand_translate_resized(state: dict, cfg, img: np.ndarray, short: int, tile: int, overlap: float,
                            blend: str) -> np.ndarray:
    """data.resize_short by hand: bicubic to the short side, translate, bicubic back to the source size."""
    h, w = img.shape[:2]
    s = short / min(h, w)
    small = np.asarray(Image.fromarray(img).resize((round(w * s), round(h * s)), Image.BICUBIC))
    method = build_method(cfg)
    method.load_state_dict(state)
    method.eval()
    x = torch.from_numpy(small.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        y = method.translate_full(x, tile=tile, overlap=overlap, batch_size=1, blend=blend)
    y = np.clip(np.rint((y[0].permute(1, 2, 0).numpy().astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(y).resize((w, h), Image.BICUBIC))


def test_refine_options_reach_every_image(tmp_path, monkeypatch, capsys):
    """--tile/--tile-overlap/--batch-size and the checkpoint's refine.blend and data.resize_short
    are what every image of the folder (nested sub-folders kept) is translated with."""
    cfg = load_config(CONFIGS / "cut_tiny.yaml", TINY + ["data.resize_short=36", "refine.blend=mean"])
    torch.manual_seed(0)
    state = {k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in build_method(cfg).state_dict().items()}
    ckpt = tmp_path / "final.pt"
    torch.save({"format": 1, "method": cfg.method, "arch": cfg.arch(), "config": cfg.to_dict(), "step": 1,
                "finished": True, "models": state}, ckpt)
    src = tmp_path / "plain"
    (src / "x" / "y").mkdir(parents=True)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:40, 0:70]
    imgs = {}
    for k, name in enumerate(("a", "b", "c")):  # distinct images: each output must be its own input's
        img = np.stack([(4 * xx + 50 * k) % 256, (6 * yy + 90 * k) % 256, np.full_like(xx, 40 * k)], -1)
        imgs[f"x/y/{name}"] = np.clip(img + rng.integers(0, 40, (40, 70, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(imgs[f"x/y/{name}"]).save(src / f"x/y/{name}.png")
    batches: list[int] = []
    orig_fwd = ResnetGenerator.forward

    def spy_fwd(self, x, layers=None, encode_only=False):
        batches.append(x.shape[0])
        return orig_fwd(self, x, layers, encode_only)
    monkeypatch.setattr(ResnetGenerator, "forward", spy_fwd)
    out = tmp_path / "not" / "yet" / "out"  # parents created
    res = refine(ckpt, src, out, tile=16, tile_overlap=0.5, batch_size=3, device="cpu")  # progress bar on
    assert res.written == 3 and res.total == 3
    assert max(batches) == 3 and 3 in batches  # 16-px tiles, three per forward pass
    err = capsys.readouterr().err
    assert "refine" in err and "3/3" in err
    for stem, img in imgs.items():
        with Image.open(out / f"{stem}.png") as im:
            got = np.asarray(im).astype(int)
        want = _hand_translate_resized(state, cfg, img, 36, 16, 0.5, "mean").astype(int)
        assert got.shape == want.shape == (40, 70, 3)
        assert np.abs(got - want).max() <= 1, stem
    # teeth: the other blend, tile, overlap each land elsewhere
    img = imgs["x/y/a"]
    want = _hand_translate_resized(state, cfg, img, 36, 16, 0.5, "mean").astype(int)
    for other in ((16, 0.5, "linear"), (32, 0.5, "mean"), (16, 0.25, "mean")):
        assert np.abs(_hand_translate_resized(state, cfg, img, 36, *other).astype(int) - want).max() > 1, other
    m = json.loads((out / "manifest.json").read_text())
    assert (m["tile"], m["tile_overlap"], m["batch_size"], m["device"]) == (16, 0.5, 3, "cpu")
    assert m["img_suffix"] == ".png" and m["split"] == "train"


def _suffix_dataset(tiny_prepared, root: Path, suffix: str) -> Path:
    """The tiny target with its images renamed to ``<stem><suffix>`` (like Cityscapes' _leftImg8bit.png)."""
    target = root / "suffixed"
    shutil.copytree(tiny_prepared["target"], target)
    meta = json.loads((target / "meta.json").read_text())
    for split, info in meta["splits"].items():
        img_dir = root / "images" / split
        img_dir.mkdir(parents=True)
        for stem in (target / f"{split}.txt").read_text().split():
            shutil.copy(Path(info["image_dir"]) / f"{stem}{info['img_suffix']}", img_dir / f"{stem}{suffix}")
        info.update(image_dir=str(img_dir), img_suffix=suffix)
    meta["dataset"] = "suffixed"
    (target / "meta.json").write_text(json.dumps(meta))
    return target


def test_refine_split_suffix_manifest_and_resume(tiny_prepared, tmp_path, monkeypatch):
    ckpt, _ = _perturbed_checkpoint("cut", tmp_path / "final.pt")
    src = _suffix_dataset(tiny_prepared, tmp_path, "_leftImg8bit.PNG")
    ds = PreparedDataset.load(src)
    stems = ds.stems("val")
    out = tmp_path / "refined"
    (out / "sub").mkdir(parents=True)
    for stale in (out / ".00000_leftImg8bit.PNG.tmp-123", out / "sub" / ".x.png.tmp-9"):
        stale.write_bytes(b"half-written")
    (out / "keep.txt").write_text("not ours")
    clock = _Clock()
    monkeypatch.setattr("translators.refine.time", clock)

    res = refine(ckpt, src, out, split="val", device="cpu", show_progress=False)
    assert res == RefineResult(out, len(stems), len(stems), 0)
    assert sorted(p.name for p in out.rglob("*.PNG")) == [f"{s}_leftImg8bit.PNG" for s in stems]
    assert all(ds.image_path("val", s, image_dir=out).is_file() for s in stems)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name] and (out / "keep.txt").is_file()
    m = json.loads((out / "manifest.json").read_text())
    saved = torch.load(ckpt, weights_only=True)
    assert set(m) == {"checkpoint", "checkpoint_sha256", "method", "train_step", "config", "source",
                      "source_dataset", "split", "img_suffix", "count", "written", "skipped", "tile",
                      "tile_overlap", "batch_size", "device", "seconds", "created"}
    assert m["checkpoint"] == str(ckpt.resolve()) and m["train_step"] == saved["step"] == 1
    assert m["config"] == saved["config"] and m["source"] == str(src.resolve())
    assert (m["source_dataset"], m["split"], m["img_suffix"]) == ("suffixed", "val", "_leftImg8bit.PNG")
    assert (m["count"], m["written"], m["skipped"]) == (len(stems), len(stems), 0)
    rc = load_config(CONFIGS / "cut_tiny.yaml", TINY).refine  # defaults of the checkpoint's config
    assert (m["tile"], m["tile_overlap"], m["batch_size"], m["device"]) == (32, rc.tile_overlap, rc.batch_size, "cpu")
    assert m["seconds"] == 1.235
    created = datetime.datetime.strptime(m["created"], "%Y-%m-%dT%H:%M:%S%z")
    assert abs(created.timestamp() - time.time()) < 600

    # everything done: nothing redone, the manifest untouched (an overlap of 0 is valid)
    res = refine(ckpt, src, out, split="val", tile_overlap=0.0, device="cpu", show_progress=False)
    assert res == RefineResult(out, len(stems), 0, len(stems))
    # the manifest lost (killed after the last image): it is rewritten, no image redone
    (out / "manifest.json").unlink()
    res = refine(ckpt, src, out, split="val", device="cpu", show_progress=False)
    assert res == RefineResult(out, len(stems), 0, len(stems))
    m = json.loads((out / "manifest.json").read_text())
    assert (m["count"], m["written"], m["skipped"]) == (len(stems), 0, len(stems))
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=rf"--tile-overlap must be in \[0, 1\), got {bad}"):
            refine(ckpt, src, out, split="val", tile_overlap=bad, device="cpu", show_progress=False)


def test_output_name_keeps_png_suffixes_only():
    assert output_name("a/b", "_leftImg8bit.png") == "a/b_leftImg8bit.png"
    assert output_name("a", "_leftImg8bit.PNG") == "a_leftImg8bit.PNG"
    assert output_name("a", ".jpg") == "a.png"
    assert output_name("a", None) == "a.png" and output_name("", ".png") == ".png"


def test_refine_failure_keeps_finished_images_and_resumes(tmp_path):
    """A bad image stops the run with its name; the images before it are complete files (no temp
    files), .progress lists those whose write was confirmed (at most two wait for their write),
    and the rerun redoes only the rest."""
    ckpt, _ = _perturbed_checkpoint("cut", tmp_path / "final.pt")
    src = tmp_path / "plain"
    src.mkdir()
    rng = np.random.default_rng(1)
    for name in "abce":  # c (its write still running when d fails) large enough to take a while
        size = (192, 288, 3) if name == "c" else (32, 48, 3)
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(src / f"{name}.png")
    (src / "d.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="d.png"):
        refine(ckpt, src, out, device="cpu", show_progress=False)
    assert (out / ".progress").read_text().splitlines() == [sha256(ckpt), "a"]
    assert sorted(p.name for p in out.iterdir()) == [".progress", "a.png", "b.png", "c.png"]
    for name, size in zip("abc", ((48, 32), (48, 32), (288, 192))):
        with Image.open(out / f"{name}.png") as im:
            assert im.size == size
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(src / "d.png")
    res = refine(ckpt, src, out, device="cpu", show_progress=False)
    assert (res.written, res.skipped) == (4, 1)


def test_refine_checkpoint_errors_name_the_file(tmp_path):
    ckpt, _ = _perturbed_checkpoint("cut", tmp_path / "final.pt")
    src = tmp_path / "plain"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "a.png")
    saved = torch.load(ckpt, weights_only=True)
    arch = dict(saved, arch={**saved["arch"], "model.ngf": 16})
    torch.save(arch, tmp_path / "odd_arch.pt")
    with pytest.raises(ConfigError, match="odd_arch.pt"):
        refine(tmp_path / "odd_arch.pt", src, tmp_path / "o1", device="cpu", show_progress=False)
    config = dict(saved, config={**saved["config"], "refine": {**saved["config"]["refine"], "tile_overlap": 2.0}})
    torch.save(config, tmp_path / "bad_config.pt")
    with pytest.raises(CheckpointError, match="bad_config.pt"):
        refine(tmp_path / "bad_config.pt", src, tmp_path / "o2", device="cpu", show_progress=False)
