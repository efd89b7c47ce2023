"""Method comparison over seeds (workflow/lib/wflib/compare.py, workflow/scripts/compare.py, rule comparison).

Fake seeds are written in tmp_path exactly as the workflow leaves them: per-round CSVs (the "nan"
IoU convention) and confusions, and final tables built by wflib.table.final_table (so ``best``
and ``decision`` are the real ones). Every confusion has 100 GT pixels for each of road, building,
vegetation, sky and car; wrong pixels go to 'train', which has no GT pixels -- so a class's IoU
is exactly its correct pixels in percent, and 'train' (predicted, never in GT) is what the "nan"
convention wrongly averages in at 0.
"""
from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow" / "lib"))  # appended: a mutation run puts its mutated wflib first

from wflib import compare as wc  # noqa: E402
from wflib.table import final_table  # noqa: E402

from domains.labels import CLASSES  # noqa: E402

GT = ("road", "building", "vegetation", "sky", "car")
GT_IDX = [CLASSES.index(c) for c in GT]
TRAIN = CLASSES.index("train")
SCRIPT = REPO / "workflow" / "scripts" / "compare.py"
ROUNDS = {"max": 2, "min_delta": 0.5, "metric": "mIoU", "class_set": 19}

# per seed, per row: one IoU vector per round over GT (a number = the same IoU for every class)
SEEDS = {
    "0": {"source_only_none": [[50, 40, 30, 30, 0]], "oracle_none": [80],
          "bdl_none": [40, 39], "bdl_semst": [44, 48, 50]},          # bdl_semst: 3 rounds, cap
    "1": {"source_only_none": [[55, 45, 35, 25, 0]], "oracle_none": [82],
          "bdl_none": [42, 41], "bdl_semst": [46, 45]},               # 2 rounds, rule
    "2": {"source_only_none": [[60, 50, 40, 20, 0]], "oracle_none": [84],
          "bdl_none": [44, 43], "bdl_semst": [48, 47]},
}
ROWS = [("source_only", "none"), ("oracle", "none"), ("bdl", "none"), ("bdl", "semst")]


def confusion(correct) -> np.ndarray:
    """100 GT pixels per GT class, ``correct`` of them right, the rest predicted as 'train'."""
    correct = [correct] * len(GT) if np.isscalar(correct) else list(correct)
    cm = np.zeros((19, 19), dtype=np.int64)
    for c, ok in zip(GT_IDX, correct):
        cm[c, c] = ok
        cm[c, TRAIN] = 100 - ok
    return cm


