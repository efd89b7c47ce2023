"""``python -m segmenters train``: train a segmenter with a UDA method through mmengine's Runner.

::

    python -m segmenters train --arch deeplabv2 --preset tiny --uda bdl \\
        --source data/prepared/gta5 [--source-images data/refined/gta2cs/semst/r0] \\
        --target data/prepared/cityscapes [--pseudo data/pseudo/gta2cs/bdl_semst/r1] \\
        --work-dir results/runs/gta2cs/bdl_semst/r1 [--max-iters N] [--init CKPT] [--resume] \\
        [--seed 0] [--cfg-options key=value ...]

The config comes from :func:`segmenters.configs.load_config` (``--cfg-options`` keys must exist and
values keep the kind of the value they replace).
The UDA method (:mod:`segmenters.uda`) supplies the training dataset, the model type and the
optimiser config; the rest is mmengine: ``IterBasedTrainLoop`` with an ``InfiniteSampler``,
``CheckpointHook`` (``iter_<n>.pth`` every ``checkpoint_interval``, last two kept), ``LoggerHook``
every ``log_interval``, validation on the target val split with mmseg's ``IoUMetric`` every
``val_interval`` and at the end, and ``final.pth`` (docs/design.md §8.4) written atomically by
:func:`segmenters.checkpoint.save_final`.

Device: mmengine picks CUDA when available, else CPU. On CUDA the optimiser wrappers become
``AmpOptimWrapper`` (mixed precision) unless the config sets ``amp = False`` or ``--no-amp`` is
given, and cuDNN benchmark is on.

``--resume`` continues from the newest ``iter_<n>.pth`` in the work dir (Runner ``resume=True``:
weights, optimisers, schedulers, iteration); these run checkpoints are our own, so they are
unpickled fully (:func:`segmenters.compat.trusted_checkpoints`). ``--init`` (or the config's
``init_from``) loads init weights with ``weights_only=True`` before the first iteration of a fresh
run (never over a resumed state); ``init_strict`` decides whether missing/unexpected segmentation
network keys are an error. A registry name (``resnet101_v1c``, ``vgg16``: the paper presets' default,
docs/weights.md) is resolved to the weights cache at start-up, so a missing file stops the run at once.

``--launcher pytorch|slurm`` trains with one process per GPU started by ``torchrun`` / ``srun``
(:mod:`segmenters.distributed`, docs/multigpu.md): ``batch_size`` is per process, rank 0 writes the
checkpoints, logs and ``final.pth``.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import compat

compat.install_mmcv_ops_stand_in()

import torch  # noqa: E402
from mmengine.config import ConfigDict  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import HOOKS  # noqa: E402

from domains.cfg_options import add_cfg_options_argument  # noqa: E402
from domains.prepared import PreparedDataError, PreparedDataset  # noqa: E402

from . import datasets as seg_datasets  # noqa: E402  (registers PreparedSegDataset, UDADataset)
from . import distributed as seg_dist  # noqa: E402  (--launcher: wrappers, gloo on CPU)
from .configs import ARCH_FILES, PRESETS, load_config  # noqa: E402
from .uda import METHODS, TrainInputs, UDAMethod, get_method  # noqa: E402
from .uda.base import TrainError, val_dataset_cfg  # noqa: E402

logger = logging.getLogger(__name__)

FINAL_NAME = "final.pth"


@dataclass
class TrainResult:
    """What a run produced: ``final.pth``, the iteration it started from and ended at, val metrics."""

    final: Path
    start_iter: int
    end_iter: int
    metrics: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# hooks
# --------------------------------------------------------------------------------------------------
def segmentation_network(model: torch.nn.Module) -> torch.nn.Module:
    """A view of ``model`` without the UDA method's extra modules (e.g. the BDL discriminator):
    its state-dict keys and tensors are exactly the EncoderDecoder's."""
    extra = set(getattr(model, "extra_modules", ()))
    if not extra:
        return model
    return torch.nn.ModuleDict({n: c for n, c in model.named_children() if n not in extra})


def load_init_weights(model: torch.nn.Module, path: Path | str, strict: bool,
                      config_key: str = "init_from") -> dict[str, list[str]]:
    """Load init weights (a file or a :mod:`domains.weights` registry name; ``weights_only=True``)
    into the segmentation network of ``model`` (:func:`segmenters.checkpoint.load_init_weights`);
    errors become :class:`TrainError`."""
    from .checkpoint import load_init_weights as _load

    try:
        return _load(segmentation_network(model), path, strict=strict, config_key=config_key)
    except (FileNotFoundError, ValueError) as err:
        raise TrainError(f"--init / init_from: {err}") from err


