"""Entry point of :mod:`wflib.launch` for shell rules (see its docstring).

``-h`` / ``--help`` before ``--`` prints that docstring (exit 0); the options are parsed by
``wflib.launch.main``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from wflib import launch  # noqa: E402
from wflib.launch import main  # noqa: E402

USAGE = "usage: resumable.py --run-dir D [--state GLOB ...] [--key TEXT] [--key-input FILE ...] -- CMD ..."


def wants_help(argv: list) -> bool:
    """-h/--help among the options (before ``--``; after it they belong to CMD)."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    return any(a in ("-h", "--help") for a in options)


if __name__ == "__main__":
    if wants_help(sys.argv[1:]):
        print(f"{USAGE}\n\n{launch.__doc__.strip()}")
        sys.exit(0)
    sys.exit(main())
