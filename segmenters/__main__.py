"""``python -m segmenters {train,pseudolabel,evaluate} ...``: dispatch to each subcommand's ``main(argv)``.

Subcommand modules are imported lazily, so ``--help`` of one does not import the others.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

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
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"error: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
