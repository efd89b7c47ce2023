"""Summary tables (workflow/rules/tables.smk, workflow/lib/wflib/tables.py).

Pure functions are checked on hand-made confusions and result CSVs; the rules run in real
Snakemake: a dry run plans the whole translation-table DAG (oracle segmenter, refined sets, one
FCN-score per translator), and the table rules run on FCN-score outputs written beside a
minimal config (``--allowed-rules`` keeps Snakemake from rebuilding the training stages).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow" / "lib"))  # appended: a mutation run puts its mutated wflib first

from wflib import tables as wft  # noqa: E402
from wflib.schema import fill_defaults  # noqa: E402

from domains.labels import CLASSES  # noqa: E402

SKY, VEG, ROAD, BUILDING, CAR = (CLASSES.index(c) for c in ("sky", "vegetation", "road", "building", "car"))


def base_config() -> dict:
    """config/config.yaml with pair minicity, the schema's defaults filled in (as common.smk has it;
    a test that adds a method fills again)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["pairs"] = {"minicity": yaml.safe_load((REPO / "config" / "pairs" / "minicity.yaml").read_text())}
    return fill_defaults(config)


def confusion(sky_to_veg: int = 0, road_to_car: int = 0) -> np.ndarray:
    """Oracle confusion (rows = label) on a set with road, building, vegetation, sky, car pixels."""
    cm = np.zeros((19, 19), dtype=np.int64)
    for c in (ROAD, BUILDING, VEG, SKY, CAR):
        cm[c, c] = 1000
    cm[SKY, BUILDING] = 100                       # the segmenter's own confusion (domain gap)
    cm[SKY, SKY] -= sky_to_veg + 100
    cm[SKY, VEG] += sky_to_veg
    cm[ROAD, ROAD] -= road_to_car
    cm[ROAD, CAR] += road_to_car
    return cm


# ------------------------------------------------------------------------------------ pure logic

def test_settings_merge_defaults_section_per_pair_and_pair_file():
    config = base_config()
    config["tables"]["per_pair"]["minicity"] = {"translation": {"limit": 7}}
    config["pairs"]["minicity"]["tables"] = {"translation": {"top_flows": 5}}
    s = wft.table_settings(config, "minicity")
    assert s["translation"]["limit"] == 7 and s["translation"]["top_flows"] == 5
    assert s["translation"]["oracle"] == "oracle" and s["uda"]["methods"][0] == "source_only"
    assert wft.table_settings(config, "gta2cs")["translation"]["limit"] == 500
    assert wft.table_settings(config, "syn2cs")["published"]["task"] == "SYNTHIA->Cityscapes"


def test_translation_plan_skips_planned_and_rejects_unknown():
    config = base_config()
    config["translators"]["spade"]["status"] = "planned"
    names, notes = wft.translation_plan(config, "minicity")
    assert names[0] == "none" and "spade" not in names and {"cut", "semst", "semst_ts2", "cyclegan"} <= set(names)
    assert any("spade" in n and "planned" in n for n in notes)
    config["translators"]["t2s"] = {"method": "cyclegan", "direction": "target_to_source"}
    fill_defaults(config)
    config["tables"]["translation"]["translators"] = ["cut", "t2s"]
    names, notes = wft.translation_plan(config, "minicity")
    assert names == ["none", "cut"] and any("t2s" in n and "target -> source" in n for n in notes)
    config["tables"]["translation"]["translators"] = ["cut", "nosuch"]
    with pytest.raises(wft.TablesConfigError, match="tables.translation.translators.*nosuch"):
        wft.translation_plan(config, "minicity")
    config["tables"]["translation"]["translators"] = ["cut"]
    config["tables"]["translation"]["oracle"] = "bdl"
    with pytest.raises(wft.TablesConfigError, match="tables.translation.oracle"):
        wft.translation_plan(config, "minicity")


def test_uda_plan_lists_oracle_once_and_skips_planned_methods():
    config = base_config()
    config["uda"]["proda"]["status"] = "planned"
    combos, notes = wft.uda_plan(config, "minicity")
    assert ("oracle", "none") in combos and ("oracle", "cut") not in combos
    assert ("bdl", "semst") in combos and ("source_only", "none") in combos
    assert not any(u == "proda" for u, _ in combos) and any("proda" in n for n in notes)


def test_uda_plan_skips_mismatched_directions_and_adds_extra_rows():
    config = base_config()
    config["tables"]["uda"]["methods"] = ["bdl", "ldr"]
    config["tables"]["uda"]["translators"] = ["none", "semst", "ldr"]
    config["tables"]["uda"]["extra"] = ["bdl_cyclegan", "bdl_semst"]
    combos, notes = wft.uda_plan(config, "minicity")
    assert combos == [("bdl", "none"), ("bdl", "semst"), ("ldr", "none"), ("ldr", "ldr"), ("bdl", "cyclegan")]
    assert any("'bdl_ldr' skipped" in n for n in notes) and any("'ldr_semst' skipped" in n for n in notes)
    config["tables"]["uda"]["extra"] = ["bdl_nosuch"]
    with pytest.raises(wft.TablesConfigError, match="tables.uda.extra"):
        wft.uda_plan(config, "minicity")


