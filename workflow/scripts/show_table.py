"""Print a final table results/<pair>_<uda>_<translator>.csv readably (rounds, means, decisions, per-class IoU).

Usage: python workflow/scripts/show_table.py results/minicity_bdl_semst.csv [...]
A missing or malformed table: one line naming the file, exit code 2.
"""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd

MEANS = ["mIoU", "mIoU16", "mIoU13", "aAcc", "mAcc"]
ID = {"pair", "uda", "translator", "round", "stage", "delta_vs_best_before", "next_round", "decision", "best"}
#: columns a final table must have (workflow/lib/wflib/table.py writes them)
REQUIRED = ["pair", "uda", "translator", "round", "mIoU", "delta_vs_best_before", "best", "decision", "stage"]


class TableError(ValueError):
    """A file that is not a readable final table; the message names it."""


def read_table(path: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise TableError(f"{path}: no such file; final tables are results/<pair>_<uda>_<translator>.csv "
                         "(build one with snakemake, e.g. results/minicity_bdl_semst.csv)") from None
    except (OSError, ValueError, pd.errors.ParserError) as err:   # EmptyDataError is a ValueError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TableError(f"{path}: not a readable CSV ({reason})") from err
    missing = [c for c in REQUIRED if c not in table]
    if missing or table.empty:
        what = f"lacks columns {missing}" if missing else "has no rows"
        raise TableError(f"{path}: not a final table results/<pair>_<uda>_<translator>.csv ({what})")
    return table


def pseudo_quality(stage: str) -> str | None:
    """One line on the pseudo-labels a round trained on, from ``quality_vs_ground_truth`` of the
    ``pseudo <folder>`` entry's ``meta.json`` (segmenters/pseudolabel.py); None when the stage has no
    pseudo-labels or the folder was not scored (an unlabelled split, or written before the score)."""
    folders = [part.split(" ", 1)[1] for part in str(stage).split("; ") if part.startswith("pseudo ")]
    if not folders:
        return None
    try:
        quality = json.loads((Path(folders[0]) / "meta.json").read_text()).get("quality_vs_ground_truth")
        line = (f"{100 * quality['coverage']:.1f} % of labelled target pixels kept, {100 * quality['precision']:.1f} % "
                f"of them right, mIoU of the kept pixels {100 * quality['mIoU']:.1f}")
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return f"pseudo-labels {folders[0]} against the ground truth: {line}"


def show(path: str, table: pd.DataFrame | None = None) -> None:
    table = read_table(path) if table is None else table
    means = [c for c in MEANS if c in table]
    classes = [c for c in table.columns if c not in ID and c not in MEANS]
    print(f"== {path}: {table['pair'].iloc[0]} / uda {table['uda'].iloc[0]} / translator {table['translator'].iloc[0]}")
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.2f}".format):
        print(table[["round", *means, "delta_vs_best_before", "best", "decision"]].to_string(index=False))
        print("\nper-class IoU (%):")
        print(table[["round", *classes]].set_index("round").T.to_string())
        print("\nstages:")
        for _, row in table.iterrows():
            print(f"  r{row['round']}: {row['stage']}")
            quality = pseudo_quality(row["stage"])
            if quality:
                print(f"      {quality}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="show_table.py", description=__doc__.splitlines()[0],
                                     epilog="e.g. python workflow/scripts/show_table.py results/minicity_bdl_semst.csv")
    parser.add_argument("tables", nargs="+", metavar="CSV", help="final table(s) results/<pair>_<uda>_<translator>.csv")
    args = parser.parse_args(argv)
    try:
        tables = [read_table(path) for path in args.tables]   # every file checked before printing any
    except TableError as err:
        print(f"show_table.py: error: {err}", file=sys.stderr)
        return 2
    for path, table in zip(args.tables, tables):
        show(path, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
