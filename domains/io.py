"""Safe reading of dataset PNGs and atomic writing of files and folders.

Every reader failure becomes one :class:`DatasetFormatError` that names the file, says what is
wrong and what to do; PIL/cv2 exceptions and cv2's silent ``None`` never leak out.
Writers put data under a temporary sibling name and rename it when complete, so a crash or a
kill never leaves something half-written that looks finished.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
from collections.abc import Iterator
from typing import NamedTuple
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from domains.labels import IGNORE_INDEX, lookup_table

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: what to do when a single file is broken (shown after the problem)
REDOWNLOAD = "re-download or re-extract this file (or delete the pair and use --skip-missing)"


class DatasetFormatError(ValueError):
    """A raw dataset does not look as it ships: ``path`` is the offending file or folder."""

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str = "") -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(path, problem, fix)

    def __reduce__(self):  # picklable across multiprocessing workers
        return (type(self), (self.path, self.problem, self.fix))

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path is not None else ""
        return f"{where}{self.problem}" + (f"; {self.fix}" if self.fix else "")


def _check_png_signature(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(PNG_SIGNATURE))
    except OSError as err:
        raise DatasetFormatError(path, f"cannot be read ({err.strerror or err})", "check the path and its permissions") from err
    if head != PNG_SIGNATURE:
        raise DatasetFormatError(path, "is not a PNG file (wrong signature)", REDOWNLOAD)


def image_size(path: str | os.PathLike, verify: bool = True) -> tuple[int, int]:
    """(width, height) of a PNG image; with ``verify`` all chunk checksums are checked too.

    ``Image.verify`` reads every chunk and its CRC without decompressing pixels, so truncated or
    corrupted downloads are caught at a fraction of the cost of a full decode.
    """
    path = Path(path)
    _check_png_signature(path)
    try:
        with Image.open(path) as img:
            size = img.size
            if verify:
                img.verify()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DatasetFormatError(path, f"is truncated or corrupt ({err})", REDOWNLOAD) from err
    return size


def read_index_png(path: str | os.PathLike) -> np.ndarray:
    """Pixel indices (H, W) uint8 of a palette ('P') or greyscale ('L') PNG, read with PIL.

    For palette PNGs (GTA5 labels) the indices are the label ids; cv2 would return the
    palette colours instead, which is why this reads with PIL.
    """
    path = Path(path)
    _check_png_signature(path)
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in ("P", "L"):
                raise DatasetFormatError(
                    path, f"is a '{mode}' image, expected a single-channel label-id PNG (palette 'P' or greyscale 'L')",
                    "point --raw at the dataset's id labels, not its colour visualisations",
                )
            arr = np.asarray(img)  # 'P' -> palette indices, no colour conversion
    except DatasetFormatError:
        raise
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DatasetFormatError(path, f"is truncated or corrupt ({err})", REDOWNLOAD) from err
    return arr.astype(np.uint8, copy=False)


def read_png_unchanged(path: str | os.PathLike) -> np.ndarray:
    """A PNG as stored (bit depth and channels kept; BGR(A) order), read with cv2.

    Needed for SYNTHIA's 16-bit multi-channel labels, which PIL decodes lossily.
    """
    path = Path(path)
    _check_png_signature(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DatasetFormatError(path, "could not be decoded by OpenCV (truncated or corrupt PNG)", REDOWNLOAD)
    return arr


def map_ids(ids: np.ndarray, lut: np.ndarray, valid: np.ndarray, path: str | os.PathLike,
            table_name: str, unknown: str = "error") -> np.ndarray:
    """Map an unsigned id image through ``lut`` (vectorised): ``lut[ids]``.

    ``lut`` and ``valid`` (bool) cover the whole range of the id dtype (256 or 65536 entries).
    Ids with ``valid[id] == False`` are an error naming them; ``unknown='ignore'`` maps them
    to ``lut[id]`` (255) after a warning instead, for downloads known to carry stray ids.
    """
    if ids.dtype.kind != "u" or np.iinfo(ids.dtype).max >= len(lut) or len(valid) != len(lut):
        raise ValueError(f"{path}: ids of dtype {ids.dtype} need a lookup table of {np.iinfo(ids.dtype).max + 1} entries")
    present = np.flatnonzero(np.bincount(ids.ravel(), minlength=1))
    bad = present[~valid[present]]
    if bad.size:
        msg = f"holds label ids {bad.tolist()} that are not in the {table_name} id table"
        if unknown != "ignore":
            raise DatasetFormatError(
                path, msg, "check that --dataset matches the download; --unknown-ids ignore maps them to 255"
            )
        log.warning("%s: %s; mapping them to 255 (--unknown-ids ignore)", path, msg)
    return lut[ids]


def write_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write a uint8 (H, W) label map as a greyscale PNG (parents created)."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"label for {path} must be a 2-D uint8 array, got {label.dtype} {label.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label, mode="L").save(path)


#: numbers the temporary names of one process, so two threads never write to the same one
_tmp_numbers = itertools.count()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it is renamed over ``path`` when the block ends.

    Why: a reader (or Snakemake, which trusts that an output file is complete) must never see a
    half-written file under the final name, whatever kills the writer. The block must create the
    file at the yielded path; nothing else may write under that name.

    The temporary name is hidden and unique within the process: ``.<name>.tmp-<pid>-<n><suffix>``
    in the same folder (so the rename is atomic). ``suffix`` defaults to ``path``'s own suffix, for
    writers that pick a format from it or append one unless it is there (``np.save`` adds
    ``.npy``); pass e.g. ``".png"`` to fix the format, or ``""`` so that nothing is inferred (pandas
    would compress a ``.gz`` name). Parent folders are created. With ``fsync`` the data is flushed
    to disk before the rename, so a power cut leaves the old or the new file, never an empty one.
    On any error, in the block or in the rename, the temporary file is deleted and ``path`` keeps
    its old content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    end = path.suffix if suffix is None else suffix
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_tmp_numbers)}{end}")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``.

    The file gets the usual permissions (umask), like every other output; before it was built on
    :func:`atomic_path` it kept ``mkstemp``'s 0600, which hid e.g. a dataset's ``meta.json`` from
    other users of a shared cluster folder.
    """
    with atomic_path(path, suffix=".tmp") as tmp:
        tmp.write_text(text)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> None:
    """Delete ``<out>.tmp-<pid>`` / ``<out>.old-<pid>`` leftovers of runs that are no longer alive."""
    for tag in (".tmp-", ".old-"):
        for stale in out.parent.glob(f"{out.name}{tag}*"):
            suffix = stale.name[len(out.name) + len(tag):]
            if suffix.isdigit() and int(suffix) != os.getpid() and _pid_alive(int(suffix)):
                continue  # another live run is writing it
            log.info("removing leftover %s of an interrupted run", stale)
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder ``<out>.tmp-<pid>``; on success it becomes ``out``.

    With ``marker`` (a file name such as ``meta.json``) a non-empty existing ``out`` that lacks
    it is refused instead of replaced, so a mistyped ``--out`` never deletes unrelated data.

    An existing ``out`` is replaced only after the new folder is complete: old renamed away,
    new renamed in, old deleted. On any error the temporary folder is deleted and ``out``
    is left as it was. A SIGKILL leaves only ``*.tmp-<pid>``/``*.old-<pid>`` names, which
    the next run removes (:func:`clean_stale`).
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise DatasetFormatError(out, "exists and is not a folder", "choose another --out or remove the file")
    if marker and out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise DatasetFormatError(out, f"exists, is not empty and has no {marker}, so it is not an earlier output "
                                 "and will not be replaced", "choose another --out or remove the folder yourself")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.rename(old, out)  # put the previous complete output back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