def test_distortion_summary_finds_sky_to_vegetation():
    from translators.metrics.distortion import distortion_matrix   # the one formula (translators/metrics)

    delta = distortion_matrix(confusion(sky_to_veg=300, road_to_car=50), confusion())
    row = wft.distortion_summary(delta, CLASSES, watch=["sky", "terrain"], top=2)
    assert row["sky_top"] == "sky->vegetation" and row["sky_top_pp"] == pytest.approx(30.0)
    assert row["sky_kept_pp"] == pytest.approx(-30.0) and row["sky_flip_pp"] == pytest.approx(30.0)
    assert row["flow_1"] == "sky->vegetation" and row["flow_2"] == "road->car" and row["flow_2_pp"] == pytest.approx(5.0)
    assert np.isnan(row["terrain_kept_pp"])             # absent label class: no numbers
    assert row["mean_flip_pp"] == pytest.approx((30.0 + 5.0) / 5)
    with pytest.raises(wft.TablesConfigError, match="watch"):
        wft.distortion_summary(delta, CLASSES, watch=["skyy"])


def test_uda_table_takes_the_best_round(tmp_path):
    rows = []
    for k, miou in enumerate([10.0, 14.0, 12.0]):
        rows.append({"pair": "p", "uda": "bdl", "translator": "semst", "round": k, "sky": miou + 1,
                     "road": miou - 1, "mIoU": miou, "best": k == 1})
    pd.DataFrame(rows).to_csv(tmp_path / "final.csv", index=False)
    table = wft.uda_table([("bdl", "semst", tmp_path / "final.csv")], CLASSES)
    assert table.loc[0, "best_round"] == 1 and table.loc[0, "n_rounds"] == 3
    assert table.loc[0, "mIoU"] == 14.0 and table.loc[0, "sky"] == 15.0 and np.isnan(table.loc[0, "bus"])


def test_published_numbers_are_filtered_converted_and_labelled():
    pub = wft.load_published(["config/published/semst_table1.csv"], "GTA5->Cityscapes", REPO)
    semst = pub[(pub["translator"] == "semst") & (pub["table"] == "Table 1")].iloc[0]
    assert semst["pixel_acc"] == pytest.approx(69.3) and semst["mIoU"] == pytest.approx(13.5)
    assert set(pub["task"]) == {"GTA5->Cityscapes"} and "RMSE" not in pub   # Photo->Map columns dropped
    assert {"semst_noms", "semst_ts0"} <= set(pub["translator"])          # Table 3 ablations
    view = wft.published_view(pub, "minicity", "GTA5->Cityscapes", same_dataset=False)
    assert view["caveat"].str.contains("another dataset").all() and (view["shown_for_pair"] == "minicity").all()
    uda = wft.load_published(["config/published/semst_table2.csv"], "SYNTHIA->Cityscapes", REPO)
    assert len(uda) == 4 and uda["terrain"].isna().all()
    with pytest.raises(wft.TablesConfigError, match="does not exist"):
        wft.load_published(["config/published/nope.csv"], None, REPO)


def test_published_gap_closed_uses_the_source_only_row_of_the_same_task_and_backbone():
    frame = pd.DataFrame({
        "task": ["A", "A", "A", "A", "B"], "backbone": ["R", "R", "V", "V", "R"],
        "uda": ["source_only", "bdl", "source_only", "bdl", "bdl"],
        "mIoU": [30.0, 45.0, 20.0, 10.0, 50.0], "oracle_mIoU": [60.0, None, 40.0, 99.0, None],
        "file": ["f.csv"] * 5})
    out = wft.published_gap_closed(frame)
    assert out["gap_closed"].tolist()[:4] == pytest.approx([0.0, 50.0, 0.0, -50.0])   # the row's own oracle unused
    assert np.isnan(out.loc[4, "gap_closed"]) and out.loc[4, "gap_reference"] == ""  # no reference for task B
    assert out.loc[1, "gap_reference"] == "source-only 30 (f.csv), oracle 60"
    assert "gap_closed" not in wft.published_gap_closed(frame.drop(columns="oracle_mIoU"))
    with pytest.raises(wft.TablesConfigError, match="2 source-only rows for A / R"):
        wft.published_gap_closed(pd.concat([frame, frame.iloc[:1]], ignore_index=True))


def test_published_gap_closed_of_the_shipped_tables():
    pub = wft.published_gap_closed(wft.load_published(
        ["config/published/semst_table2.csv", "config/published/ldr_table1.csv"], "GTA5->Cityscapes", REPO))
    gap = {(r.method, r.backbone): r.gap_closed for r in pub.itertuples()}
    # (60.1 - 36.6) / (65.1 - 36.6): the seed paper's best row, the "82 %"
    assert gap[("SePiCo +SemST", "DeepLab-V2 ResNet-101")] == pytest.approx(82.46, abs=0.01)
    assert gap[("BDL", "FCN-8s VGG16")] == pytest.approx(100 * (41.3 - 17.9) / (64.6 - 17.9))


