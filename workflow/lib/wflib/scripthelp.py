"""Command-line face of the workflow scripts that Snakemake runs with a ``snakemake`` object.

Run by hand (no ``snakemake`` object), such a script answers ``--help`` (exit 0) with its docstring
and the target that runs it, and refuses anything else with one line (exit 2) instead of a
``NameError: name 'snakemake' is not defined`` traceback::

    if "snakemake" not in globals():  # run by hand: --help only
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
        from wflib.scripthelp import snakemake_only

        sys.exit(snakemake_only(__doc__, "final_table.py", "final_table", "results/minicity_bdl_semst.csv"))
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def snakemake_only(doc: str | None, prog: str, rules: str, example: str,
                   argv: Sequence[str] | None = None) -> int:
    """``--help``: print ``doc`` and how the script is run, return 0; anything else: one line, return 2."""
    how = (f"Snakemake runs this script (rule{'s' if ',' in rules else ''} {rules}) with a `snakemake` object holding its inputs and "
           f"outputs; build its output with Snakemake instead, e.g. `snakemake --cores 2 {example}`.")
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").strip(), epilog=how,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(sys.argv[1:] if argv is None else argv)   # -h/--help exits 0; other options exit 2
    print(f"{prog}: error: not a command-line tool. {how}", file=sys.stderr)
    return 2
