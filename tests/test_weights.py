"""Pretrained weights (domains/weights.py): registry, cache, resolve, fetch; loading at the paper presets.

Weight files are built here from the real architectures with random weights and saved in the
layouts of the downloads (mmseg zoo ResNetV1c-101 under ``state_dict`` with an ImageNet ``fc``,
torchvision vgg16 / vgg19 state dicts), under the registry's file names in a cache folder that
``$SEMST_WEIGHTS_DIR`` points at; nothing is downloaded (fetch is tested with file:// URLs).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from domains import weights as dw
from segmenters.checkpoint import build_segmentor, load_init_weights
from segmenters.configs import load_config

ROOT = Path(__file__).resolve().parents[1]
R101 = dw.REGISTRY["resnet101_v1c"]
VGG16 = dw.REGISTRY["vgg16"]
VGG19 = dw.REGISTRY["vgg19"]
INCEPTION = dw.REGISTRY["pt_inception"]


# ------------------------------------------------------------------ weight files (built once per module)
def _randomised(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Every float tensor (BN statistics included) replaced by random values, so 'loaded' is visible."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()) for k, v in state.items()}


def _resnet_v1c_zoo_state(depth: int, seed: int) -> dict[str, torch.Tensor]:
    from mmseg.models.backbones import ResNetV1c

    state = _randomised(ResNetV1c(depth=depth).state_dict(), seed)
    state["fc.weight"] = torch.randn(1000, 2048)          # the ImageNet classifier of a zoo file
    state["fc.bias"] = torch.randn(1000)
    return state


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """A cache folder holding the registry's files (ResNetV1c-101, vgg16, vgg19) built locally."""
    folder = tmp_path_factory.mktemp("zoo")
    torch.save({"state_dict": _resnet_v1c_zoo_state(101, 1), "meta": {"note": "zoo layout"}}, folder / R101.filename)
    torch.manual_seed(2)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), folder / VGG16.filename)
    torch.manual_seed(3)
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), folder / VGG19.filename)
    return folder


@pytest.fixture()
def use_zoo(zoo, monkeypatch) -> Path:
    monkeypatch.setenv(dw.WEIGHTS_DIR_ENV, str(zoo))
    return zoo


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(dw.WEIGHTS_DIR_ENV, str(folder))
    return folder


@pytest.fixture(scope="module")
def deeplab_paper() -> torch.nn.Module:
    return build_segmentor(load_config("deeplabv2", "paper").model)


@pytest.fixture(scope="module")
def fcn_paper() -> torch.nn.Module:
    return build_segmentor(load_config("fcn8s", "paper").model)


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# ------------------------------------------------------------------ registry, cache folder, resolve
def test_registry_entries_name_their_files_urls_and_hashes():
    from torch.hub import HASH_REGEX

    assert {"resnet101_v1c", "vgg16", "vgg19", "pt_inception"} <= set(dw.REGISTRY)
    for name, entry in dw.REGISTRY.items():
        assert entry.name == name and entry.url.rsplit("/", 1)[1] == entry.filename
        assert entry.hash_prefix == HASH_REGEX.search(entry.filename).group(1)   # what torch hub would check
        assert entry.initialises and entry.config_key
    import mmengine.hub

    openmmlab = json.loads((Path(mmengine.hub.__file__).parent / "openmmlab.json").read_text())
    assert R101.url == openmmlab["resnet101_v1c"]                # = open-mmlab://resnet101_v1c
    assert [R101.config_key, VGG16.config_key, VGG19.config_key] == ["init_from", "init_from", "uda.vgg19_weights"]
    with pytest.raises(TypeError):
        dw.REGISTRY["x"] = R101                                  # read-only


def test_cache_folder_is_torch_hub_checkpoints_unless_overridden(tmp_path, monkeypatch):
    monkeypatch.delenv(dw.WEIGHTS_DIR_ENV, raising=False)
    assert dw.cache_dir() == Path(torch.hub.get_dir()) / "checkpoints"
    monkeypatch.setenv(dw.WEIGHTS_DIR_ENV, str(tmp_path))
    assert dw.cache_dir() == tmp_path and dw.cached_path(VGG16) == tmp_path / VGG16.filename


