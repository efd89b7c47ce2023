"""CLI: ``python -m domains.minicity --out data/raw/minicity [options]`` (see ``--help``)."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from domains.minicity.builder import MinicityError, Options, generate


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT (e.g. 2048x1024), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m domains.minicity",
        description="Write the minicity benchmark: procedural street scenes in GTA5, SYNTHIA and Cityscapes layouts.")
    p.add_argument("--out", required=True, help="output root (e.g. data/raw/minicity); replaced atomically")
    p.add_argument("--width", type=int, default=256, help="image width of every domain (default 256)")
    p.add_argument("--height", type=int, default=128, help="image height of every domain (default 128)")
    p.add_argument("--source-size", type=_size, help="WxH of GTA5 and SYNTHIA (overrides --width/--height)")
    p.add_argument("--target-size", type=_size, help="WxH of Cityscapes (overrides --width/--height)")
    p.add_argument("--gta5-size", type=_size, help="WxH of GTA5 only (overrides --source-size)")
    p.add_argument("--synthia-size", type=_size, help="WxH of SYNTHIA only (overrides --source-size)")
    p.add_argument("--n-source", type=int, default=300, help="source scenes (each written as GTA5 and SYNTHIA)")
    p.add_argument("--n-train", type=int, default=200, help="Cityscapes train images")
    p.add_argument("--n-val", type=int, default=60, help="Cityscapes val images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--appearance-gap", type=float, default=1.0,
                   help="size of the appearance gap, 0..1: 1 (default) renders the target in the Cityscapes style, "
                        "smaller values move its colours and image formation towards GTA5's")
    p.add_argument("--target-layout", choices=("target", "source"), default="target",
                   help="scene priors of the Cityscapes splits: target (default: street canyons, tall buildings, "
                        "little sky) or source (the GTA5/SYNTHIA priors: only the appearance differs)")
    p.add_argument("--max-render-width", type=int, default=1024,
                   help="render wider outputs at this width and upscale (labels nearest, images bilinear)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (default min(4, CPUs))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    both = (args.width, args.height)
    source = args.source_size or both
    return Options(
        out=args.out, gta5_size=args.gta5_size or source, synthia_size=args.synthia_size or source,
        cityscapes_size=args.target_size or both, n_source=args.n_source, n_train=args.n_train, n_val=args.n_val,
        seed=args.seed, max_render_width=args.max_render_width, appearance_gap=args.appearance_gap,
        target_layout=args.target_layout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        opts = options_from_args(args)
        generate(opts, workers=args.workers, progress=not args.no_progress)
    except (MinicityError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
