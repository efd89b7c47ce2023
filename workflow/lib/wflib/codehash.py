"""Content hash of the package sources a rule runs (docs/design.md §3.9).

Every rule puts ``code_hash(repo, [...packages])`` in its ``params``; Snakemake's default
``params`` rerun trigger then reruns a stage (and everything downstream) exactly when the code it
runs changed, never when an unrelated package changed. Only source-like files count (``.py``,
``.yaml``, ``.yml``, ``.json``, ``.txt``); caches and test folders are skipped.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Iterable

SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".txt")
SKIP_DIRS = {"__pycache__", "tests", ".pytest_cache", ".ipynb_checkpoints"}


def source_files(root: Path) -> list[Path]:
    """Source files under ``root`` (a package folder or a single file), sorted for a stable hash."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: package folder to hash does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(SOURCE_SUFFIXES) and not f.startswith("."))
    return sorted(found)


@functools.lru_cache(maxsize=None)
def _hash_one(root: str) -> str:
    digest = hashlib.sha256()
    base = Path(root)
    for path in source_files(base):
        rel = path.relative_to(base).as_posix() if base.is_dir() else path.name
        digest.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def code_hash(repo: str | os.PathLike, packages: Iterable[str]) -> str:
    """Short hash over the sources of ``packages`` (folders or files relative to ``repo``)."""
    digest = hashlib.sha256()
    for name in sorted(set(packages)):
        digest.update(name.encode() + b"=" + _hash_one(str(Path(repo) / name)).encode() + b";")
    return digest.hexdigest()[:16]