def test_resolve_names_and_paths_and_explains_a_missing_file(tmp_path, empty_cache):
    with pytest.raises(dw.MissingWeightsError) as err:
        dw.resolve("resnet101_v1c", "init_from")
    msg = _one_line(str(err.value))
    assert isinstance(err.value, FileNotFoundError)
    for part in (R101.filename, R101.url, "init_from", "python -m domains.weights fetch resnet101_v1c",
                 str(empty_cache), dw.WEIGHTS_DIR_ENV):
        assert part in msg, part
    empty_cache.mkdir()
    (empty_cache / R101.filename).write_bytes(b"x")
    assert dw.resolve("resnet101_v1c", "init_from") == empty_cache / R101.filename
    local = tmp_path / "my_copy.pth"
    local.write_bytes(b"x")
    assert dw.resolve(str(local), "init_from") == local
    with pytest.raises(dw.MissingWeightsError, match=r"init_from.*nope\.pth.*not found.*vgg16"):
        dw.resolve(tmp_path / "nope.pth", "init_from")
    with pytest.raises(dw.MissingWeightsError, match=re.escape(VGG16.url)):   # a registry file name: its URL
        dw.resolve(tmp_path / VGG16.filename, "init_from")


# ------------------------------------------------------------------ fetch / list (file:// URLs)
def _served_file(tmp_path: Path, payload: bytes) -> tuple[Path, str]:
    src = tmp_path / "server" / "w.pth"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(payload)
    return src, hashlib.sha256(payload).hexdigest()


def test_fetch_downloads_into_the_cache_and_list_shows_it(tmp_path, empty_cache, capsys):
    src, sha = _served_file(tmp_path, b"weights" * 1000)
    entry = dw.WeightFile("demo", f"demo-{sha[:8]}.pth", src.as_uri(), "a test file", "init_from", sha[:8])
    other = dw.WeightFile("other", "other-00000000.pth", (tmp_path / "absent.pth").as_uri(), "absent", "init_from")
    registry = {"demo": entry, "other": other}
    assert dw.main(["list"], registry=registry) == 0
    out = capsys.readouterr().out
    assert re.search(r"demo\s+missing\s+demo-", out) and re.search(r"other\s+missing", out) and src.as_uri() in out
    assert dw.main(["fetch", "demo", "--no-progress"], registry=registry) == 0
    dst = empty_cache / entry.filename
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in empty_cache.iterdir()) == [entry.filename]   # no temporary file left
    capsys.readouterr()
    assert dw.main(["list"], registry=registry) == 0
    out = capsys.readouterr().out
    assert re.search(r"demo\s+present", out) and re.search(r"other\s+missing", out) and str(dst) in out
    src.write_bytes(b"changed")                                  # present: not downloaded again
    assert dw.main(["fetch", "demo", "--no-progress"], registry=registry) == 0 and dst.read_bytes() != b"changed"


def test_fetch_hash_mismatch_or_bad_url_fails_cleanly(tmp_path, empty_cache, capsys):
    src, sha = _served_file(tmp_path, b"not the published file")
    wrong = "0" * 8 if not sha.startswith("0" * 8) else "1" * 8
    registry = {"bad": dw.WeightFile("bad", f"bad-{wrong}.pth", src.as_uri(), "x", "init_from", wrong),
                "gone": dw.WeightFile("gone", "gone.pth", (tmp_path / "none.pth").as_uri(), "x", "init_from")}
    assert dw.main(["fetch", "bad", "--no-progress"], registry=registry) == 2
    msg = _one_line(capsys.readouterr().err)
    assert msg.startswith("error: bad:") and "invalid hash value" in msg and src.as_uri() in msg
    assert not empty_cache.exists() or list(empty_cache.iterdir()) == []          # nothing, not even a part file
    assert dw.main(["fetch", "gone", "--no-progress"], registry=registry) == 2
    assert "gone.pth" in _one_line(capsys.readouterr().err) and not (empty_cache / "gone.pth").exists()
    assert dw.main(["fetch", "nope"], registry=registry) == 2
    assert "unknown weights name 'nope'" in _one_line(capsys.readouterr().err)


