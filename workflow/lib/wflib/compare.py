"""Method comparison of one pair over one or more seeds (pure logic; files in :func:`write_comparison`).

Inputs per seed: a working directory holding the final tables
``results/<pair>_<uda>_<translator>.csv`` (:func:`wflib.table.final_table`: which round is
``best``, the ``decision`` after each round) and the confusion matrix of every round,
``results/<pair>/<uda>_<translator>/r<k>.confusion.npy`` (int64, rows = ground truth, columns =
prediction, target val split).

**One class set.** The per-round CSVs use the "nan" IoU convention: a class absent from both GT
and predictions is NaN and left out of that row's mean, so two rows can average different class
sets. Here every IoU is recomputed from the confusions over ONE class set for the whole comparison:
the classes with ground-truth pixels in the val split (row sums > 0), optionally within a subset
(the SYNTHIA 16/13-class sets). All runs must share the val split: their GT pixel counts per class
(row sums) must be identical, else :class:`CompareError`. A class of the set that a method never
predicts has IoU 0 there.

**Units and statistics.** IoU/mIoU in percent (as the per-round CSVs); gap closed as a fraction
(:func:`gap_closed`). Over seeds: mean and the sample standard deviation (``ddof=1``); the std is
NaN when fewer than two seeds have a value, and every per-round cell carries its ``n`` (rounds
that ran in only some seeds). "Best round" is the round the final table flags ``best`` (chosen on
the table's own metric), per seed.
"""
from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from wflib.table import write_csv_atomic

SOURCE_ONLY = "source_only_none"
ORACLE = "oracle_none"
#: translator name of the raw-source baseline (``<uda>_none`` beside ``<uda>_<translator>``)
BASELINE_TRANSLATOR = "none"

#: output files of a comparison: key -> file name after ``<pair>_``
OUTPUT_NAMES: dict[str, str] = {
    "summary": "comparison.csv",
    "per_class": "comparison_per_class.csv",
    "rounds": "comparison_rounds.csv",
    "markdown": "comparison.md",
    "plot": "comparison.png",
    "html": "comparison.html",
}
#: output names that look like a final table ``results/<pair>_<uda>_<translator>.csv`` (the workflow
#: keeps them out of the ``{combo}`` wildcard)
COMBO_LIKE_NAMES: tuple[str, ...] = tuple(n[: -len(".csv")] for n in OUTPUT_NAMES.values()
                                          if n.endswith(".csv") and "_" in n[: -len(".csv")])
#: non-final tables a pair's results folder also holds (tables.smk, this module)
_OTHER_TABLES = ("translation_table", "translation_published", "uda_table", "uda_published") + tuple(
    n[: -len(".csv")] for n in OUTPUT_NAMES.values() if n.endswith(".csv"))
_FINAL_COLUMNS = {"pair", "uda", "translator", "round", "best", "decision"}


class CompareError(ValueError):
    """Bad or missing comparison input; the one-line message names the file."""


@dataclass
class Run:
    """One seed's run of one (uda, translator) row: its final table and the confusion of every round."""

    seed: str
    uda: str
    translator: str
    final_path: Path
    table: pd.DataFrame
    confusion_paths: list[Path] = field(default_factory=list)
    confusions: list[np.ndarray] = field(default_factory=list)

    @property
    def row(self) -> str:
        return f"{self.uda}_{self.translator}"


def default_class_names() -> tuple[str, ...]:
    """The 19 Cityscapes trainId class names (``domains.labels.CLASSES``)."""
    from domains.labels import CLASSES

    return tuple(CLASSES)


def class_subset(class_set: int) -> tuple[int, ...] | None:
    """trainIds of an evaluation class set: 19 -> None (all), 16/13 -> the SYNTHIA subsets."""
    if int(class_set) == 19:
        return None
    from domains.labels import SYNTHIA_13, SYNTHIA_16

    subsets = {16: SYNTHIA_16, 13: SYNTHIA_13}
    if int(class_set) not in subsets:
        raise CompareError(f"class set {class_set!r} is not one of 19, 16, 13")
    return tuple(subsets[int(class_set)])


