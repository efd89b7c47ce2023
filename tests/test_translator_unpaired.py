"""Unpaired folder datasets (CycleGAN/CUT layout: trainA/trainB/testA/testB, e.g. horse2zebra, maps).

A tiny maps-like root is written with paired test files (``testA/<i>_A.png`` photo,
``testB/<i>_B.png`` map); CUT trains on it through ``--unpaired-root`` and through the explicit
folders, the trained model refines testA, and the Photo->Map metrics score the refined images
against testB (matched by stem after stripping the _A/_B suffixes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from translators.__main__ import main as translators_main
from translators.data import DataError, open_domain, unpaired_dirs
from translators.metrics.__main__ import main as metrics_main

REPO = Path(__file__).resolve().parents[1]
CUT_TINY = str(REPO / "translators" / "configs" / "cut_tiny.yaml")


def _write(folder: Path, names: list[str], seed: int, tint: tuple[int, int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        img = np.clip(np.array(tint) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / name)


@pytest.fixture(scope="module")
def maps_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("maps")
    _write(root / "trainA", [f"{i}_A.jpg" for i in range(4)], 0, (90, 110, 80))
    _write(root / "trainB", [f"{i}_B.jpg" for i in range(4)], 1, (230, 225, 215))
    _write(root / "testA", [f"{i}_A.png" for i in range(3)], 2, (90, 110, 80))
    _write(root / "testB", [f"{i}_B.png" for i in range(3)], 3, (230, 225, 215))
    return root


def test_unpaired_dirs_and_clear_errors(maps_root, tmp_path):
    a, b = unpaired_dirs(maps_root)
    assert (a.name, b.name) == ("trainA", "trainB")
    assert [it.stem for it in open_domain(a).items] == ["0_A", "1_A", "2_A", "3_A"]
    assert unpaired_dirs(maps_root, "test")[1].name == "testB"
    (tmp_path / "trainA").mkdir()
    with pytest.raises(DataError, match=r"lacks trainB .*has: trainA"):
        unpaired_dirs(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        unpaired_dirs(tmp_path / "nowhere")
    with pytest.raises(DataError, match="phase"):
        unpaired_dirs(maps_root, "val")


def test_cli_refuses_missing_folders_and_mixed_flags(maps_root, tmp_path, caplog):
    (tmp_path / "trainA").mkdir()
    assert translators_main(["train", "--config", CUT_TINY, "--unpaired-root", str(tmp_path), "--out",
                             str(tmp_path / "run")]) == 2
    assert "lacks trainB" in caplog.text
    assert translators_main(["train", "--config", CUT_TINY, "--unpaired-root", str(maps_root), "--source",
                             str(maps_root / "trainA"), "--out", str(tmp_path / "run")]) == 2
    assert translators_main(["train", "--config", CUT_TINY, "--source", str(maps_root / "trainA"), "--out",
                             str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run" / "final.pt").exists()


def test_train_on_unpaired_root_refine_test_split_and_score_maps(maps_root, tmp_path):
    run = tmp_path / "run"
    common = ["--config", CUT_TINY, "--iters", "2", "--no-progress", "--cfg-options", "train.sample_every=1000",
              "--device", "cpu"]
    assert translators_main(["train", "--unpaired-root", str(maps_root), "--out", str(run), *common]) == 0
    assert (run / "final.pt").is_file()
    # the explicit folder form is the same data
    folders = tmp_path / "run_folders"
    assert translators_main(["train", "--source", str(maps_root / "trainA"), "--target", str(maps_root / "trainB"),
                             "--out", str(folders), *common]) == 0
    assert (folders / "final.pt").is_file()
    refined = tmp_path / "refined"
    assert translators_main(["refine", "--checkpoint", str(run / "final.pt"), "--source", str(maps_root / "testA"),
                             "--out", str(refined), "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in refined.glob("*.png")) == ["0_A.png", "1_A.png", "2_A.png"]
    out = tmp_path / "maps.csv"
    assert metrics_main(["maps", "--pred-dir", str(refined), "--gt-dir", str(maps_root / "testB"), "--pred-suffix",
                         "_A", "--gt-suffix", "_B", "--out", str(out), "--translator", "cut"]) == 0
    row = pd.read_csv(out).iloc[0]
    assert row["n_images"] == 3 and row["RMSE"] > 0 and 0 <= row["acc@5"] <= row["acc@10"] <= 100
    # ground truth against itself: perfect scores (the pairing is by stem, not by order)
    assert metrics_main(["maps", "--pred-dir", str(maps_root / "testB"), "--gt-dir", str(maps_root / "testB"),
                         "--out", str(tmp_path / "self.csv")]) == 0
    same = pd.read_csv(tmp_path / "self.csv").iloc[0]
    assert same["RMSE"] == 0 and same["acc@5"] == 100
