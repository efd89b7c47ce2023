"""``python -m segmenters train --launcher pytorch`` under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Real torch.distributed: each 2-process run is a ``torchrun`` subprocess (``--standalone``: a free
rendezvous port), the single-process references run in this process. Data: ``tiny_prepared``
copied with every image and label made left-right symmetric, so the random flip of the training
pipeline changes nothing and the ranks' samples do not depend on which process drew the flip.

Why the 2-process step equals one step on the union batch: with ``batch_size=b`` per process and
the same seed, mmengine's ``InfiniteSampler`` gives rank r the indices r, r+2, ... of the stream
whose first 2b entries are the single process's batch of 2b. Gradients are averaged over ranks;
each rank's loss is a mean over its b images, and every image has the same number of non-ignored
pixels (2 ignored pixels each), so the mean of the ranks' means is the mean over 2b images. BatchNorm
in train mode would normalise with per-rank statistics (b images instead of 2b) and SyncBN has no
CPU kernel, so the backbone's BN runs in eval mode (``model.backbone.norm_eval=True``: running
statistics, identical on every rank); the decode head and the BDL discriminator have no BN.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
from segmenters.train import build_parser, train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = ["crop_size=(32,64)", "model.data_preprocessor.size=(32,64)", "train_scale=(64,32)",
         "target_scale=(64,32)", "test_scale=(64,32)", "log_interval=1", "model.backbone.norm_eval=True"]


def _symmetric_copy(prepared: Path, out_root: Path) -> Path:
    """Copy of a prepared dataset (and its raw images) with the right half of every image and label
    mirrored from the left half."""
    meta = json.loads((prepared / "meta.json").read_text())
    dst = out_root / "prepared" / prepared.name
    shutil.copytree(prepared, dst)
    for split, spec in meta["splits"].items():
        raw = out_root / "raw" / prepared.name / split
        shutil.copytree(spec["image_dir"], raw)
        spec["image_dir"] = str(raw)
        for png in list(raw.glob("*.png")) + list((dst / "labels" / split).glob("*.png")):
            a = np.array(Image.open(png))
            w = a.shape[1]
            a[:, w - w // 2:] = a[:, : w // 2][:, ::-1]
            Image.fromarray(a).save(png)
    meta["raw_root"] = str(out_root / "raw" / prepared.name)
    (dst / "meta.json").write_text(json.dumps(meta, indent=2))
    return dst


@pytest.fixture(scope="module")
def sym_data(tiny_prepared, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sym_data")
    return {k: _symmetric_copy(tiny_prepared[k], root) for k in ("source", "target")}


def _args(data: dict, work: Path, uda: str, batch: int, max_iters: int = 1, *extra: str) -> list[str]:
    return ["--arch", "deeplabv2", "--preset", "tiny", "--uda", uda, "--source", str(data["source"]),
            "--target", str(data["target"]), "--work-dir", str(work), "--max-iters", str(max_iters),
            "--workers", "0", "--seed", "3", *extra,
            "--cfg-options", *SMALL, f"batch_size={batch}", "checkpoint_interval=1"]


def _torchrun(argv: list[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node 2`` (as ``python -m torch.distributed.run``, this
    interpreter), each output line prefixed with ``[rank<r>]``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--tee", "3", "--log-line-prefix-template", "[rank${rank}] ",
            "-m", "segmenters", "train", *argv, "--launcher", "pytorch"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _run2(argv: list[str], timeout: int = 120) -> str:
    proc = subprocess.run(_torchrun(argv), capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _check_same_step(two: Path, union: Path, half: Path, prefixes: tuple[str, ...]) -> None:
    """2 processes x b == 1 process x 2b to float tolerance, while 1 process x b (rank 0's samples
    alone, i.e. no gradient averaging) differs clearly - in every module family ``prefixes``."""
    got, ref, alone = _state(two), _state(union), _state(half)
    for prefix in prefixes:
        keys = [k for k in ref if k.startswith(prefix) and ref[k].is_floating_point()]
        assert keys, prefix
        sub = lambda d: {k: d[k] for k in keys}  # noqa: E731
        same, apart = _max_diff(sub(got), sub(ref)), _max_diff(sub(alone), sub(ref))
        # Adam's first step (discriminator) is lr * g / (|g| + eps): float-summation noise of gradients
        # near eps shows up to ~1e-6; the SGD-trained networks agree to ~1e-9
        assert same < 1e-5, (prefix, same)
        assert apart > 20 * max(same, 1e-8), (prefix, same, apart)


def test_source_only_two_processes_equal_one_process_on_the_union_batch(sym_data, tmp_path):
    """(a) source_only (MMDistributedDataParallel): one step of 2 x batch 1 == 1 x batch 2; and (d)
    only rank 0 writes final.pth, logs and checkpoints."""
    out = _run2(_args(sym_data, tmp_path / "ddp", "source_only", 1))
    train(build_parser().parse_args(_args(sym_data, tmp_path / "one", "source_only", 2)))
    train(build_parser().parse_args(_args(sym_data, tmp_path / "half", "source_only", 1)))
    _check_same_step(tmp_path / "ddp/iter_1.pth", tmp_path / "one/iter_1.pth", tmp_path / "half/iter_1.pth",
                     ("backbone.", "decode_head."))
    final = torch.load(tmp_path / "ddp/final.pth", weights_only=True)
    assert final["meta"]["iter"] == 1
    assert _max_diff(final["state_dict"], torch.load(tmp_path / "one/final.pth", weights_only=True)["state_dict"]) < 1e-6

    # (d) rank 0 alone wrote final.pth (save_final logs every write) and the run's files
    writes = re.findall(r"^\[rank(\d)\].*segmenters\.checkpoint: wrote .*final\.pth", out, flags=re.M)
    assert writes == ["0"], out[-3000:]
    assert "[rank0] final checkpoint:" in out and "[rank1] final checkpoint:" not in out
    assert "[rank0]     Distributed training: True" in out and "type='MMDistributedDataParallel'" in out
    files = sorted(p.relative_to(tmp_path / "ddp").as_posix() for p in (tmp_path / "ddp").rglob("*") if p.is_file())
    assert [f for f in files if f.endswith(".log")] and len([f for f in files if f.endswith(".log")]) == 1, files
    assert [f for f in files if f.endswith("scalars.json")] and not [f for f in files if "rank" in f], files
    assert not [f for f in files if f.endswith(".tmp")], files
    assert {"final.pth", "iter_1.pth", "last_checkpoint"} <= set(files)


def test_bdl_two_processes_equal_one_process_on_the_union_batch(sym_data, tmp_path):
    """(b) BDL (own train_step: segmentor SGD + discriminator Adam; UDADistributedWrapper with
    gradient-synchronising optimiser wrappers): both networks match the single-process step."""
    _run2(_args(sym_data, tmp_path / "ddp", "bdl", 1))
    train(build_parser().parse_args(_args(sym_data, tmp_path / "one", "bdl", 2)))
    train(build_parser().parse_args(_args(sym_data, tmp_path / "half", "bdl", 1)))
    _check_same_step(tmp_path / "ddp/iter_1.pth", tmp_path / "one/iter_1.pth", tmp_path / "half/iter_1.pth",
                     ("backbone.", "decode_head.", "discriminator."))


def _descendants(pid: int) -> list[int]:
    """PIDs below ``pid`` (torchrun starts its workers in new sessions, so no process group kill)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_killed_two_process_run_resumes_to_the_same_iteration_count(sym_data, tmp_path):
    """(c) a 2-process run killed (SIGKILL to every process) after its first checkpoint resumes with
    --resume from that checkpoint and ends at max_iters."""
    work, iters = tmp_path / "run", 16
    argv = _args(sym_data, work, "bdl", 1, iters)
    argv[argv.index("checkpoint_interval=1")] = "checkpoint_interval=2"
    proc = subprocess.Popen(_torchrun(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                            cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (work / "last_checkpoint").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in _descendants(proc.pid) + [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        proc.wait(timeout=30)
    assert not (work / "final.pth").exists(), "the run finished before it could be killed"
    saved = int(re.search(r"iter_(\d+)\.pth", (work / "last_checkpoint").read_text()).group(1))
    assert 2 <= saved < iters

    out = _run2(argv + ["--resume"])
    assert f"resumed epoch: 0, iter: {saved}" in out and f"training starts at iter {saved} of {iters}" in out
    final = torch.load(work / "final.pth", weights_only=True)
    assert final["meta"]["iter"] == iters
    runs = [[json.loads(line)["step"] for line in f.read_text().splitlines() if '"loss"' in line]
            for f in sorted(work.glob("*/vis_data/scalars.json"))]  # timestamped: killed run, resumed run
    assert len(runs) == 2 and runs[0][:saved] == list(range(1, saved + 1))
    assert runs[1] == list(range(saved + 1, iters + 1))  # the resumed run trained the remaining iterations once


def test_launcher_errors_exit_2(sym_data, tmp_path, capsys, monkeypatch):
    """--launcher without torchrun's environment, and sync_bn on CPU, are one clear line, exit 2."""
    from segmenters.train import main

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert main(_args(sym_data, tmp_path / "w", "bdl", 1) + ["--launcher", "pytorch"]) == 2
    assert "environment variable RANK is not set" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    argv = _args(sym_data, tmp_path / "w", "source_only", 1) + ["sync_bn=True", "--launcher", "pytorch"]
    assert main(argv) == 2
    assert "'sync_bn'" in capsys.readouterr().err
    from segmenters.uda import METHODS

    monkeypatch.setattr(METHODS["sepico"], "supports_launcher", False)
    assert main(_args(sym_data, tmp_path / "w", "sepico", 1) + ["--launcher", "slurm"]) == 2
    assert "--uda sepico does not support distributed training" in capsys.readouterr().err
    assert not (tmp_path / "w" / "final.pth").exists()


def test_launcher_settings():
    """Pure pieces of segmenters.distributed: ranks from torchrun / SLURM variables, the SLURM
    rendezvous, wrapper and optimiser-wrapper configs, sync_bn."""
    from segmenters import distributed as d
    from segmenters.configs import load_config
    from segmenters.uda import BDL, BDLSegmentor
    from mmseg.models.segmentors import EncoderDecoder

    assert d.dist_info("pytorch", {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == d.DistInfo(3, 1, 4)
    assert d.dist_info("slurm", {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}) == d.DistInfo(5, 1, 8)
    assert d.dist_info("none", {}) == d.DistInfo(0, 0, 1)
    with pytest.raises(d.DistributedError, match="SLURM_NTASKS"):
        d.dist_info("slurm", {"SLURM_PROCID": "0", "SLURM_LOCALID": "0"})
    env = {"SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "123456"}
    assert d.slurm_env_updates(env, "node07") == {"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "4",
                                                  "MASTER_ADDR": "node07", "MASTER_PORT": str(20000 + 123456 % 20000)}
    assert "MASTER_PORT" not in d.slurm_env_updates({**env, "MASTER_PORT": "1234"}, "n")
    from domains.launcher import slurm_master_port

    assert slurm_master_port(None) == 29500 and slurm_master_port("7") == 20007

    assert d.has_own_train_step(BDLSegmentor) and not d.has_own_train_step(EncoderDecoder)
    assert d.model_wrapper_cfg(True, cuda=False) == {"type": "UDADistributedWrapper"}
    plain = d.model_wrapper_cfg(False, cuda=False)
    assert plain["type"] == "MMDistributedDataParallel" and plain["device_ids"] is None
    assert "device_ids" not in d.model_wrapper_cfg(False, cuda=True)  # the Runner sets [LOCAL_RANK]
    ow = d.grad_sync_optim_wrapper(BDL().optim_wrapper(load_config("deeplabv2", "tiny")))
    assert ow["segmentor"]["type"] == ow["discriminator"]["type"] == "GradSyncOptimWrapper"
    assert d.grad_sync_optim_wrapper({"type": "AmpOptimWrapper", "optimizer": {}})["type"] == "GradSyncAmpOptimWrapper"
    with pytest.raises(d.DistributedError, match="optim_wrapper.type"):
        d.grad_sync_optim_wrapper({"type": "MyWrapper", "optimizer": {}})
    assert d.runner_dist_kwargs("none", True, False, cuda=False) == {"launcher": "none"}
    kw = d.runner_dist_kwargs("slurm", False, True, cuda=True)
    assert kw["launcher"] == "slurm" and kw["cfg"]["sync_bn"] == "torch"
    assert "sync_bn" not in d.runner_dist_kwargs("pytorch", False, False, cuda=True)["cfg"]
    with pytest.raises(d.DistributedError, match="'sync_bn' must be true or false"):
        d.sync_bn_setting("yes", "pytorch", cuda=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4 images of 8-d features (8x8) with labels of 5 classes (some ignored, class 4 only in image 3)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(4, 8, 8, 8, generator=g)
    labels = torch.randint(0, 4, (4, 8, 8), generator=g)
    labels[3, :4] = 4
    labels[:, 0, 0] = 255
    return feats, labels


def _stats_rank(rank: int, port: int, out: str) -> None:
    """One rank of :func:`test_batch_statistics_are_global_across_ranks`: its half of the batch."""
    import torch.distributed as dist

    from segmenters.uda.proda_parts import PrototypeMemory
    from segmenters.uda.sepico_parts import ClassStatistics

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        feats, labels = _batch()
        mine = slice(2 * rank, 2 * rank + 2)
        stats = ClassStatistics(5, 8, memory_length=3)
        protos = PrototypeMemory(5, 8, momentum=0.3, min_pixels=1)
        for _ in range(2):
            stats.update(feats[mine].permute(0, 2, 3, 1).reshape(-1, 8), labels[mine].reshape(-1))
            protos.update(feats[mine], labels[mine])
        torch.save({"stats": stats.state_dict(), "protos": protos.state_dict()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_batch_statistics_are_global_across_ranks(tmp_path):
    """SePiCo's ClassStatistics and ProDA's PrototypeMemory under 2 gloo ranks (forked from this
    process, which holds the modules already) fold in the union batch: both ranks end with the
    state one process gets from the whole batch (rank 0's images first, as gathered)."""
    import multiprocessing as mp

    from segmenters.uda.proda_parts import PrototypeMemory
    from segmenters.uda.sepico_parts import ClassStatistics

    port, out = _free_port(), str(tmp_path / "state")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_stats_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]

    feats, labels = _batch()
    stats = ClassStatistics(5, 8, memory_length=3)
    protos = PrototypeMemory(5, 8, momentum=0.3, min_pixels=1)
    for _ in range(2):
        stats.update(feats.permute(0, 2, 3, 1).reshape(-1, 8), labels.reshape(-1))
        protos.update(feats, labels)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        for name, ref in (("stats", stats.state_dict()), ("protos", protos.state_dict())):
            for key, value in ref.items():
                assert torch.allclose(got[name][key].double(), value.double(), atol=1e-5), (rank, name, key)
    assert bool(stats.initialized[4]) and float(protos.counts[4]) > 0  # class 4 lives on rank 1 only
