"""Multi-process training of the translators (translators/distributed.py, ``--launcher``) with real
torch.distributed: gloo, 2 CPU processes started from a forkserver that has torch preloaded.

Why a step of 2 processes x batch 1 equals a single-process step of batch 2 (test 1; the workers
then run a second step, in whose forward DDP would raise had the first reduction not finished):

* every loss of CUT, SemST and CycleGAN is a mean over images of per-image terms of equal size --
  LSGAN (mean over the B x h x w patch scores), PatchNCE/hDCE (mean over B x P queries, negatives
  and hDCE weights per image), TS (rSMI per image and layer, then the mean), L1 cycle/identity
  (mean over pixels) -- so the batch-2 loss is the mean of the two batch-1 losses and its gradient
  the mean of theirs, which is what DDP's all-reduce (sum / world size) gives. InstanceNorm is
  per sample; no network here has BatchNorm.
* one term is not separable: F samples *one* set of patch positions per layer for the whole batch
  (torch.randperm from the global RNG, as CUT). The positions agree only if both ranks draw from
  the same RNG state -- the trainer seeds every rank alike and copies rank 0's state after a
  resume (``sync_rng_from_rank0``); here both ranks and the reference seed the same before the
  step. Crops differ per rank through the data stream, not through the torch RNG.
* CycleGAN's image pool makes no draw while it fills (pool_size >= 2), so its step is exact too.
* SemST with ``semst.gan_on: [local]``: the scale head S reaches no loss, gets no gradient on any
  rank, and DDP (find_unused_parameters=False) waits for none.

Compared are the all-reduced gradients (tolerance relative to each network's largest gradient:
conv biases in front of InstanceNorm have a true gradient of 0, whose float noise is not
reproducible), the parameters after the step and the logged (rank-averaged) losses. The step uses
SGD: Adam's first update is lr * g / |g| and would turn that noise into +-lr changes; the optimiser
is the same on every rank, so it adds nothing to what DDP must get right.

Tests 2-3 run ``python -m translators train --launcher pytorch`` (its ``main``) in both processes:
a run killed (SIGKILL) after its first checkpoint and resumed ends where the uninterrupted run
ends, bit for bit on CPU, and rank 1 opens no file for writing, renames, removes or creates
nothing in the run folder (audit hook), while rank 0 writes everything.
"""
from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp_mp
from torch.multiprocessing.spawn import ProcessException

from translators.__main__ import main
from translators.checkpoint import load_checkpoint
from translators.config import load_config
from translators.data import UnpairedBatches, open_domain
from domains.launcher import first_host
from translators.distributed import LauncherError, launcher_env, rank_device
from translators.methods import build_method

CONFIGS = Path(__file__).resolve().parents[1] / "translators" / "configs"
TINY = ["model.ngf=8", "model.ndf=8", "model.n_blocks=2", "model.n_layers_D=2", "model.netF_nc=32",
        "model.scale_mid_channels=8", "loss.nce_layers=[0,4,8,12,13]", "loss.num_patches=32",
        "data.crop=32", "data.local_crop=32", "data.global_crop=16", "data.prefetch=false", "train.cpu_amp=off"]
CYCLEGAN_TINY = ["model.ngf=8", "model.ndf=8", "model.n_blocks=2", "model.n_layers_D=2", "data.crop=32",
                 "data.prefetch=false", "train.cpu_amp=off", "cyclegan.pool_size=4"]
#: case -> (method, overrides); semst_local_gan: SemST's scale head S gets no gradient at all
CASES = {"cut": ("cut", TINY), "semst": ("semst", TINY), "semst_local_gan": ("semst", TINY + ["semst.gan_on=[local]"]),
         "cyclegan": ("cyclegan", CYCLEGAN_TINY)}
WORLD = 2
LR = 1e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args) -> None:
    """Run ``fn(rank, *args)`` in 2 processes forked from a server with torch preloaded (~0.1 s
    a start instead of ~8 s for a fresh interpreter on 2 busy cores)."""
    multiprocessing.set_forkserver_preload(["torch", "translators.train", "translators.distributed"])
    tmp_mp.start_processes(fn, args=args, nprocs=WORLD, start_method="forkserver")