# ----------------------------------------------------------------------------------- snakemake

def snakemake(workdir: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(REPO / "config/config.yaml"), str(workdir / "tables.yaml"),
           "--workflow-profile", "none", "--cores", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "tables.yaml").write_text(yaml.safe_dump({
        "translators": {"spade": {"method": "spade", "status": "planned"}},
        "uda": {"proda": {"status": "planned"}},
        "tables": {"translation": {"translators": ["none", "cut", "semst", "spade"], "limit": 8},
                   "uda": {"methods": ["source_only", "oracle", "proda"], "translators": ["none", "semst"]}},
    }))
    return tmp_path


def test_dry_run_plans_fcn_scores_with_the_oracle(workdir):
    res = snakemake(workdir, "-n", "-p", "results/minicity_translation_table.csv")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "rule translation_table:" in out and "rule final_table:" not in out
    assert out.count("rule translation_fcn:") == 3 and out.count("rule translation_distortion:") == 2
    assert "--segmenter results/runs/minicity/oracle_none/r0/final.pth" in out
    assert "--images data/refined/minicity/semst/r0" in out and "--limit 8" in out
    assert "translation/spade" not in out and "InputFunctionException" not in out
    assert "rule translation_fid:" not in out      # no inception_weights configured


def test_missing_inception_weights_file_stops_with_the_key(workdir):
    res = snakemake(workdir, "-n", "results/minicity_translation_table.csv", "--config",
                    "tables={'translation': {'inception_weights': 'missing.pth'}}")
    assert res.returncode != 0 and "tables.translation.inception_weights" in res.stdout + res.stderr


def test_table_rules_write_tables_heatmaps_and_published(workdir):
    base = workdir / "results" / "minicity" / "translation"
    cms = {"none": confusion(), "cut": confusion(sky_to_veg=250), "semst": confusion(sky_to_veg=40, road_to_car=20)}
    for t, cm in cms.items():
        (base / t).mkdir(parents=True)
        np.save(base / t / "fcn.confusion.npy", cm)
        pd.DataFrame([{"translator": t, "n_images": 8, "pixel_acc": 90.0 - cm[SKY, VEG] / 100, "mean_class_acc": 50.0,
                       "mIoU": 40.0}]).to_csv(base / t / "fcn.csv", index=False)
    for uda, tr, miou in (("source_only", "none", 20.0), ("source_only", "semst", 25.0), ("oracle", "none", 60.0)):
        pd.DataFrame([{"pair": "minicity", "uda": uda, "translator": tr, "round": 0, "road": miou, "sky": miou + 5,
                       "mIoU": miou, "best": True}]).to_csv(workdir / "results" / f"minicity_{uda}_{tr}.csv", index=False)
    res = snakemake(workdir, "results/minicity_translation_table.csv", "results/minicity_uda_table.csv",
                    "--allowed-rules", "translation_distortion", "translation_table", "uda_table")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    table = pd.read_csv(workdir / "results" / "minicity_translation_table.csv")
    assert table["translator"].tolist() == ["none", "cut", "semst"]
    cut, semst = table.set_index("translator").loc["cut"], table.set_index("translator").loc["semst"]
    assert cut["sky_top"] == "sky->vegetation" and cut["sky_top_pp"] == pytest.approx(25.0)
    assert semst["sky_top_pp"] == pytest.approx(4.0) and semst["flow_2"] == "road->car"
    assert table.loc[0, "distortion_vs"] == "(reference)" and "FID" not in table
    for t in ("cut", "semst"):
        assert (workdir / "results" / "plots" / "minicity" / "translation" / f"{t}_distortion.png").stat().st_size > 1000
    pub = pd.read_csv(workdir / "results" / "minicity_translation_published.csv")
    assert pub["caveat"].str.contains("another dataset").all() and "semst" in set(pub["translator"])
    uda = pd.read_csv(workdir / "results" / "minicity_uda_table.csv")
    assert list(zip(uda["uda"], uda["translator"])) == [("source_only", "none"), ("source_only", "semst"),
                                                         ("oracle", "none")]
    assert uda["mIoU"].tolist() == [20.0, 25.0, 60.0] and "mIoU16" not in uda
    log = (workdir / "logs" / "minicity" / "tables" / "uda_table.log").read_text()
    assert "proda" in log and "planned" in log
    upub = pd.read_csv(workdir / "results" / "minicity_uda_published.csv")
    assert set(upub["task"]) == {"GTA5->Cityscapes"} and len(upub) == 6 + 7   # SemST Table 2 + LDR Table 1
    assert upub["gap_closed"].notna().all()   # every GTA5->Cityscapes row has its backbone's references