def nan_convention_row(cm: np.ndarray) -> dict:
    """What `segmenters evaluate` writes: IoU NaN for classes absent from GT and predictions."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(0) + cm.sum(1) - tp
    iou = np.where(denom > 0, 100 * tp / np.where(denom > 0, denom, 1), np.nan)
    row = dict(zip(CLASSES, iou))
    row.update({"mIoU": float(np.nanmean(iou)), "aAcc": 100 * tp.sum() / cm.sum(), "mAcc": 50.0})
    return row


def write_seed(root: Path, seed: str, spec: dict, pair: str = "p") -> Path:
    for row, rounds in spec.items():
        uda = next(u for u in ("source_only", "oracle", "bdl") if row.startswith(u + "_"))
        translator = row[len(uda) + 1:]
        folder = root / "results" / pair / row
        folder.mkdir(parents=True, exist_ok=True)
        csvs = []
        for k, correct in enumerate(rounds):
            cm = confusion(correct)
            np.save(folder / f"r{k}.confusion.npy", cm)
            pd.DataFrame([{**nan_convention_row(cm), "round": k, "checkpoint": "x.pth"}]).to_csv(folder / f"r{k}.csv", index=False)
            csvs.append(str(folder / f"r{k}.csv"))
        rounds_cfg = {**ROUNDS, "multi_round": uda == "bdl"}
        final_table(csvs, [], rounds_cfg, pair, uda, translator).to_csv(root / "results" / f"{pair}_{row}.csv", index=False)
    return root


@pytest.fixture
def seeds(tmp_path) -> list[Path]:
    return [write_seed(tmp_path / f"seed{s}", s, spec) for s, spec in SEEDS.items()]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------ pure logic

def test_iou_from_confusion_matches_hand_computation():
    cm = np.zeros((19, 19), dtype=np.int64)
    road, sidewalk, car = (CLASSES.index(c) for c in ("road", "sidewalk", "car"))
    cm[road, road], cm[road, sidewalk], cm[road, car] = 80, 15, 5     # road: 100 GT pixels
    cm[sidewalk, sidewalk], cm[sidewalk, road] = 30, 10               # sidewalk: 40 GT pixels
    cm[car, car], cm[car, road] = 20, 5                               # car: 25 GT pixels
    iou = wc.class_iou(cm, [road, sidewalk, car])
    # road: TP 80, FP 10 + 5, FN 20; sidewalk: TP 30, FP 15, FN 10; car: TP 20, FP 5, FN 5
    assert iou == pytest.approx([100 * 80 / 115, 100 * 30 / 55, 100 * 20 / 30])
    assert wc.mean_iou(cm, [road, sidewalk, car]) == pytest.approx(np.mean(iou))
    assert wc.class_iou(cm, [CLASSES.index("bus")]).tolist() == [pytest.approx(np.nan, nan_ok=True)]


def test_common_class_set_excludes_gt_absent_and_keeps_unpredicted_classes():
    so, oracle = confusion([50, 40, 30, 30, 0]), confusion(80)     # source-only never predicts car
    classes = wc.common_classes({"so.npy": so, "oracle.npy": oracle}, names=CLASSES)
    assert [CLASSES[i] for i in classes] == sorted(GT, key=CLASSES.index)
    assert TRAIN not in classes                                      # predicted, never in GT
    assert wc.class_iou(so, classes)[list(classes).index(CLASSES.index("car"))] == 0.0
    assert wc.mean_iou(so, classes) == pytest.approx(30.0)
    assert nan_convention_row(so)["mIoU"] == pytest.approx(150 / 6)  # 'train' averaged in at 0
    note = wc.class_set_note(classes, CLASSES)
    assert note.startswith("5 classes with ground-truth pixels") and "train" in note
    assert list(wc.common_classes({"a": so}, within=(0, 2, 8))) == [0, 2, 8]


def test_common_class_set_refuses_different_val_splits():
    other = confusion(80)
    other[CLASSES.index("bus"), CLASSES.index("bus")] = 7
    with pytest.raises(wc.CompareError, match=r"b\.npy: ground-truth class set differs from a\.npy.*bus"):
        wc.common_classes({"a.npy": confusion(80), "b.npy": other}, names=CLASSES)
    fewer = confusion(80)
    fewer[0, 0] -= 1
    with pytest.raises(wc.CompareError, match="class 'road' are 99 but 100"):
        wc.common_classes({"a.npy": confusion(80), "b.npy": fewer}, names=CLASSES)


def test_gap_closed_hand_cases_and_degenerate_gap():
    assert wc.gap_closed(48, 32, 82) == pytest.approx(0.32)
    assert wc.gap_closed(32, 32, 82) == 0.0 and wc.gap_closed(82, 32, 82) == 1.0
    assert wc.gap_closed(20, 32, 82) == pytest.approx(-0.24)
    assert np.isnan(wc.gap_closed(40, 50, 50)) and np.isnan(wc.gap_closed(40, 60, 50))
    assert np.isnan(wc.gap_closed(np.nan, 30, 80))
    assert wc.gap_closed(np.array([30.0, 55.0]), 30.0, 80.0).tolist() == [0.0, 0.5]


def test_stop_reason_reads_the_last_decision():
    assert wc.stop_reason("reached rounds.max=2") == "cap"
    assert wc.stop_reason("improvement -1.000 < rounds.min_delta=0.5") == "rule"
    assert wc.stop_reason("single-round method") == "single-round"
    assert wc.stop_reason("improvement +2.000 >= rounds.min_delta=0.5") == "incomplete"
    assert wc.stop_reason("something else") == "unknown"
    assert wc.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5), 2)             # sample std, ddof=1
    assert np.isnan(wc.mean_std([1.0, np.nan])[1]) and wc.mean_std([1.0, np.nan])[2] == 1  # one value: NaN std
    assert wc.mean_std([])[2] == 0


def test_load_seed_long_frame(seeds):
    frame = wc.load_seed(seeds[0], "p", ROWS, "0")
    assert list(frame.columns[:6]) == ["seed", "uda", "translator", "row", "round", "best"]
    semst = frame[frame["row"] == "bdl_semst"]
    assert semst["round"].tolist() == [0, 1, 2] and semst["mIoU"].tolist() == pytest.approx([44, 48, 50])
    assert semst["best"].tolist() == [False, False, True] and set(semst["stop"]) == {"cap"}
    assert semst["stop_decision"].iloc[0] == "reached rounds.max=2"
    so = frame[frame["row"] == "source_only_none"].iloc[0]
    assert so["car"] == 0.0 and so["mIoU"] == pytest.approx(30.0) and so["mIoU_reported"] == pytest.approx(25.0)
    assert (frame["n_classes"] == 5).all() and "train" not in frame and "bus" not in frame
    assert frame[frame["row"] == "bdl_none"]["stop"].iloc[0] == "rule"


def test_aggregation_over_seeds_matches_hand_numbers(seeds):
    result = wc.compare("p", seeds, ["0", "1", "2"], ROWS)
    s = result.summary.set_index("row")
    assert list(s.index) == ["source_only_none", "oracle_none", "bdl_none", "bdl_semst"]
    assert s.loc["source_only_none", "best_mIoU_mean"] == pytest.approx(32.0)
    assert s.loc["source_only_none", "best_mIoU_std"] == pytest.approx(2.0)      # ddof=1
    b = s.loc["bdl_semst"]
    assert (b["best_mIoU_mean"], b["best_mIoU_std"], b["best_round"]) == (pytest.approx(48.0), pytest.approx(2.0), "2/0/0")
    assert (b["r0_mIoU_mean"], b["r0_mIoU_std"], b["r0_n"]) == (pytest.approx(46.0), pytest.approx(2.0), 3)
    assert b["r1_mIoU_mean"] == pytest.approx(140 / 3) and b["r1_mIoU_std"] == pytest.approx(np.std([48, 45, 47], ddof=1))
    assert (b["r2_mIoU_mean"], b["r2_n"]) == (pytest.approx(50.0), 1) and np.isnan(b["r2_mIoU_std"])
    assert b["gap_closed"] == pytest.approx((48 - 32) / (82 - 32))
    assert b["gap_closed_seed_mean"] == pytest.approx(np.mean([0.4, 0.28, 0.28]))
    assert b["gap_closed_seed_std"] == pytest.approx(np.std([0.4, 0.28, 0.28], ddof=1))
    assert (b["rounds"], b["stop"], b["n_cap"], b["n_rule"]) == ("3/2/2", "cap/rule/rule", 1, 2)
    assert s.loc["bdl_none", "gap_closed"] == pytest.approx(0.2) and s.loc["oracle_none", "gap_closed"] == 1.0
    assert s.loc["source_only_none", "stop"] == "single-round/single-round/single-round"
    pc = result.per_class.set_index("row")
    assert pc.loc["source_only_none", "road"] == pytest.approx(55.0) and pc.loc["source_only_none", "road_std"] == pytest.approx(5.0)
    assert pc.loc["source_only_none", "car"] == 0.0 and pc.loc["bdl_semst", "sky"] == pytest.approx(48.0)
    d = result.deltas.set_index("row").loc["bdl_semst"]
    assert d["baseline"] == "bdl_none" and d["delta_mean"] == pytest.approx(6.0)
    assert d["delta_std"] == pytest.approx(np.std([10, 4, 4], ddof=1))
    md = wc.markdown_summary(result.summary, "p", result.seeds, result.class_note)
    line = next(l for l in md.splitlines() if l.startswith("| bdl_semst"))
    assert "48.0 ± 2.0" in line and "32 %" in line and "50.0 (n=1)" in line and "3 (cap) / 2 (rule) / 2 (rule)" in line
    assert "5 classes with ground-truth pixels" in md and "ddof=1" in md


def test_per_class_gap_matches_hand_numbers(seeds):
    result = wc.compare("p", seeds, ["0", "1", "2"], ROWS)
    g = result.gaps.set_index("row")
    # source-only means per class 55/45/35/25/0, oracle 82 everywhere, bdl_semst's best rounds 50/46/48 -> 48
    gaps = {"road": 27.0, "building": 37.0, "vegetation": 47.0, "sky": 57.0, "car": 82.0}
    for c, v in gaps.items():
        assert g.loc["gap", c] == pytest.approx(v)
        assert g.loc["share", c] == pytest.approx(v / 250.0)
        assert g.loc["bdl_semst", c] == pytest.approx((48.0 - (82.0 - v)) / v)
    assert g.loc["bdl_semst", "road"] < 0                                # below source-only on road
    # the mIoU column is the summary's gap closed of the means
    assert g.loc["bdl_semst", "mIoU"] == pytest.approx(result.summary.set_index("row").loc["bdl_semst", "gap_closed"])
    assert list(g.index) == ["gap", "share", "bdl_none", "bdl_semst"]
    md = wc.markdown_gap(result.gaps, result.class_names, "p")
    assert "| bdl_semst: gap closed | -26 % |" in md and "| gap: oracle − source-only (IoU points) | 27.0 |" in md


def test_per_class_gap_leaves_classes_without_a_gap_and_needs_both_references():
    names = ["road", "sky"]
    pc = pd.DataFrame([{"row": "source_only_none", "road": 50.0, "sky": 70.0, "mIoU": 60.0},
                       {"row": "oracle_none", "road": 90.0, "sky": 60.0, "mIoU": 75.0},
                       {"row": "x_none", "road": 70.0, "sky": 65.0, "mIoU": 67.5}])
    g = wc.per_class_gap(pc, names).set_index("row")
    assert g.loc["share", "road"] == 1.0 and g.loc["share", "sky"] == 0.0  # a negative gap is no share
    assert g.loc["x_none", "road"] == pytest.approx(0.5) and np.isnan(g.loc["x_none", "sky"])
    assert g.loc["x_none", "mIoU"] == pytest.approx(0.5)
    assert "—" in wc.gap_cells(g.reset_index(), names)[1][2]
    assert wc.per_class_gap(pc[pc["row"] != "oracle_none"], names).empty
    assert wc.markdown_gap(wc.per_class_gap(pc[pc["row"] != "oracle_none"], names), names, "p") == ""


def test_single_seed_has_no_std(seeds):
    result = wc.compare("p", seeds[:1], ["0"], ROWS)
    b = result.summary.set_index("row").loc["bdl_semst"]
    assert b["best_mIoU_mean"] == pytest.approx(50.0) and np.isnan(b["best_mIoU_std"]) and b["gap_closed"] == pytest.approx(0.4)
    assert "| bdl_semst | 50.0 | 40 % |" in wc.markdown_summary(result.summary, "p", result.seeds, result.class_note)


# ------------------------------------------------------------------------------------------- CLI

def test_cli_writes_every_file_and_a_self_contained_page(seeds, tmp_path):
    out = tmp_path / "cmp"
    res = run_cli("--pair", "p", "--runs", *map(str, seeds), "--out", str(out), "--seeds", "0", "1", "2")
    assert res.returncode == 0, res.stderr
    for name in wc.OUTPUT_NAMES.values():
        assert (out / f"p_{name}").stat().st_size > 0, name
    assert not list(out.glob(".*tmp*"))                                 # atomic writes left no temp files
    rows = pd.read_csv(out / "p_comparison_rounds.csv")
    assert len(rows) == 3 * (1 + 1 + 2) + 3 + 2 + 2 and set(rows["seed"]) == {0, 1, 2}
    assert pd.read_csv(out / "p_comparison.csv")["row"].tolist() == ["source_only_none", "oracle_none", "bdl_none", "bdl_semst"]
    page = (out / "p_comparison.html").read_text()
    assert "Per-class IoU (%) of the best round" in page and "<th>vegetation</th>" in page
    assert "Where the gap is closed, per class" in page and "bdl_semst: gap closed" in page
    assert "<th scope='row'>bdl_semst</th>" in page and "bdl_none" in page and "+6.0 ± 3.5" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 1 + 4                      # figure + 2 UDA rows, source-only, oracle heat maps
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "src='http" not in page and "5 classes with ground-truth pixels" in page
    assert "| bdl_semst |" in (out / "p_comparison.md").read_text()


def test_cli_missing_file_is_one_line_exit_2(seeds, tmp_path):
    missing = seeds[1] / "results" / "p" / "bdl_semst" / "r1.confusion.npy"
    missing.unlink()
    res = run_cli("--pair", "p", "--runs", *map(str, seeds), "--out", str(tmp_path / "cmp"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and str(missing) in res.stderr
    (seeds[2] / "results" / "p_oracle_none.csv").unlink()
    res = run_cli("--pair", "p", "--runs", str(seeds[2]), "--out", str(tmp_path / "cmp"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "p_oracle_none.csv" in res.stderr
    assert not (tmp_path / "cmp").exists()
    help_ = run_cli("--help")
    assert help_.returncode == 0 and "--runs" in help_.stdout


# ------------------------------------------------------------------------------------- Snakemake

def test_rule_comparison_runs_on_final_tables(tmp_path):
    """The Snakemake rule (same script) on this directory's final tables, nothing else allowed to run."""
    write_seed(tmp_path, "0", SEEDS["0"], pair="minicity")
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump(
        {"tables": {"uda": {"methods": ["source_only", "oracle", "bdl"], "translators": ["none", "semst"]}}}))
    # the table lists source_only_semst too: give it one round
    write_seed(tmp_path, "0", {"source_only_semst": [[52, 42, 32, 32, 2]]}, pair="minicity")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(REPO / "config/config.yaml"), str(tmp_path / "cmp.yaml"), "--workflow-profile", "none",
           "--cores", "1", "results/minicity_comparison.html"]
    # (--allowed-rules comparison plans nothing here: the final tables' rounds come from the evaluate
    # checkpoint.) First make sure the plan is the comparison job alone -- never any training.
    plan = subprocess.run([*cmd, "-n"], capture_output=True, text=True, timeout=240)
    out = plan.stdout + plan.stderr
    assert plan.returncode == 0 and re.search(r"comparison\s+1\s+total\s+1\b", out), out[-3000:]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    summary = pd.read_csv(tmp_path / "results" / "minicity_comparison.csv")
    assert summary["row"].tolist() == ["source_only_none", "oracle_none", "source_only_semst", "bdl_none", "bdl_semst"]
    assert summary["seeds"].tolist() == [0] * 5 and summary["n_classes"].tolist() == [5] * 5
    assert (tmp_path / "results" / "plots" / "minicity_comparison.png").stat().st_size > 1000
    assert (tmp_path / "results" / "minicity_comparison_rounds.csv").is_file()