def _join_group(rank: int, port: int, launcher: str = "pytorch") -> None:
    """The environment torchrun (or srun) would give this process."""
    if launcher == "pytorch":
        os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    else:
        for name in ("MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(name, None)
        os.environ.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(WORLD), SLURM_LOCALID=str(rank),
                          SLURM_NODELIST="127.0.0.1")
    os.environ.update(MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def cfg_of(case: str, *extra: str):
    method, overrides = CASES[case]
    return load_config(CONFIGS / f"{method}_tiny.yaml", overrides + list(extra))


def global_batch(method, src: Path, tgt: Path) -> dict[str, torch.Tensor]:
    """The batch-2 batch of step 1 of a single process; rank r gets its r-th image."""
    data = UnpairedBatches(open_domain(src), open_domain(tgt), method.crop_spec(), 2, seed=0, prefetch=False)
    return data.batch(1)


def one_step(name: str, batch: dict, wrap=None, more: int = 0) -> tuple[dict, dict, dict]:
    """One train_step of a freshly seeded ``name`` on ``batch`` with SGD: (logs, params, grads);
    then ``more`` steps whose results are dropped (DDP raises in the next step's forward if the
    reduction of a step did not finish)."""
    torch.manual_seed(0)
    method = build_method(cfg_of(name)).setup(torch.device("cpu"))
    if wrap is not None:
        wrap(method)
    opts = {k: torch.optim.SGD(p, lr=LR) for k, p in method.param_groups().items()}
    torch.manual_seed(1)  # the draws of the step (patch ids): the same on every rank and in the reference
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    logs, _ = method.train_step(batch, 0.0, opts, scaler)
    params = {k: v.detach().clone() for k, v in method.state_dict().items()}
    grads = {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}
    for step in range(more):
        method.train_step(batch, (step + 1) / 10, opts, scaler)
    return logs, params, grads


# ------------------------------------------------------------------------------ workers
def _step_worker(rank: int, port: int, src: Path, tgt: Path, out: Path) -> None:
    from translators.distributed import all_reduce_mean, init_distributed, shutdown_distributed, wrap_networks
    from translators.methods import NonFiniteLossError
    from translators.methods.cut import CUT

    _join_group(rank, port, "slurm")  # the CLI runs below use torchrun's variables
    ctx = init_distributed("slurm", "cpu", timeout_s=60)
    assert (ctx.rank, ctx.world_size, os.environ["MASTER_ADDR"], os.environ["RANK"]) == (rank, WORLD, "127.0.0.1", str(rank))

    def wrap(method):
        wrap_networks(method, ctx)
        method.log_reducer = all_reduce_mean

    results = {}
    for name in CASES:
        full = global_batch(build_method(cfg_of(name)), src, tgt)
        results[name] = one_step(name, {k: v[rank:rank + 1] for k, v in full.items()}, wrap, more=1)
    # a NaN on one rank only: every rank must raise before any optimiser step, none may hang
    orig = CUT.generator_loss
    if rank == 1:
        def poisoned(self, state, batch, progress):
            total, logs = orig(self, state, batch, progress)
            return total, {**logs, "NCE": logs["NCE"] * float("nan")}
        CUT.generator_loss = poisoned
    try:
        one_step("cut", {k: v[rank:rank + 1] for k, v in global_batch(build_method(cfg_of("cut")), src, tgt).items()},
                 wrap)
        outcome = "no error"
    except NonFiniteLossError as err:
        outcome = f"NonFiniteLossError {err.name}"
    CUT.generator_loss = orig
    (out / f"nan_rank{rank}.txt").write_text(outcome)
    if rank == 0:
        torch.save(results, out / "ddp_step.pt")
    shutdown_distributed(ctx)


def _audit_writes(roots: list[Path], record: list) -> None:
    """Record every write-open, rename, remove and mkdir under ``roots`` in this process."""
    roots_s = [str(r) for r in roots]
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if mode is not None and not any(c in str(mode) for c in "wax+"):
                return
            if mode is None and not (flags or 0) & write_flags:
                return
            paths = [path]
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir"):
            paths = [args[0], args[1]] if event == "os.rename" else [args[0]]
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)) and any(os.fsdecode(p).startswith(r) for r in roots_s):
                record.append(f"{event} {os.fsdecode(p)}")
    sys.addaudithook(hook)


def _train_worker(rank: int, runs: list[tuple[list[str], int]], roots: list[Path], log_dir: Path,
                  kill_at: int | None) -> None:
    """``main(argv)`` for each (argv, port) of ``runs`` under --launcher pytorch; the last run
    SIGKILLs this process when it asks for the batch of step ``kill_at``."""
    logging.basicConfig(level=logging.INFO)
    record: list[str] = []
    _audit_writes(roots, record)
    rcs = []
    for i, (argv, port) in enumerate(runs):
        _join_group(rank, port)
        if kill_at is not None and i == len(runs) - 1:
            (log_dir / f"audit_rank{rank}.json").write_text(json.dumps({"writes": record, "rcs": rcs}))
            orig = UnpairedBatches.batch

            def batch(self, step, _orig=orig):
                if step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return _orig(self, step)
            UnpairedBatches.batch = batch
        rcs.append(main(argv + ["--launcher", "pytorch"]))
    (log_dir / f"audit_rank{rank}.json").write_text(json.dumps({"writes": record, "rcs": rcs}))


