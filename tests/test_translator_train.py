"""`python -m translators train`: outputs, learning, bit-exact resume, bad input, NaN handling."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from translators.__main__ import main
from translators.checkpoint import load_checkpoint
from translators.config import load_config
from translators.data import DataError
from translators.train import TrainingDiverged, train

CONFIGS = Path(__file__).resolve().parents[1] / "translators" / "configs"
TINY = ["model.ngf=8", "model.ndf=8", "model.n_blocks=2", "model.n_layers_D=2", "model.netF_nc=32",
        "model.scale_mid_channels=8", "loss.nce_layers=[0,4,8,12,13]", "loss.num_patches=32",
        "data.crop=32", "data.local_crop=32", "data.global_crop=16", "data.prefetch=false"]


def cfg_of(method: str, *extra: str):
    return load_config(CONFIGS / f"{method}_tiny.yaml", TINY + list(extra))


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def set_args(*extra: str) -> list[str]:
    return ["--cfg-options", *TINY, *extra]


def test_semst_tiny_training_lowers_contrastive_loss(tiny_prepared, tmp_path):
    cfg = cfg_of("semst", "train.iters=40", "train.log_every=2", "train.save_every=40", "train.sample_every=40",
                 "train.decay_iters=0")
    res = train(cfg, tiny_prepared["source"], tiny_prepared["target"], tmp_path / "run", seed=0, show_progress=False)
    assert res.finished and (tmp_path / "run" / "final.pt").is_file()
    log = rows(tmp_path / "run" / "losses.csv")
    assert [int(r["step"]) for r in log] == list(range(2, 41, 2))
    nce = [float(r["NCE"]) for r in log]
    first, last = sum(nce[:4]) / 4, sum(nce[-4:]) / 4
    assert last < first - 0.05 * abs(first), (first, last)
    assert all(float(r["TS"]) == float(r["TS"]) for r in log)


def test_cut_cli_writes_run_outputs(tiny_prepared, tmp_path):
    out = tmp_path / "cut"
    rc = main(["train", "--config", str(CONFIGS / "cut_tiny.yaml"), "--source", str(tiny_prepared["source"]),
               "--target", str(tiny_prepared["target"]), "--out", str(out), "--iters", "6", "--no-progress",
               *set_args("train.log_every=2", "train.sample_every=3", "train.save_every=4")])
    assert rc == 0
    ckpt = load_checkpoint(out / "final.pt")
    assert ckpt["method"] == "cut" and ckpt["step"] == 6 and ckpt["finished"]
    assert "optimizers" not in ckpt and {"G.model.1.weight", "F.mlps.0.0.weight"} <= set(ckpt["models"])
    full = load_checkpoint(out / "checkpoint.pt")
    assert set(full["optimizers"]) == {"G", "F", "D"} and full["step"] == 6 and "rng" in full
    assert [r["step"] for r in rows(out / "losses.csv")] == ["2", "4", "6"]
    assert {"D", "G", "G_GAN", "NCE", "NCE_idt", "s_per_iter", "lr"} <= set(rows(out / "losses.csv")[0])
    assert {p.name for p in (out / "samples").iterdir()} == {"step_0000003.png", "step_0000006.png", "latest.png"}
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def _kill_at(monkeypatch, step: int) -> None:
    """Simulate the process dying when it asks for the batch of ``step``."""
    from translators import data

    orig = data.UnpairedBatches.batch

    def batch(self, s):
        if s == step:
            raise KeyboardInterrupt(f"killed before step {s}")
        return orig(self, s)
    monkeypatch.setattr(data.UnpairedBatches, "batch", batch)


def test_kill_and_resume_is_bit_identical(tiny_prepared, tmp_path, monkeypatch):
    extra = ("train.iters=10", "train.save_every=4", "train.log_every=1", "train.sample_every=100")
    cfg = cfg_of("semst", *extra)
    src, tgt = tiny_prepared["source"], tiny_prepared["target"]
    train(cfg, src, tgt, tmp_path / "a", seed=3, show_progress=False)

    with monkeypatch.context() as mp:
        _kill_at(mp, 7)  # checkpoint at step 4; steps 5-6 run and log, then the process dies
        with pytest.raises(KeyboardInterrupt):
            train(cfg, src, tgt, tmp_path / "b", seed=3, show_progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 4
    assert not (tmp_path / "b" / "final.pt").exists()
    assert [r["step"] for r in rows(tmp_path / "b" / "losses.csv")][-1] == "6"
    res = train(cfg_of("semst", *extra), src, tgt, tmp_path / "b", seed=3, resume=True, show_progress=False)
    assert res.finished and res.step == 10

    a, b = load_checkpoint(tmp_path / "a" / "final.pt"), load_checkpoint(tmp_path / "b" / "final.pt")
    assert a["models"].keys() == b["models"].keys()
    for k in a["models"]:
        assert torch.equal(a["models"][k], b["models"][k]), k
    ra, rb = rows(tmp_path / "a" / "losses.csv"), rows(tmp_path / "b" / "losses.csv")
    assert [r["step"] for r in rb] == [str(i) for i in range(1, 11)]  # no duplicated rows
    assert [r["G"] for r in ra] == [r["G"] for r in rb]


def test_stop_after_then_resume(tiny_prepared, tmp_path):
    cfg = cfg_of("cut", "train.iters=5", "train.save_every=100", "train.log_every=1")
    res = train(cfg, tiny_prepared["source"], tiny_prepared["target"], tmp_path, stop_after=2, show_progress=False)
    assert not res.finished and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    assert not (tmp_path / "final.pt").exists()
    res = train(cfg, tiny_prepared["source"], tiny_prepared["target"], tmp_path, resume=True, show_progress=False)
    assert res.finished and load_checkpoint(tmp_path / "final.pt")["step"] == 5
    # resuming a finished run is a no-op
    mtime = (tmp_path / "final.pt").stat().st_mtime_ns
    train(cfg, tiny_prepared["source"], tiny_prepared["target"], tmp_path, resume=True, show_progress=False)
    assert (tmp_path / "final.pt").stat().st_mtime_ns == mtime


def test_nan_loss_stops_keeps_last_good_checkpoint(tiny_prepared, tmp_path, monkeypatch, caplog):
    from translators.methods.cut import CUT

    orig = CUT.generator_loss

    def poisoned(self, state, batch, progress):
        total, logs = orig(self, state, batch, progress)
        if progress >= 0.5:  # step 6 of 10 onwards (progress = completed steps / iters)
            logs["NCE"] = logs["NCE"] * float("nan")
        return total, logs
    monkeypatch.setattr(CUT, "generator_loss", poisoned)
    out = tmp_path / "nan"
    rc = main(["train", "--config", str(CONFIGS / "cut_tiny.yaml"), "--source", str(tiny_prepared["source"]),
               "--target", str(tiny_prepared["target"]), "--out", str(out), "--iters", "10", "--no-progress",
               *set_args("train.save_every=4", "train.log_every=1")])
    assert rc == 3
    assert "diverged at step 6" in caplog.text and "'NCE'" in caplog.text and "step 4" in caplog.text
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["models"].values() if v.is_floating_point())
    assert not (out / "final.pt").exists()
    with pytest.raises(TrainingDiverged) as info:
        train(cfg_of("cut", "train.iters=10", "train.save_every=4"), tiny_prepared["source"],
              tiny_prepared["target"], out, resume=True, show_progress=False)
    assert info.value.step == 6 and info.value.last_good == 4  # resumed at 4, diverges again at 6


def test_bad_inputs_give_clear_errors(tiny_prepared, tmp_path, caplog):
    src, tgt = str(tiny_prepared["source"]), str(tiny_prepared["target"])
    base = ["train", "--source", src, "--target", tgt, "--no-progress"]
    # unknown --cfg-options key
    assert main([*base, "--config", str(CONFIGS / "cut_tiny.yaml"), "--out", str(tmp_path / "x"),
                 "--cfg-options", "loss.lambda_gan=2"]) == 2
    assert "unknown config key 'loss.lambda_gan'" in caplog.text
    # empty domain folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        train(cfg_of("cut"), empty, tgt, tmp_path / "y", show_progress=False)
    assert main([*base[:2], str(empty), *base[3:], "--config", str(CONFIGS / "cut_tiny.yaml"),
                 "--out", str(tmp_path / "y")]) == 2
    assert str(empty) in caplog.text
    # a checkpoint of another method / architecture for --init and --resume
    cut_run = tmp_path / "cut"
    train(cfg_of("cut", "train.iters=1"), src, tgt, cut_run, show_progress=False)
    caplog.clear()
    assert main([*base, "--config", str(CONFIGS / "semst_tiny.yaml"), "--out", str(tmp_path / "z"),
                 "--init", str(cut_run / "final.pt"), *set_args()]) == 2
    assert "holds a 'cut' translator" in caplog.text and str(cut_run / "final.pt") in caplog.text
    caplog.clear()
    assert main([*base, "--config", str(CONFIGS / "cut_tiny.yaml"), "--out", str(cut_run), "--resume",
                 *set_args("model.ngf=12")]) == 2
    assert "model.ngf: checkpoint 8 vs config 12" in caplog.text and "checkpoint.pt" in caplog.text
    # a file that is not a checkpoint
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    caplog.clear()
    assert main([*base, "--config", str(CONFIGS / "cut_tiny.yaml"), "--out", str(tmp_path / "w"),
                 "--init", str(junk), *set_args()]) == 2
    assert str(junk) in caplog.text


def test_unreadable_training_image_is_named(tiny_prepared, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="broken.png"):
        train(cfg_of("cut", "train.iters=1"), folder, tiny_prepared["target"], tmp_path / "r", show_progress=False)


def test_init_fine_tunes_from_previous_round(tiny_prepared, tmp_path):
    src, tgt = tiny_prepared["source"], tiny_prepared["target"]
    train(cfg_of("semst", "train.iters=2"), src, tgt, tmp_path / "r0", show_progress=False)
    r0 = load_checkpoint(tmp_path / "r0" / "final.pt")["models"]
    # zero iterations after init is not allowed; one step keeps most weights close to r0
    train(cfg_of("semst", "train.iters=1", "train.lr=1e-12"), src, tgt, tmp_path / "r1", seed=5,
          init=tmp_path / "r0" / "final.pt", show_progress=False)
    r1 = load_checkpoint(tmp_path / "r1" / "final.pt")["models"]
    for k in r0:
        torch.testing.assert_close(r1[k], r0[k], atol=1e-6, rtol=0)
