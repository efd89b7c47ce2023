"""Command line of the ``domains`` package: ``python -m domains <subcommand> ...``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; add one by adding a line to :data:`SUBCOMMANDS`. Bad input
(:class:`~domains.io.DatasetFormatError`, :class:`~domains.prepared.PreparedDataError`) is
printed as one line without a traceback and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence

from domains.io import DatasetFormatError
from domains.prepared import PreparedDataError

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("domains.prepare", "convert a raw GTA5/SYNTHIA/Cityscapes root into data/prepared/<name>"),
}


def _terminate(signum, frame):  # SIGTERM (Snakemake, SLURM) -> normal unwinding, so temp outputs are removed
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m domains", description="Dataset tools: preparation of GTA5, SYNTHIA and Cityscapes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = modules[name] = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(modules[args.command].run(args) or 0)
    except (DatasetFormatError, PreparedDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
