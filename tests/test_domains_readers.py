"""Raw-dataset readers (domains/gta5.py, synthia.py, cityscapes.py, io.py) on hand-made files.

The builders below write a few 32x16 frames in each dataset's shipped layout; the prepare tests
import them too.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers import labels as cs_labels
from PIL import Image

from domains.cityscapes import Cityscapes
from domains.gta5 import GTA5
from domains.io import DatasetFormatError, RawSample, image_size, read_index_png
from domains.synthia import Synthia

W, H = 32, 16
CS_IDS = np.arange(34)
#: docs/reference.md §11.4 (DAFormer/BDL/ADVENT), written out independently of domains.labels
SYNTHIA_REF = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11,
               17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def cs_trainid(ids: np.ndarray) -> np.ndarray:
    """Expected trainIds straight from cityscapesscripts (255 for ignored ids)."""
    table = np.array([cs_labels.id2label[i].trainId for i in range(34)])
    table[(table < 0) | (table > 18)] = 255
    return table[ids].astype(np.uint8)


def synthia_trainid(ids: np.ndarray) -> np.ndarray:
    table = np.full(23, 255, dtype=np.uint8)
    for k, v in SYNTHIA_REF.items():
        table[k] = v
    return table[ids]


def write_rgb(path: Path, seed: int, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def decoy_palette() -> list[int]:
    """Palette whose colour for index i is grey (33 - i): read as colours it would give other ids."""
    pal = []
    for i in range(256):
        g = (33 - i) % 256
        pal += [g, g, g]
    return pal


def write_palette_label(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="P")
    img.putpalette(decoy_palette())
    img.save(path)


def random_ids(seed: int, values: np.ndarray, size: tuple[int, int] = (W, H)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.choice(values, (size[1], size[0]))
    ids.flat[: len(values)] = values  # every id occurs at least once
    return ids


def make_gta5(root: Path, n: int = 3) -> dict[str, np.ndarray]:
    """GTA5 layout; returns ``{stem: label ids}``."""
    out = {}
    for i in range(1, n + 1):
        stem = f"{i:05d}"
        write_rgb(root / "images" / f"{stem}.png", i)
        out[stem] = random_ids(i, CS_IDS)
        write_palette_label(root / "labels" / f"{stem}.png", out[stem])
    return out


def write_synthia_label(path: Path, ids: np.ndarray, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bgr = np.zeros(ids.shape + (3,), dtype=np.uint16)
    bgr[:, :, 2] = ids  # class id in R (cv2 is BGR)
    bgr[:, :, 1] = rng.integers(1000, 60000, ids.shape)  # instance ids: must not be read as classes
    assert cv2.imwrite(str(path), bgr)


def make_synthia(root: Path, n: int = 3) -> dict[str, np.ndarray]:
    out = {}
    for i in range(n):
        stem = f"{i:07d}"
        write_rgb(root / "RGB" / f"{stem}.png", 100 + i)
        out[stem] = random_ids(100 + i, np.arange(23))
        write_synthia_label(root / "GT" / "LABELS" / f"{stem}.png", out[stem], seed=i)
    return out


def make_cityscapes(root: Path, splits: dict[str, dict[str, int]] | None = None,
                    gt_splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, dict[str, np.ndarray]]:
    """Cityscapes layout; returns ``{split: {stem: label ids}}`` (placeholder zeros for test)."""
    splits = splits or {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}, "test": {"berlin": 1}}
    out: dict[str, dict[str, np.ndarray]] = {}
    seed = 200
    for split, cities in splits.items():
        out[split] = {}
        for city, count in cities.items():
            for k in range(count):
                seed += 1
                name = f"{city}_{k:06d}_{19 + k:06d}"
                write_rgb(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", seed)
                ids = np.zeros((H, W), dtype=np.uint8) if split == "test" else random_ids(seed, CS_IDS)
                out[split][f"{city}/{name}"] = ids
                if split in gt_splits:
                    path = root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)
                    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(str(path).replace("labelIds", "color"))
    return out


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- id mappings --------------------------------------------------------------------------------

def test_gta5_reader_maps_cityscapes_ids(tmp_path):
    truth = make_gta5(tmp_path / "gta5")
    reader = GTA5(tmp_path / "gta5")
    samples = reader.samples("train")
    assert reader.splits() == ["train"] and [s.stem for s in samples] == sorted(truth)
    assert list(reader) == samples and isinstance(samples[0], RawSample)
    stem, image, label = samples[0]
    assert image == tmp_path / "gta5" / "images" / f"{stem}.png" and reader.image_dir("train") / f"{stem}.png" == image
    out = reader.read_label(label)
    assert out.dtype == np.uint8 and out.shape == (H, W)
    np.testing.assert_array_equal(out, cs_trainid(truth[stem]))
    assert set(np.unique(out)) == set(range(19)) | {255}


def test_gta5_palette_labels_keep_ids_not_colours(tmp_path):
    ids = random_ids(5, CS_IDS)
    path = tmp_path / "l.png"
    write_palette_label(path, ids)
    # read as colours (what cv2 does) the grey levels are 33 - id: a different, valid id map
    as_colour = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, 0]
    np.testing.assert_array_equal(as_colour, 33 - ids)
    np.testing.assert_array_equal(read_index_png(path), ids)
    np.testing.assert_array_equal(GTA5(tmp_path).read_label(path), cs_trainid(ids))


def test_synthia_reader_uses_r_channel_and_table(tmp_path):
    truth = make_synthia(tmp_path / "syn")
    reader = Synthia(tmp_path / "syn")
    samples = reader.samples("train")
    assert [s.stem for s in samples] == sorted(truth)
    for stem, _, label in samples:
        np.testing.assert_array_equal(reader.read_label(label), synthia_trainid(truth[stem]))
    # the table the reader uses is the one of docs/reference.md §11.4
    assert {i: int(reader.lut[i]) for i in range(23) if reader.lut[i] != 255} == SYNTHIA_REF


def test_cityscapes_reader_splits_stems_and_ids(tmp_path):
    truth = make_cityscapes(tmp_path / "cs")
    reader = Cityscapes(tmp_path / "cs")
    assert reader.splits() == ["test", "train", "val"]
    assert reader.is_labelled("train") and reader.is_labelled("val")
    assert not reader.is_labelled("test")  # gtFine/test exists but holds placeholders
    train = reader.samples("train")
    assert [s.stem for s in train] == sorted(truth["train"])
    stem, image, label = train[0]
    assert stem == "aachen/aachen_000000_000019"
    assert image == reader.image_dir("train") / f"{stem}_leftImg8bit.png"
    assert label.name == "aachen_000000_000019_gtFine_labelIds.png"  # not the _color file
    np.testing.assert_array_equal(reader.read_label(label), cs_trainid(truth["train"][stem]))
    assert all(s.label is None for s in reader.samples("test"))


def test_cityscapes_split_without_gtfine_is_unlabelled(tmp_path):
    make_cityscapes(tmp_path / "cs", {"train": {"ulm": 1}, "val": {"lindau": 1}}, gt_splits=("val",))
    reader = Cityscapes(tmp_path / "cs")
    assert not reader.is_labelled("train") and reader.is_labelled("val")
    assert reader.samples("train")[0].label is None


# --- bad input: one clear error naming the file ---------------------------------------------------

@pytest.mark.parametrize("cls,make,missing,expect", [
    (GTA5, make_gta5, "labels", "labels/00001.png"),
    (Synthia, make_synthia, "GT/LABELS", "GT/LABELS/0000000.png"),
    (Cityscapes, make_cityscapes, "leftImg8bit", "leftImg8bit/<split>"),
])
def test_missing_folder_names_the_expected_layout(tmp_path, cls, make, missing, expect):
    root = tmp_path / "raw"
    make(root)
    for p in sorted((root / missing).rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (root / missing).rmdir()
    with pytest.raises(DatasetFormatError) as err:
        reader = cls(root)
        reader.samples(reader.splits()[0])
    assert str(root / missing) in str(err.value) and expect in str(err.value)


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(DatasetFormatError, match="root folder not found"):
        GTA5(tmp_path / "nope")


def test_missing_and_extra_labels(tmp_path):
    make_gta5(tmp_path / "g", n=4)
    (tmp_path / "g" / "labels" / "00002.png").unlink()
    write_palette_label(tmp_path / "g" / "labels" / "00009.png", np.zeros((H, W)))
    with pytest.raises(DatasetFormatError) as err:
        GTA5(tmp_path / "g").samples("train")
    msg = str(err.value)
    assert "images/00002.png" in msg and "labels/00009.png" in msg and "--skip-missing" in msg
    assert err.value.path == tmp_path.absolute() / "g" / "images" / "00002.png"
    kept = GTA5(tmp_path / "g", skip_missing=True).samples("train")
    assert [s.stem for s in kept] == ["00001", "00003", "00004"]


def test_cityscapes_missing_label_named(tmp_path):
    make_cityscapes(tmp_path / "cs")
    (tmp_path / "cs/gtFine/val/frankfurt/frankfurt_000001_000020_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetFormatError, match="frankfurt_000001_000020_leftImg8bit.png"):
        Cityscapes(tmp_path / "cs").samples("val")
    assert len(Cityscapes(tmp_path / "cs").samples("train")) == 3  # other splits unaffected


@pytest.mark.parametrize("corrupt", ["truncate", "text"])
def test_broken_label_files(tmp_path, corrupt):
    make_gta5(tmp_path / "g", n=1)
    make_synthia(tmp_path / "s", n=1)
    for reader, path in [(GTA5(tmp_path / "g"), tmp_path / "g/labels/00001.png"),
                         (Synthia(tmp_path / "s"), tmp_path / "s/GT/LABELS/0000000.png")]:
        truncate(path) if corrupt == "truncate" else path.write_text("not an image")
        with pytest.raises(DatasetFormatError) as err:
            reader.read_label(path)
        assert str(path.absolute()) in str(err.value)
        assert ("truncated or corrupt" if corrupt == "truncate" else "not a PNG") in str(err.value)


def test_broken_image_detected(tmp_path):
    write_rgb(tmp_path / "a.png", 0)
    assert image_size(tmp_path / "a.png") == (W, H)
    truncate(tmp_path / "a.png")
    with pytest.raises(DatasetFormatError, match="a.png: is truncated or corrupt"):
        image_size(tmp_path / "a.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "b.png", format="JPEG")
    with pytest.raises(DatasetFormatError, match="b.png: is not a PNG"):
        image_size(tmp_path / "b.png")


def test_gta5_rgb_label_rejected(tmp_path):
    write_rgb(tmp_path / "lab.png", 1)
    with pytest.raises(DatasetFormatError, match="'RGB' image, expected a single-channel"):
        GTA5(tmp_path).read_label(tmp_path / "lab.png")


def test_ids_outside_table_listed(tmp_path):
    ids = random_ids(1, CS_IDS)
    ids[0, :3] = [40, 34, 40]
    write_palette_label(tmp_path / "g.png", ids)
    with pytest.raises(DatasetFormatError, match=r"g.png: holds label ids \[34, 40\] that are not in the Cityscapes/GTA5"):
        GTA5(tmp_path).read_label(tmp_path / "g.png")
    lenient = GTA5(tmp_path, unknown_ids="ignore").read_label(tmp_path / "g.png")
    assert (lenient[0, :3] == 255).all()
    np.testing.assert_array_equal(lenient[1:], cs_trainid(ids[1:]))

    syn = np.full((H, W), 3)
    syn[2, 2] = 23
    write_synthia_label(tmp_path / "s.png", syn)
    with pytest.raises(DatasetFormatError, match=r"holds label ids \[23\] that are not in the SYNTHIA"):
        Synthia(tmp_path).read_label(tmp_path / "s.png")


@pytest.mark.parametrize("arr", [np.full((H, W, 3), 3, np.uint8), np.full((H, W), 3, np.uint16)],
                         ids=["8bit", "1channel"])
def test_synthia_label_must_be_16bit_multichannel(tmp_path, arr):
    cv2.imwrite(str(tmp_path / "s.png"), arr)
    with pytest.raises(DatasetFormatError, match="s.png: is not a 16-bit multi-channel label PNG"):
        Synthia(tmp_path).read_label(tmp_path / "s.png")


def test_unknown_split_is_an_error(tmp_path):
    make_gta5(tmp_path / "g", n=1)
    with pytest.raises(DatasetFormatError, match="has no split 'val' \\(found: train\\)"):
        GTA5(tmp_path / "g").samples("val")


def test_error_pickles_across_processes():
    import pickle
    err = DatasetFormatError(Path("/x/y.png"), "is broken", "fix it")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "/x/y.png: is broken; fix it" and back.path == err.path
