"""Print a final table results/<pair>_<uda>_<translator>.csv readably (rounds, means, decisions, per-class IoU).

Usage: python workflow/scripts/show_table.py results/minicity_bdl_semst.csv [...]
"""
import sys

import pandas as pd

MEANS = ["mIoU", "mIoU16", "mIoU13", "aAcc", "mAcc"]
ID = {"pair", "uda", "translator", "round", "stage", "delta_vs_best_before", "next_round", "decision", "best"}


def show(path: str) -> None:
    table = pd.read_csv(path)
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


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for arg in sys.argv[1:]:
        show(arg)