# ------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def ddp_step(tiny_prepared, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("ddp_step")
    spawn(_step_worker, free_port(), tiny_prepared["source"], tiny_prepared["target"], out)
    return torch.load(out / "ddp_step.pt", weights_only=False), out


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_batch_one_equal_one_process_batch_two(name, ddp_step, tiny_prepared):
    results, _ = ddp_step
    src, tgt = tiny_prepared["source"], tiny_prepared["target"]
    full = global_batch(build_method(cfg_of(name)), src, tgt)
    ref_logs, ref_params, ref_grads = one_step(name, full)
    logs, params, grads = results[name]
    idle = {"S"} if name == "semst_local_gan" else set()
    assert set(grads) == set(ref_grads) and {k.split(".")[0] for k in grads} & idle == set()
    trained = [k for k, _ in build_method(cfg_of(name)).named_parameters() if k.split(".")[0] not in idle]
    assert len(grads) == len(trained)  # every other parameter has a gradient
    scales = {}
    for net in {k.split(".")[0] for k in ref_grads}:
        keys = [k for k in ref_grads if k.split(".")[0] == net]
        scales[net] = max(float(ref_grads[k].abs().max()) for k in keys)
        assert scales[net] > 0, net
        for k in keys:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5 * scales[net])
    for k in ref_params:
        net_scale = scales[k.split(".")[0]] if k in ref_grads else 0.0
        torch.testing.assert_close(params[k], ref_params[k], rtol=1e-5, atol=1e-7 + LR * 1e-5 * net_scale)
    assert set(logs) == set(ref_logs)
    for k in ref_logs:
        assert logs[k] == pytest.approx(ref_logs[k], rel=1e-4, abs=1e-6), k
    if name == "cut":  # sensitivity: rank 0's own (unsynchronised) gradient is far from the reference
        _, _, local = one_step(name, {k: v[:1] for k, v in full.items()})
        assert max(float((local[k] - ref_grads[k]).abs().max()) for k in ref_grads) > 1e-3


def test_non_finite_loss_on_one_rank_stops_every_rank(ddp_step):
    _, out = ddp_step
    assert [(out / f"nan_rank{r}.txt").read_text() for r in range(WORLD)] == ["NonFiniteLossError NCE"] * WORLD