def resolve_init(spec: str | None, config_key: str) -> Path | None:
    """The init weights file of ``spec`` (registry name or path; None: train from scratch), resolved at
    start-up so a missing file stops the run before the Runner is built; errors become :class:`TrainError`."""
    from .checkpoint import resolve_weights

    if spec is None:
        return None
    hint = "; or --cfg-options init_from=None to train from scratch" if config_key == "init_from" else ""
    try:
        return resolve_weights(spec, config_key, hint=hint)
    except FileNotFoundError as err:
        raise TrainError(str(err)) from err


@HOOKS.register_module(force=True)
class RunStartHook(Hook):
    """Records the iteration training starts from and loads ``--init`` weights into a fresh run.

    Runs at ``before_train``, i.e. after mmengine's weight init and after a resume, so init
    weights never overwrite a resumed state.
    """

    priority = "VERY_HIGH"

    def __init__(self, init: str | os.PathLike | None = None, init_strict: bool = True,
                 init_key: str = "init_from") -> None:
        self.init = Path(init) if init else None
        self.init_strict = bool(init_strict)
        self.init_key = init_key
        self.start_iter: int | None = None

    def before_train(self, runner: Runner) -> None:
        self.start_iter = int(runner.iter)
        runner.logger.info(f"training starts at iter {self.start_iter} of {runner.max_iters}")
        if self.init is not None and self.start_iter == 0:
            model = runner.model.module if hasattr(runner.model, "module") else runner.model
            load_init_weights(model, self.init, self.init_strict, self.init_key)


# --------------------------------------------------------------------------------------------------
# config assembly
# --------------------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    return copy.deepcopy(obj)


def _use_amp(cfg: Any, no_amp: bool) -> bool:
    return torch.cuda.is_available() and not no_amp and bool(cfg.get("amp", True))


def _amp_wrapper(ow: dict) -> dict:
    """Switch every single-optimiser entry of an optim_wrapper config to ``AmpOptimWrapper``."""
    ow = copy.deepcopy(ow)
    if "optimizer" in ow:
        if ow.get("type", "OptimWrapper") == "OptimWrapper":
            ow["type"] = "AmpOptimWrapper"
            ow.setdefault("loss_scale", "dynamic")
        return ow
    return {k: (_amp_wrapper(v) if isinstance(v, dict) else v) for k, v in ow.items()}


def _schedulers(cfg: Any, config_max_iters: int, max_iters: int) -> list[dict]:
    """The config's param_scheduler; an ``end`` equal to the config's max_iters follows ``--max-iters``
    (the tiny presets decay over the run; the paper presets' 250k-step poly is kept)."""
    scheds = _plain(cfg.param_scheduler)
    scheds = scheds if isinstance(scheds, list) else [scheds]
    for s in scheds:
        if s.get("end") == config_max_iters and max_iters != config_max_iters:
            s["end"] = max_iters
    return scheds


def _check_inputs(method: UDAMethod, inputs: TrainInputs) -> tuple[PreparedDataset | None, PreparedDataset]:
    source = PreparedDataset.load(inputs.source) if method.uses_source else None
    target = PreparedDataset.load(inputs.target)
    if source is not None:
        source.stems(inputs.source_split)
    if inputs.val_split not in target.splits:
        raise TrainError(f"target {target.root} has no '{inputs.val_split}' split to validate on "
                         f"(has: {', '.join(target.splits)})")
    if not target.is_labelled(inputs.val_split):
        raise TrainError(f"target {target.root} split '{inputs.val_split}' has no labels; validation "
                         "needs a labelled split (prepare Cityscapes with its gtFine val labels)")
    stems = target.stems(inputs.target_split)
    if inputs.pseudo is not None:
        if not method.accepts_pseudo:
            raise TrainError(f"--pseudo is not used by --uda {method.name}; use a method with "
                             f"self-training ({', '.join(n for n, m in METHODS.items() if m.accepts_pseudo)})")
        seg_datasets.check_pseudo_dir(inputs.pseudo, stems)
    if inputs.target_images is not None and not Path(inputs.target_images).is_dir():
        raise TrainError(f"--target-images {inputs.target_images} is not a folder")
    if inputs.source_images is not None:
        if not method.uses_source:
            logger.warning("--source-images is ignored by --uda %s (it trains on the target only)", method.name)
        elif not Path(inputs.source_images).is_dir():
            raise TrainError(f"--source-images {inputs.source_images} is not a folder")
    if method.name == "oracle" and not target.is_labelled(inputs.target_split):
        raise TrainError(f"--uda oracle needs labels for target split '{inputs.target_split}' of {target.root}")
    return source, target