def output_paths(pair: str, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``OUTDIR/<pair>_comparison.*`` for every key of :data:`OUTPUT_NAMES`."""
    return {key: Path(out_dir) / f"{pair}_{name}" for key, name in OUTPUT_NAMES.items()}


def row_name(uda: str, translator: str) -> str:
    return f"{uda}_{translator}"


def order_rows(rows: Iterable[tuple[str, str]], source_only: str = SOURCE_ONLY,
               oracle: str = ORACLE) -> list[tuple[str, str]]:
    """Unique rows: source-only, oracle, then the others in their given order."""
    rows = list(dict.fromkeys((str(u), str(t)) for u, t in rows))
    first = [r for ref in (source_only, oracle) for r in rows if row_name(*r) == ref]
    return first + [r for r in rows if r not in first]


# ------------------------------------------------------------------------------ IoU from confusions

def gt_pixels(cm: np.ndarray) -> np.ndarray:
    """Ground-truth pixels per class: the row sums of a confusion matrix."""
    return np.asarray(cm, dtype=np.int64).sum(axis=1)


def common_classes(confusions: Mapping[str, np.ndarray], within: Iterable[int] | None = None,
                   names: Sequence[str] | None = None) -> np.ndarray:
    """Indices of the classes with ground-truth pixels (row sums > 0), optionally only those ``within``.

    ``confusions`` maps a label (the file) to its matrix. All matrices must come from one val split:
    the same class set and identical GT pixel counts per class, else :class:`CompareError` naming
    the two files.
    """
    if not confusions:
        raise CompareError("no confusion matrices to compare")
    items = list(confusions.items())
    ref_label, ref = items[0]
    ref = np.asarray(ref)
    n = ref.shape[0]
    if names is not None and len(names) != n:
        raise CompareError(f"{ref_label}: a {n}x{n} confusion matrix for {len(names)} class names")
    names = list(names) if names is not None else [str(i) for i in range(n)]
    ref_rows = gt_pixels(ref)
    for label, cm in items:
        cm = np.asarray(cm)
        if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != n:
            raise CompareError(f"{label}: confusion matrix of shape {cm.shape}, expected ({n}, {n}) like {ref_label}")
        rows = gt_pixels(cm)
        if np.array_equal(rows, ref_rows):
            continue
        only_here = [names[i] for i in range(n) if rows[i] > 0 and ref_rows[i] == 0]
        only_ref = [names[i] for i in range(n) if ref_rows[i] > 0 and rows[i] == 0]
        if only_here or only_ref:
            raise CompareError(f"{label}: ground-truth class set differs from {ref_label} (only here: "
                               f"{only_here or 'none'}; only there: {only_ref or 'none'}): the runs were not "
                               "evaluated on the same val split")
        i = int(np.flatnonzero(rows != ref_rows)[0])
        raise CompareError(f"{label}: ground-truth pixels of class '{names[i]}' are {int(rows[i])} but {int(ref_rows[i])} "
                           f"in {ref_label}: the runs were not evaluated on the same val split")
    present = ref_rows > 0
    if within is not None:
        mask = np.zeros(n, dtype=bool)
        mask[list(within)] = True
        present &= mask
    classes = np.flatnonzero(present)
    if classes.size == 0:
        raise CompareError(f"{ref_label}: no class has ground-truth pixels" + (" within the class set" if within else ""))
    return classes


def class_iou(cm: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """IoU (percent) of each class in ``classes``: 100 * TP / (TP + FP + FN) from the full matrix.

    A class of the set that is never predicted has IoU 0; a class with no GT pixels, no predictions
    (denominator 0) gives NaN -- which :func:`common_classes` never selects.
    """
    cm = np.asarray(cm, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.int64)
    tp = np.diag(cm)[classes]
    denom = cm.sum(axis=1)[classes] + cm.sum(axis=0)[classes] - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 100.0 * tp / np.where(denom > 0, denom, 1.0), np.nan)


def mean_iou(cm: np.ndarray, classes: Sequence[int]) -> float:
    """mIoU (percent) over ``classes`` (plain mean; every class of the set counts)."""
    return float(np.mean(class_iou(cm, classes)))


def class_set_note(classes: Sequence[int], names: Sequence[str], within: Iterable[int] | None = None) -> str:
    """One sentence stating the class set, e.g. '18 classes with ground-truth pixels in the val split (left out: train)'."""
    kept = set(int(c) for c in classes)
    left = [names[i] for i in range(len(names)) if i not in kept]
    scope = "" if within is None else f" within the {len(list(within))}-class evaluation set"
    return (f"{len(kept)} classes with ground-truth pixels in the target val split{scope}"
            f" (left out: {', '.join(left) if left else 'none'})")


# ------------------------------------------------------------------------------------ statistics

def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) over the finite values; std NaN when n < 2, mean NaN when n = 0."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else float("nan")), int(v.size)


def gap_closed(miou: float | np.ndarray, source_only: float | np.ndarray,
               oracle: float | np.ndarray) -> float | np.ndarray:
    """Fraction of the source-only -> oracle gap a method closes: (miou - so) / (oracle - so).

    0 = no better than source-only, 1 = as good as the target-supervised oracle (< 0 or > 1 are
    possible). NaN when the gap ``oracle - source_only`` is <= 0 or any input is NaN (no gap to close).
    """
    m, s, o = (np.asarray(x, dtype=np.float64) for x in (miou, source_only, oracle))
    gap = o - s
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(gap > 0, (m - s) / np.where(gap > 0, gap, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def stop_reason(decision: str) -> str:
    """Why a run's rounds stopped, from the ``decision`` text of its last round (wflib.rounds.decide):
    ``cap`` (reached rounds.max=...), ``rule`` (improvement < rounds.min_delta), ``single-round``,
    ``NaN score``, ``incomplete`` (another round was requested but the table ends), else ``unknown``."""
    text = str(decision)
    if "reached rounds.max=" in text:
        return "cap"
    if "< rounds.min_delta" in text:
        return "rule"
    if "single-round" in text:
        return "single-round"
    if "score is NaN" in text:
        return "NaN score"
    if ">= rounds.min_delta" in text or text == "first round":
        return "incomplete"   # the table ends although another round was requested
    return "unknown"


# ---------------------------------------------------------------------------------------- loading

def final_table_path(workdir: str | os.PathLike, pair: str, uda: str, translator: str) -> Path:
    return Path(workdir) / "results" / f"{pair}_{uda}_{translator}.csv"


def confusion_path(workdir: str | os.PathLike, pair: str, uda: str, translator: str, k: int) -> Path:
    return Path(workdir) / "results" / pair / f"{uda}_{translator}" / f"r{int(k)}.confusion.npy"


def _is_best(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


def load_run(workdir: str | os.PathLike, pair: str, uda: str, translator: str, seed: str | int) -> Run:
    """One run's final table and the confusion of each of its rounds (CompareError names a missing file)."""
    path = final_table_path(workdir, pair, uda, translator)
    if not path.is_file():
        raise CompareError(f"missing file {path} (final table of {row_name(uda, translator)}, seed {seed})")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CompareError(f"{path}: not a readable CSV ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
    missing = [c for c in ("round", "best", "decision") if c not in table]
    if missing or table.empty:
        raise CompareError(f"{path}: not a final table (missing columns {missing})" if missing else f"{path}: no rounds")
    table = table.sort_values("round").reset_index(drop=True)
    run = Run(str(seed), uda, translator, path, table)
    for k in table["round"].astype(int):
        cpath = confusion_path(workdir, pair, uda, translator, k)
        if not cpath.is_file():
            raise CompareError(f"missing file {cpath} (confusion of round {k} of {run.row}, seed {seed})")
        try:
            cm = np.load(cpath, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise CompareError(f"{cpath}: not a readable .npy confusion matrix ({err})")
        run.confusion_paths.append(cpath)
        run.confusions.append(np.asarray(cm, dtype=np.int64))
    return run


def load_runs(workdir: str | os.PathLike, pair: str, rows: Sequence[tuple[str, str]], seed: str | int) -> list[Run]:
    """:func:`load_run` for every row of one seed's working directory."""
    if not Path(workdir).is_dir():
        raise CompareError(f"missing run folder {workdir} (seed {seed})")
    return [load_run(workdir, pair, uda, translator, seed) for uda, translator in rows]


def discover_rows(workdir: str | os.PathLike, pair: str) -> list[tuple[str, str]]:
    """(uda, translator) of every final table ``results/<pair>_*.csv`` in a working directory, read from
    its ``uda``/``translator`` columns; grouped by UDA method with translator ``none`` first."""
    results = Path(workdir) / "results"
    if not results.is_dir():
        raise CompareError(f"missing folder {results} (no results of pair {pair})")
    rows = []
    for path in sorted(results.glob(f"{pair}_*.csv")):
        if path.stem[len(pair) + 1:] in _OTHER_TABLES:
            continue
        try:
            head = pd.read_csv(path, nrows=1)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if _FINAL_COLUMNS <= set(head) and len(head) and str(head["pair"].iloc[0]) == pair:
            rows.append((str(head["uda"].iloc[0]), str(head["translator"].iloc[0])))
    udas = list(dict.fromkeys(u for u, _ in rows))
    return [(u, t) for u in udas for t in sorted((t for uu, t in rows if uu == u), key=lambda t: (t != BASELINE_TRANSLATOR, t))]


def rounds_frame(runs: Sequence[Run], classes: Sequence[int], names: Sequence[str] | None = None) -> pd.DataFrame:
    """Long frame, one row per (seed, uda, translator, round): IoU per class of the set and mIoU over it
    (percent, recomputed from the confusions), the table's ``best`` flag and ``decision``, the run's
    ``n_rounds``, ``stop_decision`` (decision text of its last round) and ``stop`` (:func:`stop_reason`);
    ``mIoU_reported`` keeps the final table's own mIoU."""
    names = list(names) if names is not None else list(default_class_names())
    cls_names = [names[i] for i in classes]
    records = []
    for run in runs:
        best = _is_best(run.table["best"]).to_numpy()
        if not best.any() and "mIoU" in run.table:       # no flag: the best reported mIoU
            best = (run.table.index == run.table["mIoU"].astype(float).idxmax())
        last = str(run.table["decision"].iloc[-1])
        for i, (_, trow) in enumerate(run.table.iterrows()):
            ious = class_iou(run.confusions[i], classes)
            rec = {"seed": run.seed, "uda": run.uda, "translator": run.translator, "row": run.row,
                   "round": int(trow["round"]), "best": bool(best[i]),
                   "mIoU": float(np.mean(ious)), "n_classes": len(cls_names),
                   "mIoU_reported": float(trow["mIoU"]) if "mIoU" in trow and not pd.isna(trow["mIoU"]) else float("nan"),
                   "decision": str(trow["decision"]), "n_rounds": len(run.table), "stop_decision": last,
                   "stop": stop_reason(last)}
            rec.update(dict(zip(cls_names, (float(v) for v in ious))))
            records.append(rec)
    columns = ["seed", "uda", "translator", "row", "round", "best", "mIoU", "n_classes", "mIoU_reported", "decision",
               "n_rounds", "stop_decision", "stop", *cls_names]
    return pd.DataFrame(records, columns=columns)


def load_seed(workdir: str | os.PathLike, pair: str, rows: Sequence[tuple[str, str]], seed: str | int,
              classes: Sequence[int] | None = None, names: Sequence[str] | None = None,
              within: Iterable[int] | None = None) -> pd.DataFrame:
    """One seed's working directory as a long frame (:func:`rounds_frame`). Without ``classes`` the class
    set comes from this seed's confusions alone; give the common set when comparing seeds."""
    runs = load_runs(workdir, pair, rows, seed)
    if classes is None:
        classes = common_classes(confusions_of(runs), within, names)
    return rounds_frame(runs, classes, names)


def confusions_of(runs: Sequence[Run]) -> dict[str, np.ndarray]:
    """{file: matrix} of every round of ``runs`` (for :func:`common_classes`)."""
    return {str(p): cm for run in runs for p, cm in zip(run.confusion_paths, run.confusions)}


# ------------------------------------------------------------------------------------ aggregation

def best_rounds(frame: pd.DataFrame) -> pd.DataFrame:
    """The best round's row of each (seed, row) of a :func:`rounds_frame`."""
    return frame[frame["best"]].drop_duplicates(["seed", "row"]).reset_index(drop=True)


def _row_order(frame: pd.DataFrame, order: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(frame["row"]))
    order = [r for r in (order or []) if r in present] + [r for r in present if r not in (order or [])]
    refs = [r for r in (SOURCE_ONLY, ORACLE) if r in order]
    return refs + [r for r in order if r not in refs]


def _ids(frame: pd.DataFrame, row: str) -> tuple[str, str]:
    first = frame.loc[frame["row"] == row].iloc[0]
    return str(first["uda"]), str(first["translator"])


def _joined(values: Iterable) -> str:
    return "/".join(str(v) for v in values)


def summarize(frame: pd.DataFrame, order: Sequence[str] | None = None, source_only: str = SOURCE_ONLY,
              oracle: str = ORACLE) -> pd.DataFrame:
    """One row per (uda, translator) of a multi-seed :func:`rounds_frame` (rows: source-only, oracle, the rest).

    Columns: ``best_mIoU_mean/std/n`` (best round per seed), ``best_round`` (per seed, '/'-joined in
    seed order), ``gap_closed`` (of the means: :func:`gap_closed` of the best-round mean vs the
    source-only and oracle best-round means), ``gap_closed_seed_mean/std/n`` (per seed, against that
    seed's references), ``r<k>_mIoU_mean/std`` and ``r<k>_n`` for every round k, ``rounds`` and
    ``stop`` per seed, ``n_cap``/``n_rule``, ``seeds``, ``n_seeds``, ``n_classes``.
    """
    seeds = list(dict.fromkeys(frame["seed"]))
    best = best_rounds(frame)
    best_by = {(r.seed, r.row): r.mIoU for r in best.itertuples()}
    max_round = int(frame["round"].max()) if len(frame) else -1
    so_mean = mean_std(best.loc[best["row"] == source_only, "mIoU"])[0]
    or_mean = mean_std(best.loc[best["row"] == oracle, "mIoU"])[0]
    out = []
    for row in _row_order(frame, order):
        sub = frame[frame["row"] == row]
        bsub = best[best["row"] == row]
        run_seeds = [s for s in seeds if s in set(sub["seed"])]
        m, s, n = mean_std(bsub["mIoU"])
        rec = {"row": row, "uda": sub["uda"].iloc[0], "translator": sub["translator"].iloc[0],
               "n_seeds": len(run_seeds), "seeds": _joined(run_seeds), "n_classes": int(sub["n_classes"].iloc[0]),
               "best_mIoU_mean": m, "best_mIoU_std": s, "best_mIoU_n": n,
               "best_round": _joined(int(bsub.loc[bsub["seed"] == sd, "round"].iloc[0]) for sd in run_seeds
                                     if (bsub["seed"] == sd).any()),
               "gap_closed": gap_closed(m, so_mean, or_mean)}
        per_seed = [gap_closed(best_by.get((sd, row), np.nan), best_by.get((sd, source_only), np.nan),
                               best_by.get((sd, oracle), np.nan)) for sd in run_seeds]
        rec["gap_closed_seed_mean"], rec["gap_closed_seed_std"], rec["gap_closed_seed_n"] = mean_std(per_seed)
        for k in range(max_round + 1):
            rk = sub.loc[sub["round"] == k, "mIoU"]
            rec[f"r{k}_mIoU_mean"], rec[f"r{k}_mIoU_std"], rec[f"r{k}_n"] = mean_std(rk)
        firsts = sub.drop_duplicates("seed").set_index("seed")
        rec["rounds"] = _joined(int(firsts.loc[sd, "n_rounds"]) for sd in run_seeds)
        rec["stop"] = _joined(firsts.loc[sd, "stop"] for sd in run_seeds)
        rec["n_cap"] = int((firsts["stop"] == "cap").sum())
        rec["n_rule"] = int((firsts["stop"] == "rule").sum())
        out.append(rec)
    return pd.DataFrame(out)


def per_class_summary(frame: pd.DataFrame, class_names: Sequence[str], order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-class IoU of the best round, mean and std over seeds: columns ``<class>``, ``<class>_std``,
    then ``mIoU``, ``mIoU_std`` (over the same class set), one row per (uda, translator)."""
    best = best_rounds(frame)
    out = []
    for row in _row_order(frame, order):
        sub = best[best["row"] == row]
        uda, translator = _ids(frame, row)
        rec = {"row": row, "uda": uda, "translator": translator, "n_seeds": len(sub),
               "n_classes": len(class_names)}
        for c in [*class_names, "mIoU"]:
            rec[c], rec[f"{c}_std"], _ = mean_std(sub[c])
        out.append(rec)
    cols = ["row", "uda", "translator", "n_seeds", "n_classes"] + [x for c in [*class_names, "mIoU"] for x in (c, f"{c}_std")]
    return pd.DataFrame(out, columns=cols)


def per_class_gap(per_class: pd.DataFrame, class_names: Sequence[str], source_only: str = SOURCE_ONLY,
                  oracle: str = ORACLE) -> pd.DataFrame:
    """Where the gap is and which part of it each row closes, per class (best-round means).

    Rows: ``gap`` (oracle - source-only IoU, points), ``share`` (that gap over the summed gap of all
    classes: how much of the mIoU gap sits in the class), then one row per UDA row, its
    :func:`gap_closed` per class; column ``mIoU`` holds the same figures of the mean (so a row's
    ``mIoU`` equals the summary's gap closed of the means). A class without a gap (<= 0) is NaN.
    Empty when either reference row is missing."""
    by = per_class.set_index("row")
    if source_only not in by.index or oracle not in by.index:
        return pd.DataFrame(columns=["row", *class_names, "mIoU"])
    cols = [*class_names, "mIoU"]
    so, orc = by.loc[source_only, cols].astype(float), by.loc[oracle, cols].astype(float)
    gap = orc - so
    positive = gap[list(class_names)].clip(lower=0.0)
    share = positive / positive.sum() if positive.sum() > 0 else positive * np.nan
    out = [{"row": "gap", **gap.to_dict()}, {"row": "share", **share.to_dict(), "mIoU": 1.0 if positive.sum() > 0 else np.nan}]
    for row in by.index:
        if row not in (source_only, oracle):
            out.append({"row": row, **dict(zip(cols, gap_closed(by.loc[row, cols].astype(float).to_numpy(),
                                                                 so.to_numpy(), orc.to_numpy())))})
    return pd.DataFrame(out, columns=["row", *cols])


def baseline_deltas(frame: pd.DataFrame, order: Sequence[str] | None = None,
                    baseline: str = BASELINE_TRANSLATOR) -> pd.DataFrame:
    """Each translated row beside its raw-source baseline ``<uda>_<baseline>`` (best rounds): both means,
    and the paired per-seed difference ``delta`` (row - baseline) as mean/std/n. Rows without a baseline
    in the comparison keep NaN baseline columns."""
    best = best_rounds(frame)
    by = {(r.seed, r.row): r.mIoU for r in best.itertuples()}
    out = []
    for row in _row_order(frame, order):
        if row in (SOURCE_ONLY, ORACLE):
            continue
        sub = best[best["row"] == row]
        uda, translator = _ids(frame, row)
        if translator == baseline:
            continue
        base = row_name(uda, baseline)
        rec = {"row": row, "uda": uda, "translator": translator, "baseline": base}
        rec["mIoU_mean"], rec["mIoU_std"], rec["mIoU_n"] = mean_std(sub["mIoU"])
        rec["baseline_mean"], rec["baseline_std"], rec["baseline_n"] = mean_std(best.loc[best["row"] == base, "mIoU"])
        deltas = [by[(sd, row)] - by[(sd, base)] for sd in sub["seed"] if (sd, base) in by]
        rec["delta_mean"], rec["delta_std"], rec["delta_n"] = mean_std(deltas)
        out.append(rec)
    return pd.DataFrame(out, columns=["row", "uda", "translator", "baseline", "mIoU_mean", "mIoU_std", "mIoU_n",
                                      "baseline_mean", "baseline_std", "baseline_n", "delta_mean", "delta_std", "delta_n"])


def pooled_best_confusion(runs: Sequence[Run], frame: pd.DataFrame, row: str) -> np.ndarray:
    """Sum over seeds of each seed's best-round confusion of ``row`` (row-normalised, it is the mean of
    the seeds' row-normalised matrices: all seeds share the val split's GT counts)."""
    best = best_rounds(frame)
    total = None
    for run in runs:
        if run.row != row:
            continue
        k = best.loc[(best["seed"] == run.seed) & (best["row"] == row), "round"]
        if k.empty:
            continue
        i = int(np.flatnonzero(run.table["round"].astype(int).to_numpy() == int(k.iloc[0]))[0])
        total = run.confusions[i].astype(np.int64) if total is None else total + run.confusions[i]
    if total is None:
        raise CompareError(f"no best round of {row} to show")
    return total


def heatmap_rows(summary: pd.DataFrame, top: int = 3, source_only: str = SOURCE_ONLY, oracle: str = ORACLE) -> list[str]:
    """Rows whose confusion the page shows: the ``top`` UDA rows by best-round mean mIoU, source-only, oracle."""
    uda = summary[~summary["row"].isin([source_only, oracle])].sort_values("best_mIoU_mean", ascending=False, kind="stable")
    return list(uda["row"].head(top)) + [r for r in (source_only, oracle) if r in set(summary["row"])]


# -------------------------------------------------------------------------------------- rendering

def fmt_ms(mean: float, std: float = float("nan"), digits: int = 1, unit: str = "") -> str:
    """'m ± s' (just 'm' when the std is NaN; '—' when the mean is NaN)."""
    if mean is None or not math.isfinite(float(mean)):
        return "—"
    text = f"{mean:.{digits}f}"
    if std is not None and math.isfinite(float(std)):
        text += f" ± {std:.{digits}f}"
    return text + unit


def _gap_text(rec: Mapping, n_seeds: int) -> str:
    text = fmt_ms(100.0 * rec["gap_closed"], digits=0, unit=" %")
    if rec["row"] in (SOURCE_ONLY, ORACLE):
        return text + " (reference)"
    if n_seeds > 1 and rec["gap_closed_seed_n"] > 0:
        text += f" (per seed {fmt_ms(100.0 * rec['gap_closed_seed_mean'], 100.0 * rec['gap_closed_seed_std'], 0)} %)"
    return text


def _rounds_text(rec: Mapping, n_seeds: int) -> str:
    parts = []
    k = 0
    while f"r{k}_n" in rec:
        n = int(rec[f"r{k}_n"])
        if n:
            cell = fmt_ms(rec[f"r{k}_mIoU_mean"], rec[f"r{k}_mIoU_std"])
            parts.append(cell + (f" (n={n})" if n < n_seeds else ""))
        k += 1
    return " / ".join(parts)


def _stop_text(rec: Mapping) -> str:
    cells = [f"{r} ({s})" for r, s in zip(str(rec["rounds"]).split("/"), str(rec["stop"]).split("/"))]
    if len(cells) > 1 and len(set(cells)) == 1:
        return f"{cells[0]} ×{len(cells)}"
    return " / ".join(cells)


def summary_cells(summary: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the summary table (markdown and HTML share them)."""
    header = ["row", "best mIoU", "gap closed", "mIoU per round (r0 / r1 / …)", "rounds (stop), per seed"]
    rows = []
    for rec in summary.to_dict("records"):
        n = int(rec["n_seeds"])
        rows.append([rec["row"], fmt_ms(rec["best_mIoU_mean"], rec["best_mIoU_std"]), _gap_text(rec, n),
                     _rounds_text(rec, n), _stop_text(rec)])
    return header, rows


def per_class_cells(per_class: pd.DataFrame, class_names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["row", *class_names, "mIoU"]
    rows = [[rec["row"], *(fmt_ms(rec[c], rec[f"{c}_std"]) for c in [*class_names, "mIoU"])]
            for rec in per_class.to_dict("records")]
    return header, rows


def gap_cells(gaps: pd.DataFrame, class_names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of :func:`per_class_gap`: the gap in IoU points, the shares and gap closed in %."""
    header = ["row", *class_names, "mIoU"]
    names = {"gap": "gap: oracle − source-only (IoU points)", "share": "share of the summed gap"}

    def cell(value: float, points: bool) -> str:
        if not math.isfinite(value):
            return "—"
        return f"{value:.1f}" if points else f"{100.0 * value:.0f} %"

    rows = [[names.get(rec["row"], f"{rec['row']}: gap closed"),
             *(cell(float(rec[c]), rec["row"] == "gap") for c in [*class_names, "mIoU"])]
            for rec in gaps.to_dict("records")]
    return header, rows


def baseline_cells(deltas: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["row", "best mIoU", "raw-source baseline", "baseline best mIoU", "difference (paired per seed)"]
    rows = []
    for rec in deltas.to_dict("records"):
        diff = "—" if not math.isfinite(rec["delta_mean"]) else (
            f"{rec['delta_mean']:+.1f}" + (f" ± {rec['delta_std']:.1f}" if math.isfinite(rec["delta_std"]) else ""))
        base = rec["baseline"] if rec["baseline_n"] else f"{rec['baseline']} (not in the comparison)"
        rows.append([rec["row"], fmt_ms(rec["mIoU_mean"], rec["mIoU_std"]), base,
                     fmt_ms(rec["baseline_mean"], rec["baseline_std"]), diff])
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """``align``: one letter per column, l or r (default: first column left, the others right)."""
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")
    align = align or "l" + "r" * (len(header) - 1)
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def caption(pair: str, seeds: Sequence[str], class_note: str) -> str:
    """What every table states: pair, seeds, class set, std convention, gap-closed definition."""
    n = len(seeds)
    stat = (f"mean ± std over {n} seeds ({', '.join(map(str, seeds))}; sample std, ddof=1)" if n > 1
            else f"one seed ({seeds[0]}; no std)")
    return (f"Pair {pair}, target val split, IoU in percent recomputed from the confusion matrices over "
            f"{class_note}; {stat}. Best mIoU: the round each final table marks best. Gap closed: "
            "(mIoU − source-only) / (oracle − source-only) of the best-round means (per seed: the same "
            "per seed, then mean ± std). (n=k): a round that ran in k of the seeds. Stop: rule = "
            "improvement < rounds.min_delta, cap = reached rounds.max.")


def markdown_summary(summary: pd.DataFrame, pair: str, seeds: Sequence[str], class_note: str) -> str:
    """README-ready markdown: a caption line and the summary table."""
    return f"**{pair}: method comparison.** {caption(pair, seeds, class_note)}\n\n" + _md_table(*summary_cells(summary), align="lrrll") + "\n"


def markdown_per_class(per_class: pd.DataFrame, class_names: Sequence[str], pair: str) -> str:
    """README-ready markdown: per-class IoU of the best round (mean ± std over seeds)."""
    return (f"**{pair}: per-class IoU (%) of the best round** ({len(class_names)} classes).\n\n"
            + _md_table(*per_class_cells(per_class, class_names)) + "\n")


def markdown_gap(gaps: pd.DataFrame, class_names: Sequence[str], pair: str) -> str:
    """README-ready markdown of :func:`per_class_gap` (empty without both references)."""
    if gaps.empty:
        return ""
    return (f"**{pair}: where the source-only → oracle gap is, and the share of it each row closes, per "
            "class** (best-round means; — where a class has no gap).\n\n" + _md_table(*gap_cells(gaps, class_names))
            + "\n")


def markdown_baselines(deltas: pd.DataFrame, pair: str) -> str:
    if deltas.empty:
        return ""
    return (f"**{pair}: each translator vs the raw source (translator none) of the same UDA method.**\n\n"
            + _md_table(*baseline_cells(deltas), align="lrlrr") + "\n")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], bold: Sequence[set[int]] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, cell in enumerate(row):
            text = html.escape(str(cell))
            if bold is not None and c in bold[r]:
                text = f"<b>{text}</b>"
            cells.append(f"<td>{text}</td>" if c else f"<th scope='row'>{text}</th>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _best_cells(per_class: pd.DataFrame, class_names: Sequence[str]) -> list[set[int]]:
    """Column indices to bold per row: the highest mean of each class among the UDA rows."""
    marks: list[set[int]] = [set() for _ in range(len(per_class))]
    uda = ~per_class["row"].isin([SOURCE_ONLY, ORACLE])
    for j, c in enumerate([*class_names, "mIoU"], start=1):
        values = per_class.loc[uda, c]
        if values.notna().any():
            for i in np.flatnonzero(uda.to_numpy() & (per_class[c] == values.max()).to_numpy()):
                marks[i].add(j)
    return marks


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1500px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right;white-space:nowrap}thead th{background:#f0f0f0;text-align:center}tbody th{text-align:left;
background:#fafafa}.scroll{overflow-x:auto}.maps{display:flex;flex-wrap:wrap;gap:12px}.maps figure{margin:0}
figcaption{font-size:13px;text-align:center}p.note{font-size:13px;color:#444;max-width:1100px}img{max-width:100%}"""


def html_page(pair: str, seeds: Sequence[str], class_note: str, summary: pd.DataFrame, per_class: pd.DataFrame,
              class_names: Sequence[str], deltas: pd.DataFrame, plot_png: bytes,
              heatmaps: Sequence[tuple[str, bytes]], frame: pd.DataFrame, gaps: pd.DataFrame | None = None) -> str:
    """One self-contained page: figure, summary, translator-vs-raw-source table, per-class IoU table,
    where the gap is closed per class (``gaps``, when given), best-round confusion heat maps (PNG
    embedded as base64) and every seed's rounds."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(pair)}: method comparison</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{esc(pair)}: method comparison</h1><p class='note'>{esc(caption(pair, seeds, class_note))}</p>",
             f"<img alt='mIoU per round and gap closed' src='{png_data_uri(plot_png)}'>",
             "<h2>Summary</h2><div class='scroll'>" + _html_table(*summary_cells(summary)) + "</div>"]
    if not deltas.empty:
        parts.append("<h2>Translators vs the raw source (same UDA method)</h2><p class='note'>Best-round mIoU of "
                     "each translated row beside <code>&lt;uda&gt;_none</code>; the difference is paired per seed.</p>"
                     "<div class='scroll'>" + _html_table(*baseline_cells(deltas)) + "</div>")
    header, rows = per_class_cells(per_class, class_names)
    parts.append(f"<h2>Per-class IoU (%) of the best round</h2><p class='note'>{len(class_names)} classes; "
                 "bold: highest mean among the UDA rows (source-only and oracle excluded).</p><div class='scroll'>"
                 + _html_table(header, rows, _best_cells(per_class, class_names)) + "</div>")
    if gaps is not None and not gaps.empty:
        parts.append("<h2>Where the gap is closed, per class</h2><p class='note'>The source-only → oracle gap "
                     "of each class (best-round means), its share of the summed gap, and the share of it each row "
                     "closes; the mIoU column is the summary's gap closed.</p><div class='scroll'>"
                     + _html_table(*gap_cells(gaps, class_names)) + "</div>")
    if heatmaps:
        parts.append("<h2>Confusion matrices of the best round</h2><p class='note'>Row-normalised (percent of "
                     "each ground-truth class), summed over seeds; the 3 best UDA rows, source-only and oracle. "
                     "Rows: classes of the set; columns: every predicted class.</p><div class='maps'>")
        for name, png in heatmaps:
            parts.append(f"<figure><img alt='confusion {esc(name)}' src='{png_data_uri(png)}'>"
                         f"<figcaption>{esc(name)}</figcaption></figure>")
        parts.append("</div>")
    cols = ["seed", "row", "round", "mIoU", "mIoU_reported", "best", "decision"]
    rows = [[str(r["seed"]), r["row"], str(r["round"]), f"{r['mIoU']:.2f}",
             "—" if pd.isna(r["mIoU_reported"]) else f"{r['mIoU_reported']:.2f}", "best" if r["best"] else "",
             r["decision"]] for r in frame[cols].to_dict("records")]
    parts.append("<details><summary>Every round of every seed (mIoU over the common class set; "
                 "mIoU_reported: the final table's own mean)</summary><div class='scroll'>"
                 + _html_table(cols, rows) + "</div></details></body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------- writing

@dataclass
class Comparison:
    """Everything :func:`compare` computes (frames and the class set)."""

    pair: str
    seeds: list[str]
    classes: np.ndarray
    class_names: list[str]
    names: list[str]
    class_note: str
    frame: pd.DataFrame
    summary: pd.DataFrame
    per_class: pd.DataFrame
    deltas: pd.DataFrame
    runs: list[Run]
    gaps: pd.DataFrame = field(default_factory=pd.DataFrame)


def compare(pair: str, workdirs: Sequence[str | os.PathLike], seeds: Sequence[str | int] | None = None,
            rows: Sequence[tuple[str, str]] | None = None, class_set: int = 19,
            names: Sequence[str] | None = None) -> Comparison:
    """Load every seed (one working directory each), fix one class set, aggregate.

    ``rows`` (uda, translator): default the final tables found in any of the directories (their
    union; every directory must then hold all of them), and source-only and oracle must be among them.
    ``class_set`` 16/13 keeps only the SYNTHIA subset's classes (:func:`class_subset`).
    """
    workdirs = [Path(d) for d in workdirs]
    if not workdirs:
        raise CompareError("no run folders given")
    seeds = [str(s) for s in (seeds if seeds is not None else range(len(workdirs)))]
    if len(seeds) != len(workdirs):
        raise CompareError(f"{len(seeds)} seed labels for {len(workdirs)} run folders")
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"seed labels repeat: {seeds}")
    for d, s in zip(workdirs, seeds):
        if not d.is_dir():
            raise CompareError(f"missing run folder {d} (seed {s})")
    names = list(names) if names is not None else list(default_class_names())
    if rows is None:
        rows = [r for d in workdirs for r in discover_rows(d, pair)]
        if not rows:
            raise CompareError(f"no final tables {workdirs[0] / 'results'}/{pair}_<uda>_<translator>.csv")
        for ref in (SOURCE_ONLY, ORACLE):
            if ref not in {row_name(*r) for r in rows}:
                raise CompareError(f"missing file {workdirs[0] / 'results' / f'{pair}_{ref}.csv'} "
                                   f"(the {'source-only' if ref == SOURCE_ONLY else 'oracle'} reference row)")
    rows = order_rows(rows)
    runs = [run for d, s in zip(workdirs, seeds) for run in load_runs(d, pair, rows, s)]
    within = class_subset(class_set)
    classes = common_classes(confusions_of(runs), within, names)
    frame = rounds_frame(runs, classes, names)
    order = [row_name(*r) for r in rows]
    class_names = [names[i] for i in classes]
    per_class = per_class_summary(frame, class_names, order)
    return Comparison(pair, seeds, classes, class_names, names, class_set_note(classes, names, within), frame,
                      summarize(frame, order), per_class, baseline_deltas(frame, order), runs,
                      per_class_gap(per_class, class_names))


def write_comparison(result: Comparison, paths: Mapping[str, str | os.PathLike], top: int = 3) -> dict[str, Path]:
    """Write the CSVs, markdown, figure and HTML page of a :func:`compare` result (each atomically) to
    ``paths`` (keys of :data:`OUTPUT_NAMES`)."""
    from domains.io import atomic_write_text

    from wflib import figures

    paths = {k: Path(v) for k, v in paths.items()}
    write_csv_atomic(result.summary, paths["summary"])
    write_csv_atomic(result.per_class, paths["per_class"])
    write_csv_atomic(result.frame, paths["rounds"])
    md = "\n".join(t for t in (markdown_summary(result.summary, result.pair, result.seeds, result.class_note),
                               markdown_baselines(result.deltas, result.pair),
                               markdown_per_class(result.per_class, result.class_names, result.pair),
                               markdown_gap(result.gaps, result.class_names, result.pair)) if t)
    atomic_write_text(paths["markdown"], md)
    n_seeds = len(result.seeds)
    figures.comparison_plot(result.summary, paths["plot"],
                            f"{result.pair}: mIoU over {len(result.classes)} classes, "
                            f"{n_seeds} seed{'s' if n_seeds > 1 else ''}")
    heatmaps = [(row, figures.confusion_heatmap_png(pooled_best_confusion(result.runs, result.frame, row),
                                                    result.classes, result.names, f"{row} (best round)"))
                for row in heatmap_rows(result.summary, top)]
    page = html_page(result.pair, result.seeds, result.class_note, result.summary, result.per_class,
                     result.class_names, result.deltas, paths["plot"].read_bytes(), heatmaps, result.frame,
                     result.gaps)
    atomic_write_text(paths["html"], page)
    return paths


__all__ = ["BASELINE_TRANSLATOR", "COMBO_LIKE_NAMES", "Comparison", "CompareError", "OUTPUT_NAMES", "ORACLE", "Run",
           "SOURCE_ONLY", "baseline_deltas", "best_rounds", "caption", "class_iou", "class_set_note", "class_subset",
           "common_classes", "compare", "confusion_path", "confusions_of", "discover_rows", "final_table_path",
           "gap_cells", "gap_closed", "gt_pixels", "heatmap_rows", "html_page", "load_run", "load_runs", "load_seed",
           "markdown_baselines", "markdown_gap", "markdown_per_class", "markdown_summary", "mean_iou", "mean_std", "order_rows",
           "output_paths", "per_class_gap", "per_class_summary", "pooled_best_confusion", "rounds_frame", "stop_reason", "summarize",
           "write_comparison"]