# --- shared pieces of the raw-dataset readers (gta5.py, synthia.py, cityscapes.py) ----------------

class RawSample(NamedTuple):
    """One raw image and its raw label file (``label`` is None in unlabelled splits)."""

    stem: str
    image: Path
    label: Path | None


def require_dir(path: Path, layout: str) -> Path:
    """``path`` if it is a folder, else an error that shows the expected ``layout``."""
    if not path.is_dir():
        raise DatasetFormatError(path, "folder not found", f"expected the layout {layout}; check --raw")
    return path


def list_files(folder: Path, suffix: str, recursive: bool = False) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` whose names end with ``suffix``.

    The stem is the path relative to ``folder`` without ``suffix`` (it keeps sub-folders when
    ``recursive``); hidden files (``._x.png`` from macOS archives) are skipped.
    """
    pattern = f"**/*{suffix}" if recursive else f"*{suffix}"
    found = {}
    for path in folder.glob(pattern):
        if path.name.startswith(".") or not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        found[rel[: -len(suffix)]] = path
    return found


def pair_files(images: dict[str, Path], labels: dict[str, Path], skip_missing: bool, fix_hint: str) -> list[RawSample]:
    """Pair images and labels by stem, sorted by stem.

    An image without a label or a label without an image is an error listing them all (the
    first offending file is the error's path); with ``skip_missing`` they are logged and left out.
    """
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label or no_image:
        parts = []
        if no_label:
            parts.append(f"{len(no_label)} image(s) without a label ({_first(images, no_label)})")
        if no_image:
            parts.append(f"{len(no_image)} label(s) without an image ({_first(labels, no_image)})")
        problem = " and ".join(parts)
        if not skip_missing:
            first = images[no_label[0]] if no_label else labels[no_image[0]]
            raise DatasetFormatError(first, problem, f"{fix_hint}, or pass --skip-missing to leave them out")
        log.warning("skipping %s (--skip-missing)", problem)
    return [RawSample(stem, images[stem], labels[stem]) for stem in sorted(set(images) & set(labels))]


def _first(files: dict[str, Path], stems: list[str], n: int = 5) -> str:
    shown = ", ".join(str(files[s]) for s in stems[:n])
    return shown + (f", ... {len(stems) - n} more" if len(stems) > n else "")


class RawDataset:
    """Base of the raw-dataset readers: a dataset root as it ships, read split by split.

    Subclasses set ``name``, ``img_suffix``, ``table_name``, ``layout``, ``lut`` and ``valid``
    and implement :meth:`splits`, :meth:`image_dir`, :meth:`samples` and :meth:`read_ids`
    (``read_label`` maps ids to trainIds). Instances hold only paths and options, so they
    pickle cheaply into worker processes. Iterating yields every :class:`RawSample` of every split.
    """

    name: str = ""
    img_suffix: str = ".png"
    table_name: str = ""
    #: the expected on-disk layout, quoted in errors
    layout: str = ""
    #: id -> trainId lookup table and which ids the dataset may contain, over the id dtype's range
    lut: np.ndarray
    valid: np.ndarray

    def __init__(self, root: str | os.PathLike, skip_missing: bool = False, unknown_ids: str = "error") -> None:
        if unknown_ids not in ("error", "ignore"):
            raise ValueError(f"unknown_ids must be 'error' or 'ignore', got {unknown_ids!r}")
        self.root = Path(root).absolute()
        self.skip_missing = skip_missing
        self.unknown_ids = unknown_ids
        if not self.root.is_dir():
            raise DatasetFormatError(self.root, f"{self.name} root folder not found", f"expected the layout {self.layout}; check --raw")

    def splits(self) -> list[str]:
        raise NotImplementedError

    def is_labelled(self, split: str) -> bool:
        return True

    def image_dir(self, split: str) -> Path:
        raise NotImplementedError

    def samples(self, split: str) -> list[RawSample]:
        raise NotImplementedError

    def read_ids(self, path: Path) -> np.ndarray:
        """The raw label-id image of ``path`` (unsigned ints)."""
        raise NotImplementedError

    def read_label(self, path: str | os.PathLike) -> np.ndarray:
        """trainId map (H, W) uint8 (255 = ignore) of one raw label file."""
        path = Path(path)
        return map_ids(self.read_ids(path), self.lut, self.valid, path, self.table_name, self.unknown_ids)

    def _check_split(self, split: str) -> None:
        found = self.splits()
        if split not in found:
            raise DatasetFormatError(self.root, f"has no split '{split}' (found: {', '.join(found) or 'none'})",
                                     "choose --splits among those found")

    def __iter__(self) -> Iterator[RawSample]:
        for split in self.splits():
            yield from self.samples(split)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"


def id_tables(mapping: dict[int, int], valid_ids: frozenset[int] | set[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(lut, valid): ``lut[id]`` = trainId (255 elsewhere), ``valid[id]`` = id may occur."""
    lut = lookup_table(mapping, size=size, fill=IGNORE_INDEX)
    valid = np.zeros(size, dtype=bool)
    valid[sorted(valid_ids)] = True
    return lut, valid