def build_runner(args: argparse.Namespace) -> tuple[Runner, dict, RunStartHook]:
    """Assemble the mmengine Runner for ``args``; returns it, the final.pth meta and the start hook."""
    method = get_method(args.uda)
    try:
        cfg = load_config(args.arch, args.preset, args.cfg_options)
    except (KeyError, ValueError) as err:
        raise TrainError(err.args[0] if err.args else str(err)) from err
    config_max_iters = int(cfg.max_iters)
    max_iters = int(args.max_iters) if args.max_iters else config_max_iters
    if max_iters < 1:
        raise TrainError(f"--max-iters must be >= 1, got {max_iters}")
    init_key = "--init" if args.init else "init_from"
    try:
        init = resolve_init(args.init or cfg.get("init_from", None), init_key)
    except TrainError as err:
        if not (args.resume and any(Path(args.work_dir).glob("iter_*.pth"))):
            raise
        logger.warning("resuming, so init weights are not needed: %s", err)
        init = None
    inputs = TrainInputs(source=Path(args.source), target=Path(args.target),
                         source_images=Path(args.source_images) if args.source_images else None,
                         pseudo=Path(args.pseudo) if args.pseudo else None,
                         target_images=Path(args.target_images) if getattr(args, "target_images", None) else None,
                         source_split=args.source_split, target_split=args.target_split,
                         val_split=args.val_split, seed=args.seed)
    source, target = _check_inputs(method, inputs)
    model_cfg = method.model(cfg, inputs)
    try:
        from mmseg.registry import MODELS

        dist_setup = seg_dist.setup(getattr(args, "launcher", "none"), method, MODELS.get(model_cfg["type"]),
                                    cfg.get("sync_bn", False), torch.cuda.is_available())
    except seg_dist.DistributedError as err:
        raise TrainError(str(err)) from err

    batch_size = int(cfg.batch_size)
    workers = args.workers if args.workers is not None else min(4, max((os.cpu_count() or 1) // 2, 0))
    train_dataset = method.train_dataset(cfg, inputs)
    if method.paired:
        num_source = len(source.stems(inputs.source_split))
        # every rank draws batch_size per iteration: the run draws batch_size x world_size
        train_dataset["length"] = seg_datasets.uda_length(num_source, max_iters,
                                                          batch_size * dist_setup.info.world_size)
    loader = dict(num_workers=workers, persistent_workers=workers > 0)
    amp = _use_amp(cfg, args.no_amp)
    optim_wrapper = method.optim_wrapper(cfg)
    if amp:
        optim_wrapper = _amp_wrapper(optim_wrapper)
    optim_wrapper = dist_setup.optim_wrapper(optim_wrapper)
    # --val-interval 0: no validation inside training (the workflow's evaluate rule scores every
    # round, so in-training validation would only cost wall time)
    val_interval = int(cfg.get("val_interval", max_iters) if args.val_interval is None else args.val_interval)
    if val_interval < 0:
        raise TrainError(f"--val-interval must be >= 0, got {val_interval}")
    validate = val_interval > 0
    start_hook = RunStartHook(init=init, init_strict=bool(cfg.get("init_strict", True)), init_key=init_key)
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(
        model=ConfigDict(model_cfg),
        work_dir=str(work_dir),
        train_dataloader=dict(batch_size=batch_size, sampler=dict(type="InfiniteSampler", shuffle=True),
                              dataset=train_dataset, collate_fn=dict(type="pseudo_collate"), **loader),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max(val_interval, 1)),
        val_dataloader=dict(batch_size=1, sampler=dict(type="DefaultSampler", shuffle=False),
                            dataset=val_dataset_cfg(cfg, inputs), collate_fn=dict(type="pseudo_collate"),
                            **loader) if validate else None,
        val_cfg=dict(type="ValLoop") if validate else None,
        val_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]) if validate else None,
        optim_wrapper=optim_wrapper,
        param_scheduler=_schedulers(cfg, config_max_iters, max_iters),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=int(cfg.get("log_interval", 10)), log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=int(cfg.get("checkpoint_interval", max_iters)),
                            max_keep_ckpts=2, save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        custom_hooks=[start_hook],
        log_processor=dict(by_epoch=False),
        env_cfg=dict(cudnn_benchmark=torch.cuda.is_available(), mp_cfg=dict(mp_start_method="fork"),
                     dist_cfg=dict(backend="nccl" if torch.cuda.is_available() else "gloo")),
        randomness=dict(seed=args.seed),
        resume=bool(args.resume),
        default_scope="mmseg",
        # unique: mmengine keys its logger / message hub / visualizer instances by this name
        experiment_name=f"{args.arch}_{method.name}_{uuid.uuid4().hex[:8]}",
        **dist_setup.runner_kwargs,
    )
    meta = dict(arch=args.arch, preset=args.preset, num_classes=int(cfg.num_classes), uda=method.name,
                test_scale=[int(s) for s in cfg.test_scale], model_cfg=_plain(cfg.model),
                amp=amp, source=str(inputs.source), target=str(inputs.target),
                source_images=str(inputs.source_images) if inputs.source_images else None,
                pseudo=str(inputs.pseudo) if inputs.pseudo else None, seed=args.seed)
    return runner, meta, start_hook


