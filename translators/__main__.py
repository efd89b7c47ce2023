"""Command line: ``python -m translators {train,refine} ...`` (see docs/cli.md / --help).

Config overrides: ``--cfg-options KEY=VALUE [KEY=VALUE ...]``, the flag and value typing of ``python -m
segmenters train`` (domains/cfg_options.py); ``--set KEY=VALUE`` (repeatable), its former name, still
works, with a warning.

Exit codes: 0 ok, 2 bad input (config, data, checkpoint; one message naming the file or key, see
docs/errors.md), 3 training diverged (NaN/Inf loss). ``--debug`` (or ``SEMST_DEBUG=1``) shows the
traceback of an error instead.
"""
from __future__ import annotations

import argparse
import logging
import sys

from domains.cfg_options import add_cfg_options_argument
from domains.errors import DEBUG_ENV, debug_enabled, short_message
from domains.launcher import LAUNCHERS
from translators.checkpoint import CheckpointError
from translators.config import FEEDBACK_WEIGHT, ConfigError, load_config
from translators.data import DataError
from translators.feedback import FeedbackError


def method_list() -> str:
    """Every translator method of the registry (translators.methods), e.g. ``CUT (cut), SemST (semst), ...``:
    the names config files give as ``method``, without importing the lazily registered ones."""
    from translators.methods import LAZY_METHODS, METHODS

    names = {**{name: cls.__name__ for name, cls in METHODS.items()},
             **{name: cls for name, (_, cls) in LAZY_METHODS.items()}}
    return ", ".join(f"{label} ({name})" for name, label in names.items())


