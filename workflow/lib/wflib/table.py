"""Assemble the final per-round table ``results/<pair>_<uda>_<translator>.csv`` with pandas."""
from __future__ import annotations

import os
from typing import Sequence

import pandas as pd

from wflib.rounds import best_round, decide

#: metric columns after the per-class IoUs, in this order (missing ones are skipped)
MEAN_COLUMNS = ("mIoU", "mIoU16", "mIoU13", "aAcc", "mAcc")


def final_table(round_csvs: Sequence[str], stages: Sequence[str], rounds: dict, pair: str, uda: str,
                translator: str) -> pd.DataFrame:
    """One row per round: identification, per-class IoU, means, decision columns and ``best``.

    ``rounds`` holds ``max``, ``min_delta``, ``metric``, ``multi_round`` and ``class_set`` (16/13
    keep the SYNTHIA means; 19 drops them).
    """
    if not round_csvs:
        raise ValueError("no round results to tabulate")
    frames = []
    for k, path in enumerate(round_csvs):
        frame = pd.read_csv(path)
        if len(frame) != 1:
            raise ValueError(f"{path}: expected one result row, found {len(frame)}")
        frame["round"] = k
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    metric = rounds["metric"]
    if metric not in rows:
        raise ValueError(f"round CSVs have no '{metric}' column (rounds.metric); columns: {list(rows)}")
    scores = rows[metric].astype(float).tolist()
    decisions = [decide(k, scores, rounds["max"], rounds["min_delta"], rounds["multi_round"]) for k in range(len(rows))]
    means = [c for c in MEAN_COLUMNS if c in rows and (rounds["class_set"] != 19 or c not in ("mIoU16", "mIoU13"))]
    class_columns = [c for c in rows.columns if c not in set(MEAN_COLUMNS) | {"round", "checkpoint"}]
    out = pd.DataFrame({"pair": pair, "uda": uda, "translator": translator, "round": rows["round"],
                        "stage": list(stages)[: len(rows)] if stages else ""})
    out = pd.concat([out, rows[class_columns + means]], axis=1)
    out["delta_vs_best_before"] = [d.delta for d in decisions]
    out["next_round"] = [d.next_round for d in decisions]
    out["decision"] = [d.reason for d in decisions]
    out["best"] = False
    out.loc[best_round(scores), "best"] = True
    return out


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    from domains.io import atomic_path  # here: Snakemake imports this module while parsing the workflow

    with atomic_path(path, suffix="") as tmp:  # no suffix: pandas infers no compression
        frame.to_csv(tmp, index=False, float_format="%.4f")
