"""Training loop for the translators (``python -m translators train``).

Writes into ``out``: ``checkpoint.pt`` (latest full state, atomically every ``train.save_every``
steps and at the end), ``final.pt`` (weights + config, only once training finished; Snakemake's
target), ``losses.csv`` (one row per ``train.log_every`` steps; truncated to the resumed step on
``--resume``), ``samples/step_<n>.png`` + ``samples/latest.png`` grids and ``config.yaml``.

Resume is bit-for-bit on CPU: the batch of step n depends only on (seed, n) (translators.data),
and the checkpoint holds models, optimisers, LR schedulers, the GradScaler and every RNG state.
On CUDA set ``train.cudnn_benchmark=false`` (and deterministic algorithms) for exact replay.
A non-finite loss stops training before any optimiser step; the last good checkpoint is kept
and :class:`TrainingDiverged` names the step. Parameters are checked for NaN/Inf before every save.

Multi-process (``dist``, translators/distributed.py, docs/multigpu.md): every trained network is
wrapped in DDP; ``train.batch_size`` is per process (the effective batch is world_size x it);
rank r reads its own block of each step's images (translators.data); initial weights and the
model-side RNG (patch ids, image pool) are identical on every rank; only rank 0 writes files
(checkpoints, samples, losses.csv, config.yaml) and logs, with the losses averaged over ranks;
``--resume`` loads rank 0's checkpoint on every rank.
"""
from __future__ import annotations

import csv
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm import tqdm

from domains.io import atomic_path
from translators.checkpoint import (atomic_save, check_compatible, load_checkpoint, rng_state, set_rng_state)
from translators.config import TranslatorConfig
from translators.data import UnpairedBatches, open_domain, to_uint8
from translators.distributed import (DistContext, all_reduce_mean, any_rank, sync_rng_from_rank0,
                                     wrap_networks)
from translators.methods import NonFiniteLossError, TranslatorMethod, build_method
from translators.methods.base import resolve_cpu_amp

log = logging.getLogger(__name__)
CHECKPOINT, FINAL, LOSSES = "checkpoint.pt", "final.pt", "losses.csv"


class TrainingDiverged(RuntimeError):
    """A loss became NaN/Inf. ``step`` is the failing step; ``last_good`` the kept checkpoint's step."""

    def __init__(self, step: int, loss: str, value: float, checkpoint: Path | None, last_good: int | None) -> None:
        kept = (f"the last good checkpoint (step {last_good}) is kept at {checkpoint}" if checkpoint
                else "no checkpoint had been written yet")
        super().__init__(f"training diverged at step {step}: loss '{loss}' is {value}; {kept}. "
                         f"Lower train.lr or check the data, then rerun (with --resume to continue).")
        self.step, self.loss, self.value, self.checkpoint, self.last_good = step, loss, value, checkpoint, last_good


@dataclass
class TrainResult:
    out: Path
    step: int
    finished: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(cfg: TranslatorConfig):
    """CUT's linear policy per iteration: constant, then linearly to 0 over the last decay_iters."""
    iters = cfg.train.iters
    decay = iters // 2 if cfg.train.decay_iters is None else min(cfg.train.decay_iters, iters)

    def factor(t: int) -> float:
        return 1.0 - max(0, t - (iters - decay)) / float(decay + 1)
    return factor