class _DeprecatedSet(argparse.Action):
    """``--set KEY=VALUE`` (repeatable), the former override flag: its items join ``--cfg-options``'s,
    in command-line order, and :func:`main` logs one deprecation warning."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), values])
        namespace.deprecated_set = True


CFG_OPTIONS_HELP = ("override config keys, e.g. --cfg-options loss.lambda_TS=1 semst.multiscale=false; values are "
                    "typed as in `python -m segmenters train` (mmengine's DictAction: 1 int, 1e-4 float, "
                    "true/false, None, [0,4] list, else a string), then converted to the key's type")


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    add_cfg_options_argument(parser, help=CFG_OPTIONS_HELP)
    parser.add_argument("--set", dest="cfg_options", action=_DeprecatedSet, metavar="KEY=VALUE",
                        help=argparse.SUPPRESS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m translators", description=__doc__.splitlines()[0])
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"show the traceback of an error instead of one message (also {DEBUG_ENV}=1)")
    p.add_argument("--debug", action="store_true", default=False,
                   help=f"show the traceback of an error instead of one message (also {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", required=True)

    methods = method_list()
    t = sub.add_parser("train", parents=[debug], help=f"train a translator on unpaired source/target images; "
                                                      f"methods: {methods}",
                       description=f"Train a translator on unpaired source/target images. Methods (the "
                                   f"config's `method`): {methods}.")
    t.add_argument("--config", required=True, help="YAML config, e.g. translators/configs/semst_tiny.yaml")
    t.add_argument("--source", help="prepared dataset root (data/prepared/<name>) or image folder")
    t.add_argument("--target", help="prepared dataset root or image folder")
    t.add_argument("--unpaired-root", help="instead of --source/--target: a CycleGAN/CUT dataset root X with "
                                           "X/trainA (source) and X/trainB (target), e.g. datasets/horse2zebra")
    t.add_argument("--unpaired-phase", default="train", choices=("train", "test"),
                   help="with --unpaired-root: use X/<phase>A and X/<phase>B (default train)")
    t.add_argument("--out", required=True, help="run folder, e.g. results/runs/<pair>/<translator>/r0")
    t.add_argument("--source-split", default="train")
    t.add_argument("--target-split", default="train")
    t.add_argument("--iters", type=int, help="total iterations (overrides train.iters)")
    t.add_argument("--seed", type=int, default=0)
    _add_overrides(t)
    t.add_argument("--init", help="initialise G/F/D (and the scale head) from a previous round's final.pt")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if present")
    t.add_argument("--stop-after", type=int, help="stop after this step (checkpoint, no final.pt); resume later")
    t.add_argument("--device", help="auto | cpu | cuda[:i] (overrides train.device)")
    t.add_argument("--feedback-segmenter", help="segmenter checkpoint for the semantic-consistency loss")
    t.add_argument("--feedback-weight", type=float, default=FEEDBACK_WEIGHT,
                   help=f"weight of that loss (default {FEEDBACK_WEIGHT}, BDL's)")
    t.add_argument("--no-progress", action="store_true", help="disable the tqdm bar")
    t.add_argument("--launcher", default="none", choices=LAUNCHERS,
                   help="multi-process training: 'pytorch' under torchrun, 'slurm' under srun (one process per "
                        "GPU; train.batch_size is per process); see docs/multigpu.md")

    r = sub.add_parser("refine", parents=[debug], help="translate every source image at full resolution")
    r.add_argument("--checkpoint", required=True, help="a final.pt written by `train`")
    r.add_argument("--source", required=True, help="prepared dataset root or image folder")
    r.add_argument("--split", default="train")
    r.add_argument("--out", required=True, help="e.g. data/refined/<pair>/<translator>/r<k>")
    r.add_argument("--batch-size", type=int, help="tiles per forward pass (default refine.batch_size)")
    r.add_argument("--tile-overlap", type=float, help="fractional tile overlap (default refine.tile_overlap)")
    r.add_argument("--tile", type=int, help="tile side (default refine.tile or the training crop)")
    r.add_argument("--device", default="auto")
    r.add_argument("--no-progress", action="store_true")

    c = sub.add_parser("config", parents=[debug], help="print the resolved config (defaults, _base_ files and "
                                                       "--cfg-options applied) as YAML",
                       description="Print the config a `train` with the same --config and --cfg-options would use: "
                                   "the defaults of translators/config.py, the file's _base_ chain and the overrides "
                                   "(the YAML files list only what differs from the defaults).")
    c.add_argument("--config", required=True, help="YAML config, e.g. translators/configs/semst_paper.yaml")
    _add_overrides(c)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("translators")
    from translators.train import TrainingDiverged  # after logging setup (imports torch)
    if getattr(args, "deprecated_set", False):
        log.warning("--set is deprecated, use --cfg-options KEY=VALUE [KEY=VALUE ...] (the same keys and values, "
                    "as for python -m segmenters train)")
    try:
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(load_config(args.config, args.cfg_options).to_dict(), sort_keys=False), end="")
            return 0
        if args.command == "train":
            from translators.train import train
            if args.unpaired_root is not None:
                if args.source is not None or args.target is not None:
                    raise DataError("give either --unpaired-root X or --source/--target, not both")
                from translators.data import unpaired_dirs
                args.source, args.target = unpaired_dirs(args.unpaired_root, args.unpaired_phase)
            elif args.source is None or args.target is None:
                raise DataError("train needs --source and --target (prepared datasets or image folders), "
                                "or --unpaired-root X (X/trainA, X/trainB)")
            overrides = list(args.cfg_options or [])
            if args.iters is not None:
                overrides.append(f"train.iters={args.iters}")
            if args.device:
                overrides.append(f"train.device={args.device}")
            cfg = load_config(args.config, overrides)
            from translators.distributed import init_distributed, shutdown_distributed
            ctx = init_distributed(args.launcher, cfg.train.device)
            if not ctx.is_main:  # rank 0 logs; the others only warnings and errors
                logging.getLogger().setLevel(logging.WARNING)
            try:
                feedback = None
                if args.feedback_segmenter:
                    from translators.feedback import load_feedback
                    from translators.train import resolve_device
                    feedback = load_feedback(args.feedback_segmenter, args.feedback_weight,
                                             ctx.device if ctx.enabled else resolve_device(cfg.train.device))
                res = train(cfg, args.source, args.target, args.out, source_split=args.source_split,
                            target_split=args.target_split, seed=args.seed, init=args.init, resume=args.resume,
                            feedback=feedback, stop_after=args.stop_after, show_progress=not args.no_progress,
                            dist=ctx)
            finally:
                shutdown_distributed(ctx)
            log.info("step %d, finished=%s, out=%s", res.step, res.finished, res.out)
        else:
            from translators.refine import refine
            res = refine(args.checkpoint, args.source, args.out, split=args.split, batch_size=args.batch_size,
                         tile_overlap=args.tile_overlap, tile=args.tile, device=args.device,
                         show_progress=not args.no_progress)
            log.info("%d images: %d written, %d already done", res.total, res.written, res.skipped)
    except (ConfigError, DataError, CheckpointError, FeedbackError) as err:
        if args.debug or debug_enabled():
            raise
        log.error("%s", short_message(err))
        return 2
    except TrainingDiverged as err:
        if args.debug or debug_enabled():
            raise
        log.error("%s", err)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
