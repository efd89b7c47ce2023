"""``python -m segmenters train`` (segmenters/train.py): source-only / oracle runs, resume, init, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
from segmenters.__main__ import main as segmenters_main
from segmenters.train import _amp_wrapper, _schedulers, build_parser, build_runner, load_init_weights, train

# tiny images (64x32) instead of the preset's 256x128, batch 1: a few seconds per run
SMALL = ["crop_size=(32,64)", "model.data_preprocessor.size=(32,64)", "train_scale=(64,32)",
         "target_scale=(64,32)", "test_scale=(64,32)", "batch_size=1", "log_interval=1"]


def cli_args(tiny: dict, work: Path, uda: str, arch: str, *extra: str, max_iters: int = 2,
             options: tuple[str, ...] = ()) -> list[str]:
    return ["--arch", arch, "--preset", "tiny", "--uda", uda, "--source", str(tiny["source"]),
            "--target", str(tiny["target"]), "--work-dir", str(work), "--max-iters", str(max_iters),
            "--workers", "0", *extra, "--cfg-options", *SMALL, *options]


def run(argv: list[str]):
    return train(build_parser().parse_args(argv))


def scalars(work: Path) -> list[dict]:
    rows = []
    for f in sorted(work.glob("*/vis_data/scalars.json")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


@pytest.mark.parametrize("arch", ["deeplabv2", "fcn8s"])
@pytest.mark.parametrize("uda", ["source_only", "oracle"])
def test_train_writes_loadable_final(tiny_prepared, tmp_path, arch, uda):
    from segmenters.loader import load_segmenter

    # oracle: validation asked for (every iteration); source_only: the tiny preset's default, none
    extra = ("--val-interval", "1") if uda == "oracle" else ()
    result = run(cli_args(tiny_prepared, tmp_path / "run", uda, arch, *extra))
    assert result.final == tmp_path / "run" / "final.pth" and result.final.is_file()
    assert (result.start_iter, result.end_iter) == (0, 2)
    if uda == "oracle":
        assert len([r for r in scalars(tmp_path / "run") if "mIoU" in r]) == 2
        # the in-training validation (mmseg IoUMetric, rounded to 2 decimals) scored the model that
        # final.pth holds: `segmenters evaluate` of final.pth on the same split gives the same numbers
        out = tmp_path / "eval.csv"
        assert segmenters_main(["evaluate", "--checkpoint", str(result.final), "--target",
                                str(tiny_prepared["target"]), "--split", "val", "--out", str(out),
                                "--device", "cpu"]) == 0
        row = pd.read_csv(out).iloc[0]
        for key in ("mIoU", "aAcc", "mAcc"):
            assert result.metrics[key] == pytest.approx(row[key], abs=0.005 + 1e-9), key
    else:
        assert result.metrics == {}  # tiny preset: val_interval 0, `evaluate` scores the final model
    train_rows = [r for r in scalars(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows)
    seg = load_segmenter(result.final)
    assert seg.meta["uda"] == uda and seg.meta["iter"] == 2 and seg.meta["arch"] == arch
    assert seg.meta["model_cfg"]["type"] == "EncoderDecoder"
    assert seg.test_scale == (64, 32)                 # the run's --cfg-options test_scale, not the preset's
    logits = seg.predict_logits(torch.full((1, 3, 32, 64), 128.0))
    assert logits.shape == (1, 19, 32, 64)
    # final.pth holds the weights the run ended with: every tensor equals the runner's own checkpoint
    # of the last iteration (iter_2.pth, written by mmengine's CheckpointHook, not by save_final)
    final_state = torch.load(result.final, weights_only=True)["state_dict"]
    last = torch.load(tmp_path / "run" / "iter_2.pth", weights_only=False, map_location="cpu")["state_dict"]
    assert set(final_state) == set(last)
    assert all(torch.equal(final_state[k], last[k]) for k in final_state)


def test_oracle_trains_on_target_labels_and_source_only_on_source(tiny_prepared, tmp_path):
    for uda, root in (("oracle", tiny_prepared["target"]), ("source_only", tiny_prepared["source"])):
        runner, meta, _ = build_runner(build_parser().parse_args(cli_args(tiny_prepared, tmp_path / uda, uda, "fcn8s")))
        dataset = runner._train_dataloader["dataset"]
        assert dataset["type"] == "PreparedSegDataset" and dataset["prepared_root"] == str(root)
        assert dataset["split"] == "train" and dataset["labelled"] is True
        assert meta["uda"] == uda and runner.model.__class__.__name__ == "EncoderDecoder"


def test_resume_continues_from_saved_iteration(tiny_prepared, tmp_path):
    work = tmp_path / "run"
    first = run(cli_args(tiny_prepared, work, "bdl", "fcn8s", max_iters=4, options=("checkpoint_interval=2",)))
    assert (first.start_iter, first.end_iter) == (0, 4)
    ckpt = torch.load(work / "iter_4.pth", weights_only=False, map_location="cpu")
    assert ckpt["meta"]["iter"] == 4
    assert set(ckpt["optimizer"]) >= {"segmentor", "discriminator"}  # both optimisers checkpointed
    before = {r["step"] for r in scalars(work) if "loss" in r}
    assert before == {1, 2, 3, 4}

    second = run(cli_args(tiny_prepared, work, "bdl", "fcn8s", "--resume", max_iters=6,
                          options=("checkpoint_interval=2",)))
    assert (second.start_iter, second.end_iter) == (4, 6)
    steps = [r["step"] for r in scalars(work) if "loss" in r]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # iterations 1-4 were not trained again
    assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_4.pth", "iter_6.pth"]  # max_keep_ckpts 2
    logs = "".join(p.read_text() for p in work.glob("*/*.log"))
    assert "resumed epoch: 0, iter: 4" in logs and "training starts at iter 4 of 6" in logs
    assert torch.load(work / "final.pth", weights_only=True)["meta"]["iter"] == 6


def test_init_weights_load_into_segmentation_network_only(tiny_prepared, tmp_path):
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    from segmenters.configs import load_config
    from segmenters.uda import BDL, TrainInputs
    from segmenters.uda.base import TrainError

    first = run(cli_args(tiny_prepared, tmp_path / "a", "source_only", "fcn8s", max_iters=1))
    cfg = load_config("fcn8s", "tiny", SMALL)
    inputs = TrainInputs(source=tiny_prepared["source"], target=tiny_prepared["target"])
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(BDL().model(cfg, inputs))
    d_before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    report = load_init_weights(model, first.final, strict=True)
    assert not report["missing"] and not report["unexpected"]
    saved = torch.load(first.final, weights_only=True)["state_dict"]
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())
    assert all(torch.equal(v, d_before[k]) for k, v in model.discriminator.state_dict().items())
    # a deeplab final.pth does not fit an FCN-8s model
    other = run(cli_args(tiny_prepared, tmp_path / "b", "source_only", "deeplabv2", max_iters=1))
    with pytest.raises(TrainError, match="init"):
        load_init_weights(model, other.final, strict=True)


def test_cli_errors_are_one_clear_line(tiny_prepared, tmp_path, capsys):
    def err_of(argv: list[str]) -> str:
        assert segmenters_main(["train", *argv]) == 2
        return capsys.readouterr().err

    base = dict(tiny=tiny_prepared, work=tmp_path / "w", arch="fcn8s")
    assert "lamda_adv" in err_of(cli_args(base["tiny"], base["work"], "bdl", "fcn8s", options=("uda.lamda_adv=1",)))
    missing = dict(tiny_prepared, target=tmp_path / "no_such_dataset")
    assert "no_such_dataset" in err_of(cli_args(missing, base["work"], "source_only", "fcn8s"))
    empty = tmp_path / "pseudo_empty"
    empty.mkdir()
    msg = err_of(cli_args(tiny_prepared, base["work"], "bdl", "fcn8s", "--pseudo", str(empty)))
    assert "empty" in msg and str(empty) in msg
    assert "--pseudo is not used" in err_of(cli_args(tiny_prepared, base["work"], "source_only", "fcn8s",
                                                     "--pseudo", str(empty)))
    unlabelled = tmp_path / "unlabelled_target"
    shutil.copytree(tiny_prepared["target"], unlabelled)
    meta = json.loads((unlabelled / "meta.json").read_text())
    meta["splits"]["val"]["labelled"] = False
    (unlabelled / "meta.json").write_text(json.dumps(meta))
    msg = err_of(cli_args(dict(tiny_prepared, target=unlabelled), base["work"], "source_only", "fcn8s"))
    assert "'val' has no labels" in msg
    assert not (tmp_path / "w" / "final.pth").exists()


def test_amp_switch_and_schedule_follow_the_run():
    """AMP wraps every optimiser (single or BDL's dict); poly end tracks --max-iters only when it was max_iters."""
    from segmenters.configs import load_config
    from segmenters.uda import BDL

    cfg = load_config("deeplabv2", "tiny")
    single = _amp_wrapper(dict(cfg.optim_wrapper))
    assert single["type"] == "AmpOptimWrapper" and single["optimizer"]["type"] == "SGD"
    pair = _amp_wrapper(BDL().optim_wrapper(cfg))
    assert pair["constructor"] == "UDAOptimWrapperConstructor"
    assert pair["segmentor"]["type"] == pair["discriminator"]["type"] == "AmpOptimWrapper"
    assert pair["segmentor"]["paramwise_cfg"]["custom_keys"]["decode_head"]["lr_mult"] == 10.0
    assert _schedulers(cfg, cfg.max_iters, 50)[0]["end"] == 50
    paper = load_config("deeplabv2", "paper")
    assert _schedulers(paper, paper.max_iters, 50)[0]["end"] == paper.poly_iters  # BDL's 250k poly kept
