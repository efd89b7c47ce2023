"""``python -m domains prepare``: output contract, atomic replacement, errors and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domains.__main__ import main
from domains.io import DatasetFormatError
from domains.prepare import prepare
from domains.prepared import PreparedDataset
from test_domains_readers import (H, W, cs_trainid, make_cityscapes, make_gta5, make_synthia, synthia_trainid,
                                  truncate, write_palette_label, write_rgb)

ROOT = Path(__file__).resolve().parents[1]


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(out.name + ".*"))


def check_contract(ds: PreparedDataset, split: str, truth: dict[str, np.ndarray], to_train) -> None:
    """Labels, split list, meta and class stats of ``split`` agree with the hand-made truth."""
    samples = ds.samples(split)
    assert [s.stem for s in samples] == sorted(truth)
    assert ds.image_dir(split).is_absolute() and ds.meta["splits"][split]["count"] == len(truth)
    pixels = np.zeros(256, dtype=np.int64)
    for s in samples:
        assert s.image.is_file() and s.label.is_file()
        with Image.open(s.label) as img:
            assert img.mode == "L"
            lab = np.asarray(img)
        assert lab.dtype == np.uint8
        np.testing.assert_array_equal(lab, to_train(truth[s.stem]))
        pixels += np.bincount(lab.ravel(), minlength=256)
    stats = ds.class_stats()[split]
    assert stats["pixels"] == pixels[:19].tolist() and stats["ignored"] == int(pixels[255])
    np.testing.assert_allclose(stats["fractions"], pixels[:19] / pixels[:19].sum())


def test_prepare_gta5_contract(tmp_path):
    truth = make_gta5(tmp_path / "raw")
    out = tmp_path / "prepared" / "gta5"
    ds = prepare("gta5", tmp_path / "raw", out, workers=1)
    assert ds.root == out and ds.name == "gta5" and ds.splits == ["train"] and ds.is_labelled("train")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["raw_root"] == str((tmp_path / "raw").absolute()) and meta["num_classes"] == 19
    assert meta["splits"]["train"]["image_dir"] == str((tmp_path / "raw" / "images").absolute())
    assert (out / "train.txt").read_text() == "00001\n00002\n00003\n"
    check_contract(PreparedDataset.load(out), "train", truth, cs_trainid)
    assert leftovers(out) == []


def test_prepare_synthia_contract(tmp_path):
    truth = make_synthia(tmp_path / "raw", n=2)
    ds = prepare("synthia", tmp_path / "raw", tmp_path / "syn", workers=1)
    assert ds.img_suffix("train") == ".png" and ds.image_dir("train") == (tmp_path / "raw" / "RGB").absolute()
    check_contract(ds, "train", truth, synthia_trainid)


def test_prepare_cityscapes_with_pool(tmp_path):
    truth = make_cityscapes(tmp_path / "raw", {"train": {"aachen": 3, "bochum": 2}, "val": {"lindau": 2},
                                               "test": {"berlin": 2}})
    out = tmp_path / "cs"
    ds = prepare("cityscapes", tmp_path / "raw", out, workers=2)
    assert ds.splits == ["test", "train", "val"]
    for split in ("train", "val"):
        check_contract(ds, split, truth[split], cs_trainid)
    assert ds.samples("train")[0].stem == "aachen/aachen_000000_000019"
    assert ds.samples("train")[0].image.name == "aachen_000000_000019_leftImg8bit.png"
    assert (out / "labels/train/aachen/aachen_000000_000019_labelTrainIds.png").is_file()
    assert not ds.is_labelled("test") and all(s.label is None for s in ds.samples("test"))
    assert not (out / "labels" / "test").exists() and set(ds.class_stats()) == {"train", "val"}
    only = prepare("cityscapes", tmp_path / "raw", tmp_path / "cs_val", splits=["val"], workers=1)
    assert only.splits == ["val"]


def test_skip_missing_writes_only_pairs(tmp_path):
    make_gta5(tmp_path / "raw", n=3)
    (tmp_path / "raw/images/00002.png").unlink()
    with pytest.raises(DatasetFormatError, match="labels/00002.png"):
        prepare("gta5", tmp_path / "raw", tmp_path / "out", workers=1)
    ds = prepare("gta5", tmp_path / "raw", tmp_path / "out", workers=1, skip_missing=True)
    assert ds.stems("train") == ["00001", "00003"]


def _size_mismatch(raw):
    write_rgb(raw / "images/00002.png", 7, size=(W + 2, H))
    return "labels/00002.png: is 32x16 but its image"


def _truncated_image(raw):
    truncate(raw / "images/00003.png")
    return "images/00003.png: is truncated or corrupt"


def _truncated_label(raw):
    truncate(raw / "labels/00001.png")
    return "labels/00001.png: is truncated or corrupt"


def _bad_ids(raw):
    ids = np.full((H, W), 7)
    ids[0, 0] = 99
    write_palette_label(raw / "labels/00003.png", ids)
    return r"labels/00003.png: holds label ids \[99\]"


def _empty(raw):
    for p in list((raw / "images").iterdir()) + list((raw / "labels").iterdir()):
        p.unlink()
    return "images: gta5 split 'train' has no images"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("breakage", [_size_mismatch, _truncated_image, _truncated_label, _bad_ids, _empty])
def test_bad_input_fails_cleanly(tmp_path, breakage, workers):
    make_gta5(tmp_path / "raw")
    expected = breakage(tmp_path / "raw")
    out = tmp_path / "prepared" / "gta5"
    with pytest.raises(DatasetFormatError, match=expected):
        prepare("gta5", tmp_path / "raw", out, workers=workers)
    assert not out.exists() and leftovers(out) == []  # nothing half-written, no tmp folder


def test_existing_output_survives_failure_and_is_replaced_on_success(tmp_path):
    raw = tmp_path / "raw"
    make_gta5(raw, n=2)
    out = tmp_path / "gta5"
    prepare("gta5", raw, out, workers=1)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    truncate(raw / "labels/00002.png")
    with pytest.raises(DatasetFormatError):
        prepare("gta5", raw, out, workers=1)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert leftovers(out) == []
    make_gta5(raw, n=3)  # repaired and one frame more
    assert prepare("gta5", raw, out, workers=1).stems("train") == ["00001", "00002", "00003"]
    assert leftovers(out) == []


def test_foreign_output_folder_is_not_replaced(tmp_path):
    make_gta5(tmp_path / "raw", n=1)
    (tmp_path / "prepared" / "synthia").mkdir(parents=True)  # --out data/prepared by mistake
    with pytest.raises(DatasetFormatError, match="prepared: exists, is not empty and has no meta.json"):
        prepare("gta5", tmp_path / "raw", tmp_path / "prepared", workers=1)
    assert (tmp_path / "prepared" / "synthia").is_dir()


def test_stale_tmp_of_killed_run_is_cleaned(tmp_path):
    make_gta5(tmp_path / "raw", n=1)
    out = tmp_path / "gta5"
    stale = tmp_path / "gta5.tmp-999999999"  # no such pid: a killed run's leftover
    (stale / "labels").mkdir(parents=True)
    (stale / "meta.json").write_text("{}")
    live = tmp_path / f"gta5.tmp-{os.getppid()}"  # a live process: another run, left alone
    live.mkdir()
    prepare("gta5", tmp_path / "raw", out, workers=1)
    assert not stale.exists() and live.exists() and (out / "meta.json").is_file()


def test_cli_success_and_error(tmp_path, capsys):
    make_synthia(tmp_path / "raw", n=1)
    out = tmp_path / "syn"
    assert main(["prepare", "--dataset", "synthia", "--raw", str(tmp_path / "raw"), "--out", str(out),
                 "--workers", "1"]) == 0
    assert PreparedDataset.load(out).stems("train") == ["0000000"]
    assert main(["prepare", "--dataset", "gta5", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert f"error: {(tmp_path / 'raw' / 'images').absolute()}: folder not found" in err and "<root>/images/00001.png" in err


def test_cli_subprocess_exit_code_without_traceback(tmp_path):
    raw = tmp_path / "raw"
    make_cityscapes(raw, {"train": {"ulm": 1}})
    (raw / "leftImg8bit/train/ulm").rename(tmp_path / "elsewhere")
    (raw / "leftImg8bit/train").rmdir()
    (raw / "leftImg8bit").rmdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "domains", "prepare", "--dataset", "cityscapes", "--raw", str(raw),
                           "--out", str(tmp_path / "cs")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{raw / 'leftImg8bit'}: folder not found" in proc.stderr and "_leftImg8bit.png" in proc.stderr
    assert not (tmp_path / "cs").exists()


# ---------------------------------------------------------------- atomic_path (domains.io)
def test_atomic_path_file_appears_only_complete(tmp_path):
    from domains.io import atomic_path

    path = tmp_path / "sub" / "result.csv"  # parents are created
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".result.csv.tmp-") and tmp != path
        tmp.write_text("half")
        assert not path.exists()  # nothing under the final name while writing
        with open(tmp, "a") as fh:
            fh.write(" and whole")
    assert path.read_text() == "half and whole" and sorted(p.name for p in path.parent.iterdir()) == ["result.csv"]
    with atomic_path(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "half and whole"  # the old file stays whole until the rename
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["result.csv"]


@pytest.mark.parametrize("where", ["block", "rename"])
def test_atomic_path_error_keeps_old_content_and_removes_tmp(tmp_path, monkeypatch, where):
    from domains import io as dio

    path = tmp_path / "table.csv"
    path.write_text("old")
    if where == "rename":
        monkeypatch.setattr(dio.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed (simulated)")))
    with pytest.raises((OSError, KeyboardInterrupt)):
        with dio.atomic_path(path) as tmp:
            tmp.write_text("partial")
            if where == "block":
                raise KeyboardInterrupt  # BaseException too, e.g. Ctrl-C
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_atomic_path_suffix_for_format_picking_writers(tmp_path):
    from domains.io import atomic_path

    with atomic_path(tmp_path / "c.confusion.npy") as tmp:
        assert tmp.name.endswith(".npy")
        np.save(tmp, np.eye(2))  # np.save adds .npy unless the name ends with it
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png"
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp)  # PIL picks the format from the suffix
    with atomic_path(tmp_path / "forced", suffix=".npy") as tmp:
        assert tmp.suffix == ".npy"
        np.save(tmp, np.ones(3))
    with atomic_path(tmp_path / "x.csv.gz", suffix="") as tmp:
        assert tmp.name.startswith(".x.csv.gz.tmp-") and not tmp.name.endswith(".gz")
        tmp.write_text("a\n")
    assert np.array_equal(np.load(tmp_path / "c.confusion.npy"), np.eye(2))
    assert np.array_equal(np.load(tmp_path / "forced"), np.ones(3))
    assert Image.open(tmp_path / "plot.png").format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.confusion.npy", "forced", "plot.png", "x.csv.gz"]


def test_atomic_path_fsync_only_when_asked(tmp_path, monkeypatch):
    from domains import io as dio

    synced = []
    monkeypatch.setattr(dio.os, "fsync", lambda fd: synced.append(fd))
    with dio.atomic_path(tmp_path / "a.pt") as tmp:
        tmp.write_bytes(b"x")
    assert synced == []
    with dio.atomic_path(tmp_path / "b.pt", fsync=True) as tmp:
        tmp.write_bytes(b"y")
    assert len(synced) == 1 and (tmp_path / "b.pt").read_bytes() == b"y"


def test_atomic_write_text_gets_umask_permissions(tmp_path):
    """A text output is readable as any other file is (mkstemp's 0600 hid meta.json on shared folders)."""
    import os
    from domains.io import atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "meta.json", "{}")
    finally:
        os.umask(umask)
    assert (tmp_path / "meta.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "meta.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]