def make_adam(params, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam with the fused kernel (one op per step instead of ~10 per tensor) where available."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, betas=betas)


class LossLog:
    """Append-only CSV of logged losses; on resume rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path, self.fields = path, None
        if resume_step is None:
            path.unlink(missing_ok=True)
        elif path.is_file():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.fields = reader.fieldnames
                rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(rows)

    def append(self, row: dict) -> None:
        new = not self.path.is_file() or self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a" if not new else "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore", restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)


def save_image_atomic(img: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def write_samples(method: TranslatorMethod, state: dict, batch: dict, out: Path, step: int, max_rows: int = 4) -> Path:
    """Grid: one row per batch element (<= max_rows), columns = ``method.visuals``."""
    with torch.no_grad():
        cols = [c.detach()[:max_rows].float().cpu() for c in method.visuals(state, batch)]
    rows = [torch.cat([c[b] for c in cols], dim=2) for b in range(cols[0].shape[0])]
    grid = to_uint8(torch.cat(rows, dim=1))
    path = out / "samples" / f"step_{step:07d}.png"
    save_image_atomic(grid, path)
    save_image_atomic(grid, out / "samples" / "latest.png")
    return path


def _all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _checkpoint(method, cfg, step, finished, opts=None, scheds=None, scaler=None, world_size: int = 1) -> dict:
    ckpt = {"format": 1, "method": method.name, "arch": cfg.arch(), "config": cfg.to_dict(), "step": step,
            "finished": finished, "world_size": world_size,
            "models": {k: v.detach().cpu() for k, v in method.state_dict().items()}}
    if opts is not None:
        ckpt.update(optimizers={k: o.state_dict() for k, o in opts.items()},
                    schedulers={k: s.state_dict() for k, s in scheds.items()},
                    scaler=scaler.state_dict(), rng=rng_state())
    return ckpt


def train(cfg: TranslatorConfig, source: str | Path, target: str | Path, out: str | Path, *,
          source_split: str = "train", target_split: str = "train", seed: int = 0,
          init: str | Path | None = None, resume: bool = False, feedback=None,
          stop_after: int | None = None, show_progress: bool = True,
          dist: DistContext | None = None) -> TrainResult:
    """Train ``cfg.method`` from ``source`` to ``target`` images; see the module docstring.

    ``feedback``: optional callable (input, output) -> loss (:class:`translators.feedback.SemanticFeedback`).
    ``stop_after``: stop (as if killed) after this step, with a checkpoint but without final.pt --
    for time-limited jobs; continue with ``resume=True``.
    ``dist``: this process's place in a multi-process run (:func:`translators.distributed.init_distributed`;
    the process group must be up); None = one process."""
    ctx = dist or DistContext()
    main = ctx.is_main
    out = Path(out)
    ckpt_path, final_path = out / CHECKPOINT, out / FINAL
    # every input (data, --resume state, --init) is read and checked before ``out`` is created or
    # changed: bad input leaves no run folder behind (docs/errors.md)
    device = ctx.device if ctx.enabled and ctx.device is not None else resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    src, tgt = open_domain(source, source_split), open_domain(target, target_split)
    if main:
        log.info("%s: %d source images (%s), %d target images (%s)", cfg.method, len(src.items), source,
                 len(tgt.items), target)

    seed_everything(seed)  # the same on every rank: identical initial weights and model-side draws
    method = build_method(cfg)
    resume_ckpt = None
    if resume and ckpt_path.is_file():
        resume_ckpt = load_checkpoint(ckpt_path)
        check_compatible(resume_ckpt, cfg, ckpt_path)
        if resume_ckpt["step"] >= cfg.train.iters and resume_ckpt.get("finished") and final_path.is_file():
            log.info("%s already finished at step %d; nothing to do", final_path, resume_ckpt["step"])
            return TrainResult(out, resume_ckpt["step"], True)
    elif resume and final_path.is_file():
        final = load_checkpoint(final_path)
        check_compatible(final, cfg, final_path)
        if final["step"] >= cfg.train.iters:
            log.info("%s already finished at step %d (no %s); nothing to do", final_path, final["step"], CHECKPOINT)
            return TrainResult(out, final["step"], True)
        log.info("--resume: %s holds no optimiser state; starting from scratch", final_path)
    elif resume:
        log.info("--resume: no %s yet, starting from scratch", ckpt_path)
    if resume_ckpt is None and init is not None:
        init_ckpt = load_checkpoint(init)
        check_compatible(init_ckpt, cfg, init)
        method.load_state_dict(init_ckpt["models"])
        log.info("initialised weights from %s (step %s)", init, init_ckpt.get("step"))
    ctx.barrier()  # every rank has decided from the same files before rank 0 changes any
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [*out.glob(".*.tmp-*"), *out.glob("samples/.*.tmp-*")]:  # left by a killed run
            stale.unlink(missing_ok=True)
        if resume_ckpt is None:
            final_path.unlink(missing_ok=True)  # a fresh run invalidates an older final.pt
    ctx.barrier()  # the other ranks use ``out`` only once rank 0 has created/cleaned it
    method.setup(device, cpu_amp=resolve_cpu_amp(cfg.train.cpu_amp))
    if method.amp_enabled and device.type == "cpu":
        log.info("CPU training under bf16 autocast (train.cpu_amp=%s; 'off' trains in float32)", cfg.train.cpu_amp)

    t = cfg.train
    opts = {k: make_adam(p, t.lr, (t.beta1, t.beta2)) for k, p in method.param_groups().items()}
    factor = lr_lambda(cfg)
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in opts.items()}
    scaler = torch.amp.GradScaler(device.type, enabled=method.amp_enabled and method.amp_dtype == torch.float16)
    step = 0
    if resume_ckpt is not None:
        method.load_state_dict(resume_ckpt["models"])
        for k, o in opts.items():
            o.load_state_dict(resume_ckpt["optimizers"][k])
        for k, s in scheds.items():
            s.load_state_dict(resume_ckpt["schedulers"][k])
        scaler.load_state_dict(resume_ckpt["scaler"])
        set_rng_state(resume_ckpt["rng"])
        step = int(resume_ckpt["step"])
        if main and step > 0 and final_path.is_file() and step < t.iters:
            final_path.unlink()  # training is being extended past the old end
        saved_world = int(resume_ckpt.get("world_size", 1))
        if main and saved_world != ctx.world_size:
            log.warning("%s was written by %d process(es), resuming with %d: the data stream from step %d on "
                        "differs from the original run's", ckpt_path, saved_world, ctx.world_size, step + 1)
        if main:
            log.info("resumed from %s at step %d", ckpt_path, step)
    if ctx.enabled:
        sync_rng_from_rank0(device)
        wrap_networks(method, ctx)
        method.log_reducer = all_reduce_mean
    if main:
        with atomic_path(out / "config.yaml") as tmp_cfg:
            tmp_cfg.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    data = UnpairedBatches(src, tgt, method.crop_spec(), t.batch_size, seed, flip=cfg.data.flip,
                           resize_short_side=cfg.data.resize_short, prefetch=cfg.data.prefetch,
                           rank=ctx.rank, world_size=ctx.world_size)
    losses = LossLog(out / LOSSES, resume_step=step if resume_ckpt is not None else None) if main else None
    last_good = step if resume_ckpt is not None else None
    method.train()
    pbar = tqdm(total=t.iters, initial=step, unit="it", dynamic_ncols=True, disable=not (show_progress and main),
                desc=f"train {cfg.method}")
    t_window, n_window = time.perf_counter(), 0
    try:
        while step < t.iters:
            batch = data.batch(step + 1)
            try:
                logs, state = method.train_step(batch, step / t.iters, opts, scaler, feedback)
            except NonFiniteLossError as err:
                raise TrainingDiverged(step + 1, err.name, err.value, ckpt_path if last_good is not None else None,
                                       last_good) from err
            for s in scheds.values():
                s.step()
            step += 1
            n_window += 1
            pbar.update(1)
            done = step >= t.iters
            if main and (step % t.log_every == 0 or done):
                now = time.perf_counter()
                row = {"step": step, "lr": opts["G"].param_groups[0]["lr"],
                       "s_per_iter": (now - t_window) / n_window, **logs}
                losses.append(row)
                pbar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k in ("D", "G", "NCE", "TS")})
                t_window, n_window = now, 0
            if main and (step % t.sample_every == 0 or done):
                write_samples(method, state, batch, out, step)
            del state
            stop = stop_after is not None and step >= stop_after
            if step % t.save_every == 0 or done or stop:
                bad = not _all_finite(method)
                if any_rank(bad, device) if ctx.enabled else bad:  # all ranks raise together
                    raise TrainingDiverged(step, "parameters", float("nan"),
                                           ckpt_path if last_good is not None else None, last_good)
                if main:
                    atomic_save(_checkpoint(method, cfg, step, done, opts, scheds, scaler, ctx.world_size), ckpt_path)
                last_good = step
            if stop and not done:
                if main:
                    log.info("stopping after step %d as requested; continue with --resume", step)
                ctx.barrier()  # returns once the checkpoint is on disk, on every rank
                return TrainResult(out, step, False)
    finally:
        data.close()
        pbar.close()
    if main:
        atomic_save(_checkpoint(method, cfg, step, True, world_size=ctx.world_size), final_path)
        log.info("finished %d steps; wrote %s", step, final_path)
    ctx.barrier()
    return TrainResult(out, step, True)