def train(args: argparse.Namespace) -> TrainResult:
    """Run the training described by parsed CLI ``args``; returns the :class:`TrainResult`."""
    from .checkpoint import save_final

    runner, meta, start_hook = build_runner(args)
    work_dir = Path(args.work_dir)
    if not args.resume and any(work_dir.glob("iter_*.pth")):
        logger.warning("%s already holds iter_*.pth checkpoints; training from scratch (pass --resume to continue)",
                       work_dir)
    with compat.trusted_checkpoints(work_dir):
        runner.train()
    model = runner.model.module if hasattr(runner.model, "module") else runner.model
    meta["iter"] = int(runner.iter)
    final = work_dir / FINAL_NAME
    if seg_dist.is_main_process():  # rank 0 writes final.pth (atomically); the others wait for it
        save_final(model, meta, final)
    seg_dist.barrier()
    metrics = {}
    for key in ("aAcc", "mIoU", "mAcc"):
        buf = runner.message_hub.log_scalars.get(f"val/{key}")
        if buf is not None:
            metrics[key] = float(buf.current())
    if seg_dist.is_main_process():
        logger.info("wrote %s (iter %d%s)", final, meta["iter"],
                    f", val mIoU {metrics['mIoU']:.2f}" if "mIoU" in metrics else "")
    return TrainResult(final=final, start_iter=int(start_hook.start_iter or 0), end_iter=meta["iter"], metrics=metrics)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segmenters train",
                                description="Train a segmenter (DeepLab-V2 / FCN-8s) with a UDA method.")
    p.add_argument("--arch", required=True, choices=list(ARCH_FILES))  # segmenters/configs: one source
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--uda", required=True, choices=sorted(METHODS), help="UDA method")
    p.add_argument("--source", required=True, help="prepared source dataset folder (data/prepared/<src>)")
    p.add_argument("--source-images", default=None,
                   help="folder of refined source images (same stems/suffix) replacing the source images")
    p.add_argument("--target", required=True, help="prepared target dataset folder (data/prepared/<tgt>)")
    p.add_argument("--target-images", default=None,
                   help="folder of target images translated to the source style (same stems; --uda ldr)")
    p.add_argument("--pseudo", default=None, help="pseudo-label folder for the target train split (<dir>/<stem>.png)")
    p.add_argument("--work-dir", required=True, help="run folder: logs, iter_<n>.pth, final.pth")
    p.add_argument("--max-iters", type=int, default=None, help="override the config's max_iters")
    p.add_argument("--init", default=None, help="init weights: a file (state dict, ImageNet backbone or final.pth; "
                                                 "loaded weights_only) or a registry name of domains.weights "
                                                 "(default: the config's init_from)")
    p.add_argument("--resume", action="store_true", help="continue from the newest iter_<n>.pth in --work-dir")
    p.add_argument("--seed", type=int, default=0)
    add_cfg_options_argument(p, help="override config keys (they must exist; a value keeps the kind of the one it "
                                     "replaces; typed as mmengine's DictAction reads it, as in `python -m "
                                     "translators train`), e.g. uda.lambda_adv=1e-4 batch_size=1")
    p.add_argument("--source-split", default="train")
    p.add_argument("--target-split", default="train", help="target split trained on (unlabelled / pseudo / oracle)")
    p.add_argument("--val-split", default="val", help="labelled target split validated on")
    p.add_argument("--val-interval", type=int, default=None,
                   help="validate every N iterations (default: the config's val_interval; 0: never)")
    p.add_argument("--workers", type=int, default=None, help="data loader workers (default: min(4, cpus/2))")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    p.add_argument("--launcher", default="none", choices=seg_dist.LAUNCHERS,
                   help="multi-process training: pytorch under torchrun, slurm under srun (docs/multigpu.md)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    try:
        result = train(args)
        main_rank = seg_dist.is_main_process()
    except (TrainError, PreparedDataError) as err:
        from domains.errors import debug_enabled, short_message

        if debug_enabled():       # --debug / SEMST_DEBUG=1: the traceback
            raise
        print(f"error: {short_message(err)}", file=sys.stderr)
        return 2
    finally:
        seg_dist.shutdown()
    if main_rank:
        print(f"final checkpoint: {result.final} (iter {result.end_iter})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
