"""Summary tables of a pair in the seed paper's layout (SemST Tables 1 and 2) -- pure logic.

* ``results/<pair>_translation_table.csv`` (Table 1 layout): one row per translator with the
  FCN-score of its round-0 refined source set (pixel acc, class acc, mIoU of the target oracle
  segmenter vs the source labels), the semantic-distortion summary against the reference
  translator ``none`` (raw source images) and, when an Inception weights file is configured,
  FID/KID against the target val images.
* ``results/<pair>_uda_table.csv`` (Table 2 layout): one row per UDA method x translator with the
  per-class IoU and mIoU of the best round of ``results/<pair>_<uda>_<translator>.csv``.

Which translators / methods each table lists is config data (``tables:`` in config/config.yaml,
overridable per pair by ``tables.per_pair.<pair>`` and ``pairs.<pair>.tables``; defaults in the
workflow schema, filled in by validation: wflib/schema.py). Planned
(``status: planned``) or unknown-combination entries are skipped with a note that the report shows.

Published numbers (config/published/*.csv) are kept in their own frame with a ``source`` and a
``dataset`` column -- never mixed into our rows (minicity is not GTA5 -> Cityscapes).

Distortion (translators.metrics.distortion): with P = row-normalised confusion of the oracle
(label i -> predicted j), D = P(refined by t) - P(raw source); both confusions come from the
FCN-score runs, so no second inference is needed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from wflib.pipeline_config import deep_merge
from wflib.table import write_csv_atomic

#: columns of a published-numbers CSV (config/published/*.csv)
PUBLISHED_REQUIRED = ("source", "table", "task", "method")

FCN_COLUMNS = ("pixel_acc", "mean_class_acc", "mIoU")
MEAN_COLUMNS = ("mIoU", "mIoU16", "mIoU13")


class TablesConfigError(ValueError):
    """The ``tables:`` config names something that does not exist; the message names the key."""


def table_settings(config: dict, pair: str) -> dict:
    """Effective ``tables`` settings of ``pair``: ``tables`` (the schema's defaults filled in) <
    ``tables.per_pair.<pair>`` < ``pairs.<pair>.tables``."""
    tables = dict(config["tables"])
    per_pair = tables.pop("per_pair")
    out = deep_merge(tables, per_pair.get(pair))
    return deep_merge(out, (config["pairs"].get(pair) or {}).get("tables"))


def _status(spec: dict) -> str:
    return spec["status"]


def translation_plan(config: dict, pair: str) -> tuple[list[str], list[str]]:
    """(translators to tabulate, notes about skipped ones). The reference translator goes first."""
    s = table_settings(config, pair)["translation"]
    known = config["translators"]
    ref = s["reference"]
    if ref not in known or known[ref]["method"] != "none":
        raise TablesConfigError(f"config key 'tables.translation.reference' = {ref!r} must name a translator "
                                f"with method 'none' (the raw source images); translators: {', '.join(known)}")
    oracle = s["oracle"]
    u = config["uda"].get(oracle)
    if u is None or _status(u) != "implemented" or u["uses_source"]:
        raise TablesConfigError(f"config key 'tables.translation.oracle' = {oracle!r} must name an implemented UDA "
                                "method with uses_source: false (trained on target labels), e.g. 'oracle'")
    kept, notes = [ref], []
    for name in s["translators"]:
        if name not in known:
            raise TablesConfigError(f"config key 'tables.translation.translators' lists {name!r}, which is not a "
                                    f"translator (config key 'translators': {', '.join(known)})")
        if _status(known[name]) != "implemented":
            notes.append(f"translator '{name}' skipped: status {_status(known[name])!r} (config key "
                         f"'translators.{name}.status')")
        elif known[name]["direction"] != "source_to_target":
            notes.append(f"translator '{name}' skipped: it translates target -> source (config key "
                         f"'translators.{name}.direction'), so there is no refined source set to score")
        elif name not in kept:
            kept.append(name)
    return kept, notes


def uda_plan(config: dict, pair: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(list of (uda, translator) rows, notes about skipped methods/combinations)."""
    s = table_settings(config, pair)["uda"]
    combos, notes = [], []
    translators = []
    for name in s["translators"]:
        spec = config["translators"].get(name)
        if spec is None:
            raise TablesConfigError(f"config key 'tables.uda.translators' lists {name!r}, which is not a translator "
                                    f"(config key 'translators': {', '.join(config['translators'])})")
        if _status(spec) != "implemented":
            notes.append(f"translator '{name}' skipped: status {_status(spec)!r}")
        else:
            translators.append(name)
    for uda in s["methods"]:
        spec = config["uda"].get(uda)
        if spec is None:
            raise TablesConfigError(f"config key 'tables.uda.methods' lists {uda!r}, which is not a UDA method "
                                    f"(config key 'uda': {', '.join(config['uda'])})")
        if _status(spec) != "implemented":
            notes.append(f"UDA method '{uda}' skipped: status {_status(spec)!r} (config key 'uda.{uda}.status')")
            continue
        if not spec["uses_source"]:   # oracle: target labels, no source images at all
            none = [t for t in translators if config["translators"][t]["method"] == "none"]
            combos += [(uda, t) for t in none[:1]]
            if len(translators) > len(none[:1]):
                notes.append(f"UDA method '{uda}' trains on target labels only: listed once, with translator none")
            continue
        wanted = spec["translator_direction"]
        for t in translators:
            t_spec = config["translators"][t]
            if t_spec["method"] != "none" and t_spec["direction"] != wanted:
                notes.append(f"'{uda}_{t}' skipped: uda '{uda}' consumes {wanted} translators "
                             f"(config key 'uda.{uda}.translator_direction')")
            else:
                combos.append((uda, t))
    for combo in s["extra"]:  # single rows outside the methods x translators grid
        splits = [(u, combo[len(u) + 1:]) for u in config["uda"]
                  if combo.startswith(u + "_") and combo[len(u) + 1:] in config["translators"]]
        if len(splits) != 1:
            raise TablesConfigError(f"config key 'tables.uda.extra' lists {combo!r}, which is not "
                                    "<uda>_<translator> of configured names")
        if splits[0] not in combos:
            combos.append(splits[0])
    return combos, notes


# ------------------------------------------------------------------------------- translation table

def class_flows(delta: np.ndarray, cls: int, names: Sequence[str]) -> list[tuple[str, float]]:
    """Off-diagonal changes of row ``cls`` as (target class, percentage points), largest first."""
    row = 100.0 * np.asarray(delta, dtype=np.float64)[cls]
    order = [j for j in np.argsort(-np.nan_to_num(row, nan=-np.inf), kind="stable") if j != cls]
    return [(names[j], float(row[j])) for j in order if np.isfinite(row[j])]


def distortion_summary(delta: np.ndarray, names: Sequence[str], watch: Iterable[str] = ("sky",),
                       top: int = 3) -> dict:
    """Columns (percentage points) of one translator's distortion vs the reference.

    ``mean_flip_pp``: mean over present label classes of the sum of positive off-diagonal entries;
    ``flow_<r>``/``flow_<r>_pp``: the ``top`` largest increases overall; per watched class ``c``:
    ``<c>_kept_pp`` (diagonal change), ``<c>_flip_pp`` (sum of positive off-diagonal changes) and
    ``<c>_top`` / ``<c>_top_pp`` (its largest flow, e.g. sky->vegetation).
    """
    delta = np.asarray(delta, dtype=np.float64)
    names = list(names)
    present = ~np.all(np.isnan(delta), axis=1)
    off = np.nan_to_num(delta.copy())
    np.fill_diagonal(off, 0.0)
    row: dict = {"mean_flip_pp": 100.0 * float(np.clip(off[present], 0, None).sum(axis=1).mean())
                 if present.any() else float("nan")}
    flat = np.where(off > 0, off, -np.inf).ravel()
    n = delta.shape[0]
    for r, i in enumerate(np.argsort(-flat, kind="stable")[: max(int(top), 0)], start=1):
        if not np.isfinite(flat[i]):
            break
        row[f"flow_{r}"] = f"{names[i // n]}->{names[i % n]}"
        row[f"flow_{r}_pp"] = 100.0 * float(flat[i])
    for cls in watch:
        if cls not in names:
            raise TablesConfigError(f"config key 'tables.translation.watch' lists {cls!r}, not a class "
                                    f"(classes: {', '.join(names)})")
        c = names.index(cls)
        if not present[c]:
            row.update({f"{cls}_kept_pp": float("nan"), f"{cls}_flip_pp": float("nan"), f"{cls}_top": "",
                        f"{cls}_top_pp": float("nan")})
            continue
        flows = class_flows(delta, c, names)
        row[f"{cls}_kept_pp"] = 100.0 * float(delta[c, c])
        row[f"{cls}_flip_pp"] = float(sum(v for _, v in flows if v > 0))
        row[f"{cls}_top"] = f"{cls}->{flows[0][0]}" if flows else ""
        row[f"{cls}_top_pp"] = flows[0][1] if flows else float("nan")
    return row


def translation_row(translator: str, fcn: dict, delta: np.ndarray | None, names: Sequence[str],
                    watch: Iterable[str], top: int, fid: dict | None = None,
                    description: str = "") -> dict:
    """One row of the translation table (FCN-score in percent, distortion in percentage points)."""
    row = {"translator": translator, "description": description, "n_images": fcn.get("n_images")}
    for key in FCN_COLUMNS + ("mIoU16", "mIoU13"):
        if key in fcn and not pd.isna(fcn[key]):
            row[key] = float(fcn[key])
    if delta is not None:
        row.update(distortion_summary(delta, names, watch, top))
    if fid is not None:
        for key in ("FID", "KIDx100", "KIDx100_std", "n_real", "n_fake"):
            if key in fid:
                row[key] = fid[key]
    return row


def translation_table(rows: Sequence[dict], reference: str) -> pd.DataFrame:
    """Rows in order; ``distortion_vs`` names the reference (its own distortion columns stay empty)."""
    frame = pd.DataFrame(list(rows))
    flows = sorted((c for c in frame if c.startswith("flow_")), key=lambda c: (int(c.split("_")[1]), c))
    first = [c for c in ("translator", "description", "n_images", *FCN_COLUMNS, "mIoU16", "mIoU13", "mean_flip_pp")
             if c in frame]
    fid = [c for c in ("FID", "KIDx100", "KIDx100_std", "n_real", "n_fake") if c in frame]
    rest = [c for c in frame if c not in set(first) | set(flows) | set(fid)]
    frame = frame[first + flows + rest + fid]
    frame.insert(2, "distortion_vs", [("(reference)" if t == reference else reference) for t in frame["translator"]])
    return frame


# ------------------------------------------------------------------------------------- UDA table

def best_row(final_csv: str | os.PathLike) -> pd.Series:
    """The best round's row of a final table (``best`` column), with ``best_round``/``n_rounds``."""
    frame = pd.read_csv(final_csv)
    if frame.empty:
        raise ValueError(f"{final_csv}: no rounds")
    if "best" in frame:
        best = frame[frame["best"].astype(str).str.lower() == "true"]
        chosen = best.iloc[0] if len(best) else frame.loc[frame["mIoU"].astype(float).idxmax()]
    else:
        chosen = frame.loc[frame["mIoU"].astype(float).idxmax()]
    chosen = chosen.copy()
    chosen["best_round"] = int(chosen.get("round", 0))
    chosen["n_rounds"] = len(frame)
    return chosen


def uda_table(entries: Sequence[tuple[str, str, str]], class_names: Sequence[str]) -> pd.DataFrame:
    """``entries``: (uda, translator, final csv). Columns: uda, translator, best_round, n_rounds,
    per-class IoU (class names, in percent), the means present (mIoU, mIoU16, mIoU13)."""
    rows = []
    for uda, translator, path in entries:
        best = best_row(path)
        row = {"uda": uda, "translator": translator, "best_round": best["best_round"], "n_rounds": best["n_rounds"]}
        for name in class_names:
            row[name] = float(best[name]) if name in best and not pd.isna(best[name]) else float("nan")
        for m in MEAN_COLUMNS:
            if m in best and not pd.isna(best[m]):
                row[m] = float(best[m])
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ published numbers

def load_published(paths: Sequence[str | os.PathLike], task: str | None, base: Path | None = None) -> pd.DataFrame:
    """Rows of the published CSVs for ``task`` (all tasks when None), with their ``source`` kept.

    Paths are relative to ``base`` (the repository) unless absolute. Values stay as published,
    except that fractions (``unit`` = fraction) are converted to percent so they read like ours.
    """
    frames = []
    for p in paths:
        path = Path(p)
        path = path if path.is_absolute() or base is None else base / path
        if not path.is_file():
            raise TablesConfigError(f"published-numbers file {path} does not exist (config key 'tables.published')")
        frame = pd.read_csv(path, na_values=["-", "\\"])
        missing = [c for c in PUBLISHED_REQUIRED if c not in frame]
        if missing:
            raise TablesConfigError(f"{path}: missing column(s) {missing}; needs {list(PUBLISHED_REQUIRED)}")
        frame["file"] = path.name
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    if task is not None:
        out = out[out["task"] == task].reset_index(drop=True)
    if "unit" in out:
        fraction = out["unit"] == "fraction"
        for col in FCN_COLUMNS:
            if col in out:
                out.loc[fraction, col] = 100.0 * out.loc[fraction, col]
        out.loc[fraction, "unit"] = "percent (paper: fraction x 100)"
    empty = [c for c in (*FCN_COLUMNS, "RMSE", "acc@5", "acc@10") if c in out and out[c].isna().all()]
    return out.drop(columns=empty)   # metrics of other tasks (class columns stay: '-' = not evaluated)


def published_gap_closed(published: pd.DataFrame) -> pd.DataFrame:
    """``published`` with ``gap_closed`` (%) and ``gap_reference`` columns: the share of the
    source-only -> oracle gap each row closes, (mIoU - source-only) / (oracle - source-only), the
    figure the comparison page gives our rows (wflib.compare).

    The references of a row are the published ``source_only`` row of the same ``task`` and
    ``backbone`` (any loaded file) and that row's ``oracle_mIoU``: one reference pair per backbone,
    as on our pages, even where a paper prints another oracle beside other rows (LDR's Table 1 does
    for VGG16). Rows without such a reference keep NaN, frames without those columns come back
    unchanged, and a task/backbone with two source-only rows is ambiguous and raises."""
    needed = {"task", "uda", "backbone", "mIoU", "oracle_mIoU"}
    if published.empty or not needed <= set(published.columns):
        return published   # e.g. translation tables: nothing to compute, no empty columns added
    out = published.copy()
    out["gap_closed"] = np.nan
    out["gap_reference"] = ""
    refs = out[(out["uda"] == "source_only") & out["mIoU"].notna() & out["oracle_mIoU"].notna()]
    for (task, backbone), group in refs.groupby(["task", "backbone"]):
        if len(group) > 1:
            raise TablesConfigError(f"published numbers: {len(group)} source-only rows for {task} / {backbone} "
                                    f"(files {sorted(set(group['file']))}); keep one per task and backbone")
        ref = group.iloc[0]
        so, oracle = float(ref["mIoU"]), float(ref["oracle_mIoU"])
        rows = (out["task"] == task) & (out["backbone"] == backbone)
        out.loc[rows, "gap_closed"] = 100.0 * (out.loc[rows, "mIoU"] - so) / (oracle - so)
        out.loc[rows, "gap_reference"] = f"source-only {so:g} ({ref['file']}), oracle {oracle:g}"
    return out


def published_view(published: pd.DataFrame, pair: str, task: str | None, same_dataset: bool) -> pd.DataFrame:
    """Label published rows so nobody reads them as ours: a ``dataset`` column and a caveat."""
    if published.empty:
        return published
    out = published.copy()
    caveat = ("same benchmark, published numbers" if same_dataset
              else f"another dataset ({task}); not comparable with {pair}")
    out.insert(0, "shown_for_pair", pair)
    out.insert(1, "caveat", caveat)
    return out


def write_published(pub: dict, pair: str, path: str | os.PathLike, repo: str | os.PathLike) -> int:
    """Write the labelled published rows shown beside ``pair``'s table (``pub``: the rule's params; its
    relative file names are under ``repo``, which the script finds from its own folder, so that no
    path of this machine is a param); a one-row caveat when none exist for the task. Returns the
    number of published rows."""
    published = published_gap_closed(load_published(pub["files"], pub["task"], Path(repo)))
    view = published_view(published, pair, pub["task"], pub["same_dataset"])
    if view.empty:
        view = pd.DataFrame({"shown_for_pair": [pair],
                             "caveat": [f"no published numbers for task {pub['task']!r} in {pub['files']}"]})
    write_csv_atomic(view, path)
    return len(published)


__all__ = ["DEFAULTS", "TablesConfigError", "best_row", "class_flows", "distortion", "distortion_summary",
           "load_published", "published_gap_closed", "published_view", "table_settings", "translation_plan",
           "translation_row", "translation_table", "uda_plan", "uda_table", "write_csv_atomic", "write_published"]