@pytest.fixture(scope="module")
def ddp_runs(tiny_prepared, tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted 2-process run ``ref``, and run ``b`` SIGKILLed before step 7 (checkpoint
    at 4) then resumed in fresh processes with --resume."""
    root = tmp_path_factory.mktemp("ddp_runs")
    runs = {name: root / name for name in ("ref", "b")}
    logs = {name: root / f"log_{name}" for name in ("first", "resume")}
    for d in logs.values():
        d.mkdir()

    def argv(out: Path, *extra: str) -> list[str]:
        args = ["train", "--config", str(CONFIGS / "semst_tiny.yaml"), "--source", str(tiny_prepared["source"]),
                "--target", str(tiny_prepared["target"]), "--out", str(out), "--no-progress", "--device", "cpu",
                "--seed", "3", "--iters", "10"]
        args += ["--cfg-options", *TINY, "train.save_every=4", "train.log_every=1", "train.sample_every=5"]
        return args + list(extra)

    with pytest.raises(ProcessException):
        spawn(_train_worker, [(argv(runs["ref"]), free_port()), (argv(runs["b"]), free_port())],
              list(runs.values()), logs["first"], 7)
    assert load_checkpoint(runs["b"] / "checkpoint.pt")["step"] == 4 and not (runs["b"] / "final.pt").exists()
    spawn(_train_worker, [(argv(runs["b"], "--resume"), free_port())], list(runs.values()), logs["resume"], None)
    return {**runs, **logs}


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_killed_two_process_run_resumes_to_the_same_end(ddp_runs, tiny_prepared):
    ref, b = load_checkpoint(ddp_runs["ref"] / "final.pt"), load_checkpoint(ddp_runs["b"] / "final.pt")
    assert b["step"] == ref["step"] == 10 and b["finished"] and b["world_size"] == 2
    assert load_checkpoint(ddp_runs["b"] / "checkpoint.pt")["step"] == 10
    for k in ref["models"]:
        assert torch.equal(ref["models"][k], b["models"][k]), k
    # the checkpoint loads into a single-process method as before (no DDP 'module.' prefixes)
    build_method(cfg_of("semst")).load_state_dict(b["models"], strict=True)
    r_ref, r_b = rows(ddp_runs["ref"] / "losses.csv"), rows(ddp_runs["b"] / "losses.csv")
    assert [r["step"] for r in r_b] == [str(i) for i in range(1, 11)]
    assert [r["G"] for r in r_b] == [r["G"] for r in r_ref]


def test_only_rank_zero_writes(ddp_runs):
    first = [json.loads((ddp_runs["first"] / f"audit_rank{r}.json").read_text()) for r in range(WORLD)]
    resumed = [json.loads((ddp_runs["resume"] / f"audit_rank{r}.json").read_text()) for r in range(WORLD)]
    assert first[0]["rcs"] == first[1]["rcs"] == [0] and resumed[0]["rcs"] == resumed[1]["rcs"] == [0]
    assert first[1]["writes"] == [] and resumed[1]["writes"] == []
    ref = str(ddp_runs["ref"])
    written = {Path(w.split(" ", 1)[1]).name for w in first[0]["writes"] if w.split(" ", 1)[1].startswith(ref)}
    assert {"final.pt", "config.yaml", "losses.csv", "latest.png", "step_0000005.png"} <= written
    assert any(w.startswith("os.rename") and w.endswith("checkpoint.pt") for w in resumed[0]["writes"])
    assert not [p for p in ddp_runs["ref"].rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------------------ in-process pieces
def test_ranks_read_disjoint_blocks_of_the_single_process_batch(tiny_prepared, monkeypatch):
    """Rank r of 2 (batch 1) reads the r-th image of a single process's batch 2, with its own crops."""
    from translators import data

    cfg = cfg_of("cut")
    spec = build_method(cfg).crop_spec()
    src, tgt = open_domain(tiny_prepared["source"]), open_domain(tiny_prepared["target"])
    real = data.UnpairedBatches(src, tgt, spec, 1, seed=0, prefetch=False, rank=0, world_size=2).batch(3)
    other = data.UnpairedBatches(src, tgt, spec, 1, seed=0, prefetch=False, rank=1, world_size=2).batch(3)
    assert not torch.equal(real["A_l"], other["A_l"])
    index = {str(it.path): i for i, it in enumerate([*src.items, *tgt.items])}
    monkeypatch.setattr(data, "read_image", lambda p: np.full((32, 64, 3), index[str(p)], np.uint8))

    def ids(rank: int, world: int, bs: int, step: int) -> list[int]:
        b = data.UnpairedBatches(src, tgt, spec, bs, seed=0, prefetch=False, rank=rank, world_size=world).batch(step)
        return [round((float(x.mean()) + 1) * 127.5) for key in ("A_l", "B_l") for x in b[key]]
    for step in (1, 5):  # step 5 lies in the second epoch of the 8 source images
        single = ids(0, 1, 2, step)
        ranks = [ids(r, 2, 1, step) for r in range(2)]
        assert [ranks[0][0], ranks[1][0]] == single[:2] and [ranks[0][1], ranks[1][1]] == single[2:]
    with pytest.raises(ValueError, match="rank"):
        data.UnpairedBatches(src, tgt, spec, 1, seed=0, rank=2, world_size=2)


def test_launcher_environment():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    assert launcher_env("pytorch", env) == dict(rank=3, world_size=8, local_rank=1, master_addr="n1", master_port=1234)
    with pytest.raises(LauncherError, match="LOCAL_RANK is not set.*torchrun"):
        launcher_env("pytorch", {k: v for k, v in env.items() if k != "LOCAL_RANK"})
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODELIST": "gpu[07-09,12]"}
    assert launcher_env("slurm", slurm) == dict(rank=5, world_size=8, local_rank=1, master_addr="gpu07",
                                                master_port=29500)
    assert launcher_env("slurm", {**slurm, "SLURM_JOB_ID": "123456"})["master_port"] == 20000 + 123456 % 20000
    assert launcher_env("slurm", {**slurm, "MASTER_PORT": "777", "MASTER_ADDR": "x"})["master_port"] == 777
    with pytest.raises(LauncherError, match="SLURM_NTASKS"):
        launcher_env("slurm", {k: v for k, v in slurm.items() if k != "SLURM_NTASKS"})
    with pytest.raises(LauncherError, match="rank 8 .*world of 8"):
        launcher_env("slurm", {**slurm, "SLURM_PROCID": "8"})
    assert [first_host(s) for s in ("node1", "a[3-4],b1", "gpu-[010,012]", "x1,y[2-3]")] == \
        ["node1", "a3", "gpu-010", "x1"]
    assert rank_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(LauncherError, match="cuda:1"):
        rank_device("cuda:1", 0)


def test_cli_launcher_without_its_environment_exits_2(tiny_prepared, tmp_path, monkeypatch, caplog):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    rc = main(["train", "--config", str(CONFIGS / "cut_tiny.yaml"), "--source", str(tiny_prepared["source"]),
               "--target", str(tiny_prepared["target"]), "--out", str(tmp_path / "x"), "--launcher", "pytorch"])
    assert rc == 2 and "--launcher pytorch" in caplog.text and "RANK is not set" in caplog.text
    assert not (tmp_path / "x").exists()
