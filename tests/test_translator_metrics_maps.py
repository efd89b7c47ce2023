"""Photo->Map RMSE and acc@delta on hand-made images (docs/reference.md §11.6)."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from translators.metrics.__main__ import main as cli
from translators.metrics.maps import MapsInputError, maps_metrics, maps_metrics_arrays, pair_files


def _pair() -> tuple[np.ndarray, np.ndarray]:
    real = np.zeros((4, 4, 3), dtype=np.uint8) + 100
    fake = real.copy()
    fake[0, 0] = (103, 100, 100)   # max |d| 3  -> correct at 5 and 10
    fake[0, 1] = (105, 100, 100)   # max |d| 5  -> wrong at 5 (strict <), correct at 10
    fake[0, 2] = (96, 104, 96)     # max |d| 4  -> correct at both
    fake[0, 3] = (100, 90, 100)    # max |d| 10 -> wrong at both
    return fake, real


def test_hand_made_pair():
    fake, real = _pair()
    row = maps_metrics_arrays([(fake, real)])
    sq = 9 + 25 + (16 * 3) + 100
    assert row["RMSE"] == pytest.approx(math.sqrt(sq / 16))           # divided by pixels, not pixels x 3
    assert row["acc@5"] == pytest.approx(100 * 14 / 16)
    assert row["acc@10"] == pytest.approx(100 * 15 / 16)
    # two images: RMSE is the mean of per-image RMSEs, accuracy pools pixels over all images
    row2 = maps_metrics_arrays([(fake, real), (real, real)])
    assert row2["RMSE"] == pytest.approx(math.sqrt(sq / 16) / 2)
    assert row2["acc@5"] == pytest.approx(100 * 30 / 32) and row2["n_images"] == 2
    with pytest.raises(MapsInputError, match="sizes differ"):
        maps_metrics_arrays([(fake, real[:2])])


def _save(folder: Path, name: str, img: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(folder / name)


def test_folders_cli_and_suffix_matching(tmp_path):
    fake, real = _pair()
    _save(tmp_path / "pred", "1_fake_B.png", fake)
    _save(tmp_path / "pred", "2_fake_B.png", real)
    _save(tmp_path / "gt", "1.png", real)
    _save(tmp_path / "gt", "2.png", real)
    row = maps_metrics(tmp_path / "pred", tmp_path / "gt", size=None, pred_suffix="_fake_B")
    assert row["acc@5"] == pytest.approx(100 * 30 / 32) and row["n_images"] == 2
    out = tmp_path / "out" / "maps.csv"
    assert cli(["maps", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"), "--native",
                "--pred-suffix", "_fake_B", "--out", str(out), "--translator", "cut"]) == 0
    csv = pd.read_csv(out).iloc[0]
    assert csv["translator"] == "cut" and csv["RMSE"] == pytest.approx(row["RMSE"]) and csv["size"] == "native"
    with pytest.raises(MapsInputError, match=r"1 ground-truth image\(s\) without prediction.*'3'"):
        _save(tmp_path / "gt", "3.png", real)
        pair_files(tmp_path / "pred", tmp_path / "gt", pred_suffix="_fake_B")


def test_resize_to_256_and_size_mismatch(tmp_path, caplog):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    _save(tmp_path / "gt", "a.png", big)
    _save(tmp_path / "pred", "a.png", cv2.resize(big, (256, 256), interpolation=cv2.INTER_LINEAR))
    row = maps_metrics(tmp_path / "pred", tmp_path / "gt")   # GT resized bilinearly to 256 x 256, pred kept
    assert row["size"] == 256 and row["RMSE"] == 0 and row["acc@5"] == 100
    shifted = maps_metrics(tmp_path / "pred", tmp_path / "gt", size=128)
    assert shifted["RMSE"] > 0                               # 256 -> 128 and 300 -> 128 differ
    with pytest.raises(MapsInputError, match="size mismatch.*256x256.*300x300"):
        maps_metrics(tmp_path / "pred", tmp_path / "gt", size=None)
    assert cli(["maps", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt"), "--native",
                "--out", str(tmp_path / "x.csv")]) == 2
    assert "size mismatch" in caplog.text and not (tmp_path / "x.csv").exists()