def test_list_cli_runs_as_a_module(empty_cache):
    res = subprocess.run([sys.executable, "-m", "domains.weights", "list"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    for entry in dw.REGISTRY.values():
        assert re.search(rf"{entry.name}\s+missing\s+{re.escape(entry.filename)}", res.stdout)
        assert entry.url in res.stdout and str(empty_cache / entry.filename) in res.stdout


# ------------------------------------------------------------------ DeepLab-V2 ResNet-101 (paper)
def test_paper_presets_default_to_pretrained_and_tiny_to_scratch():
    assert load_config("deeplabv2", "paper").init_from == "resnet101_v1c"
    assert load_config("fcn8s", "paper").init_from == "vgg16"
    for arch in ("deeplabv2", "fcn8s"):
        assert load_config(arch, "paper").uda.vgg19_weights == "vgg19"
        tiny = load_config(arch, "tiny")
        assert tiny.init_from is None and tiny.uda.vgg19_weights is None


def test_resnet101_zoo_file_initialises_the_paper_deeplab_backbone(deeplab_paper, use_zoo, caplog):
    head_before = {k: v.clone() for k, v in deeplab_paper.decode_head.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="segmenters.checkpoint"):
        report = load_init_weights(deeplab_paper, "resnet101_v1c")
    saved = torch.load(use_zoo / R101.filename, weights_only=True)["state_dict"]
    own = deeplab_paper.state_dict()
    backbone = {k for k in own if k.startswith("backbone.")}
    assert backbone == {"backbone." + k for k in saved if not k.startswith("fc.")}
    assert all(torch.equal(own[k], saved[k[len("backbone."):]]) for k in backbone)       # every backbone tensor
    assert all(torch.equal(v, head_before[k]) for k, v in deeplab_paper.decode_head.state_dict().items())
    assert sorted(report["loaded"]) == sorted(backbone) and not report["missing"] and not report["unexpected"]
    assert report["ignored"] == ["fc.bias", "fc.weight"] and all(k.startswith("decode_head.") for k in report["kept"])
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and R101.filename in r.getMessage()]
    assert len(lines) == 1 and f"loaded {len(backbone)} tensors" in lines[0] and "ResNet-101" in lines[0]
    with pytest.raises(ValueError, match=r"missing.*decode_head"):          # a ProDA teacher must be a full model
        load_init_weights(deeplab_paper, "resnet101_v1c", allow_backbone=False)


def test_resnet50_file_is_refused_for_resnet101(deeplab_paper, tmp_path):
    path = tmp_path / "resnet50_v1c-2cccc1ad.pth"
    torch.save({"state_dict": _resnet_v1c_zoo_state(50, 4)}, path)
    before = deeplab_paper.backbone.stem[0].weight.clone()
    with pytest.raises(ValueError, match=r"resnet50_v1c-2cccc1ad\.pth.*ResNet-50.*model's backbone is ResNet-101"):
        load_init_weights(deeplab_paper, path)
    assert torch.equal(deeplab_paper.backbone.stem[0].weight, before)                 # nothing loaded


def test_truncated_download_is_refused_with_a_refetch_hint(deeplab_paper, zoo, empty_cache):
    empty_cache.mkdir()
    data = (zoo / R101.filename).read_bytes()
    (empty_cache / R101.filename).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(R101.filename) + r".*fetch resnet101_v1c"):
        load_init_weights(deeplab_paper, "resnet101_v1c")


# ------------------------------------------------------------------ FCN-8s VGG16 (paper)
def test_torchvision_vgg16_initialises_the_paper_fcn8s(fcn_paper, use_zoo, caplog):
    head_before = {k: v.clone() for k, v in fcn_paper.decode_head.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="segmenters.checkpoint"):
        report = load_init_weights(fcn_paper, "vgg16")
    tv = torch.load(use_zoo / VGG16.filename, weights_only=True)
    bb = fcn_paper.backbone
    features = {k: v for k, v in tv.items() if k.startswith("features.")}
    assert len(features) == 26                                                       # 13 convs
    assert all(torch.equal(bb.state_dict()[k], v) for k, v in features.items())
    assert torch.equal(bb.fc6.weight, tv["classifier.0.weight"].reshape(4096, 512, 7, 7))
    assert torch.equal(bb.fc6.bias, tv["classifier.0.bias"])
    assert torch.equal(bb.fc7.weight, tv["classifier.3.weight"].reshape(4096, 4096, 1, 1))
    assert torch.equal(bb.fc7.bias, tv["classifier.3.bias"])
    assert all(torch.equal(v, head_before[k]) for k, v in fcn_paper.decode_head.state_dict().items())
    assert len(report["loaded"]) == 30 and not report["missing"] and report["ignored"] == ["classifier.6.bias",
                                                                                          "classifier.6.weight"]
    assert "loaded 30 tensors" in caplog.text and VGG16.filename in caplog.text


def test_vgg19_file_is_refused_for_vgg16(fcn_paper, zoo):
    with pytest.raises(ValueError, match=re.escape(VGG19.filename) + r".*VGG19 \(16 conv.*backbone is VGG16"):
        load_init_weights(fcn_paper, zoo / VGG19.filename)


