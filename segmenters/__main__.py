"""``python -m segmenters {train,pseudolabel,evaluate} ...``: dispatch to each subcommand's ``main(argv)``.

Subcommand modules are imported lazily, so ``--help`` of one does not import the others.

Bad input (a checkpoint that is not a final.pth, a missing dataset, unreadable weights) ends with
one message naming the file and exit code 2 (docs/errors.md); ``--debug`` anywhere on the command
line (or ``SEMST_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Iterator, Sequence

from domains.errors import DEBUG_ENV, EXIT_BAD_INPUT, pop_debug, short_message

#: subcommand -> (module with main(argv) -> int, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("segmenters.train", "train a segmenter with a UDA method (source_only, oracle, bdl, sepico, ldr, proda_warmup|stage1|distill)"),
    "pseudolabel": ("segmenters.pseudolabel", "write target pseudo-labels from a final.pth"),
    "evaluate": ("segmenters.evaluate", "per-class IoU of a final.pth on a labelled target split"),
    "prototypes": ("segmenters.prototypes", "ProDA: soft pseudo-labels + initial class prototypes from a final.pth"),
}


def _usage() -> str:
    lines = ["usage: python -m segmenters SUBCOMMAND [options]   (SUBCOMMAND --help for its options)", "",
             "subcommands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "options of every subcommand:",
              f"  --debug      show the traceback of an error instead of one message (also {DEBUG_ENV}=1)"]
    return "\n".join(lines)


#: subcommands that only read a final.pth and a dataset: a ValueError / FileNotFoundError there is
#: bad input (the file or folder named in its message), not a bug
INFERENCE = ("pseudolabel", "evaluate", "prototypes")


def bad_input_errors(name: str) -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input for subcommand ``name`` (one message, exit 2)."""
    from domains.prepared import PreparedDataError
    from domains.weights import WeightsError

    from .io import ImageReadError

    errors: list[type[BaseException]] = [PreparedDataError, WeightsError, ImageReadError]
    if name in INFERENCE:
        errors += [ValueError, FileNotFoundError]
    return tuple(errors)


@contextlib.contextmanager
def _debug_env(enabled: bool) -> Iterator[None]:
    """``SEMST_DEBUG=1`` while a subcommand runs with --debug (their own handlers re-raise then)."""
    before = os.environ.get(DEBUG_ENV)
    if enabled:
        os.environ[DEBUG_ENV] = "1"
    try:
        yield
    finally:
        if enabled and before is None:
            os.environ.pop(DEBUG_ENV, None)
        elif enabled:
            os.environ[DEBUG_ENV] = before


def main(argv: Sequence[str] | None = None) -> int:
    debug, argv = pop_debug(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        with _debug_env(debug):
            return int(module.main(rest) or 0)
    except SystemExit as err:   # argparse (int code: it printed the usage) or a one-line refusal (str)
        if debug or err.code is None or isinstance(err.code, int):
            raise
        print(f"error: {short_message(str(err.code))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - bad input: one message naming the file, exit code 2
        if debug or not isinstance(err, bad_input_errors(name)):
            raise
        print(f"error: {short_message(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