# ------------------------------------------------------------------ LDR's VGG19, FID's Inception
def test_vgg19_by_name_for_the_ldr_perceptual_loss(use_zoo, tmp_path):
    from segmenters.uda import TrainInputs
    from segmenters.uda.ldr import LDR
    from segmenters.uda.ldr_parts import load_vgg19_features

    vgg = load_vgg19_features("vgg19")
    tv = torch.load(use_zoo / VGG19.filename, weights_only=True)
    assert torch.equal(vgg.slices[0][0].weight, tv["features.0.weight"])
    assert torch.equal(vgg.slices[4][-2].weight, tv["features.28.weight"])
    inputs = TrainInputs(source=tmp_path / "s", target=tmp_path / "t")
    assert LDR().model(load_config("deeplabv2", "paper"), inputs)["vgg19_weights"] == str(use_zoo / VGG19.filename)
    assert LDR().model(load_config("deeplabv2", "tiny"), inputs)["vgg19_weights"] is None


def test_ldr_without_the_vgg19_file_stops_at_start_up(empty_cache, tmp_path):
    from segmenters.uda import TrainInputs
    from segmenters.uda.base import TrainError
    from segmenters.uda.ldr import LDR

    with pytest.raises(TrainError) as err:
        LDR().model(load_config("fcn8s", "paper"), TrainInputs(source=tmp_path / "s", target=tmp_path / "t"))
    msg = _one_line(str(err.value))
    assert all(p in msg for p in ("uda.vgg19_weights", VGG19.url, "fetch vgg19", "vgg19_weights=None"))


def test_fid_accepts_the_registry_name(empty_cache, tmp_path, monkeypatch, caplog):
    from translators.metrics.__main__ import main as metrics_cli
    from translators.metrics.features import InceptionWeightsError, resolve_weights_path

    monkeypatch.delenv("FID_INCEPTION_WEIGHTS", raising=False)
    expected = r"--inception-weights.*fetch pt_inception.*" + re.escape(INCEPTION.url)
    with pytest.raises(InceptionWeightsError, match=expected):
        resolve_weights_path("pt_inception")
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    out = tmp_path / "fid.csv"
    argv = ["fid", "--real-dir", str(images), "--fake-dir", str(images), "--out", str(out)]
    assert metrics_cli([*argv, "--inception-weights", "pt_inception"]) == 2
    assert "fetch pt_inception" in caplog.text and not out.exists()
    empty_cache.mkdir()
    (empty_cache / INCEPTION.filename).write_bytes(b"x")
    assert resolve_weights_path("pt_inception") == empty_cache / INCEPTION.filename
    monkeypatch.setenv("FID_INCEPTION_WEIGHTS", "pt_inception")                      # the env var takes it too
    assert resolve_weights_path(None) == empty_cache / INCEPTION.filename


# ------------------------------------------------------------------ the train CLI, offline
@pytest.mark.parametrize("arch,entry", [("deeplabv2", R101), ("fcn8s", VGG16)])
def test_train_cli_without_the_cached_file_exits_2_at_start_up(arch, entry, empty_cache, tmp_path, capsys):
    from segmenters.__main__ import main as segmenters_main

    work = tmp_path / "work"
    argv = ["train", "--arch", arch, "--preset", "paper", "--uda", "source_only", "--source", str(tmp_path / "src"),
            "--target", str(tmp_path / "tgt"), "--work-dir", str(work)]
    assert segmenters_main(argv) == 2
    msg = _one_line(capsys.readouterr().err)
    assert msg.startswith("error: ") and "init_from" in msg and entry.url in msg
    assert f"python -m domains.weights fetch {entry.name}" in msg
    assert not work.exists()                                     # stopped before the Runner (and the data checks)


def test_resume_does_not_need_the_init_file(tiny_prepared, empty_cache, tmp_path):
    """A resumed run never loads init weights, so a missing cached file only warns there."""
    from segmenters.train import build_parser, build_runner
    from segmenters.uda.base import TrainError

    work = tmp_path / "work"
    argv = ["--arch", "deeplabv2", "--preset", "tiny", "--uda", "source_only", "--source", str(tiny_prepared["source"]),
            "--target", str(tiny_prepared["target"]), "--work-dir", str(work), "--workers", "0",
            "--cfg-options", "init_from=resnet101_v1c"]
    with pytest.raises(TrainError, match="fetch resnet101_v1c"):
        build_runner(build_parser().parse_args([*argv, "--resume"]))       # nothing to resume yet
    work.mkdir()
    (work / "iter_4.pth").write_bytes(b"")
    _, _, hook = build_runner(build_parser().parse_args([*argv, "--resume"]))
    assert hook.init is None
