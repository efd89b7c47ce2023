"""Known pretrained weight files: one registry, one cache folder, ``resolve`` and a fetch CLI.

Every stage that loads pretrained weights (segmenter init, LDR's perceptual VGG19, FID's
Inception) names them through :data:`REGISTRY` or by path, and :func:`resolve` turns that spec
into a file or raises :class:`MissingWeightsError` with the file, its URL, the config key to set
to a local copy and the fetch command, so an offline machine learns at start-up what to copy.

::

    python -m domains.weights list                  # name, file, present/missing, path, URL
    python -m domains.weights fetch [NAME ...]      # download (machine with internet; all by default)

Cache folder: ``$SEMST_WEIGHTS_DIR`` when set, else ``torch.hub.get_dir()/checkpoints`` (the folder
torch and mmengine download model files into; it follows ``$TORCH_HOME``). Downloads use torch's
``download_url_to_file`` with the SHA-256 prefix the file name carries, into a temporary name in
the cache folder that is renamed on success, so a file under its final name is always complete.
See docs/weights.md.

This module imports torch only inside functions (``domains`` stays light).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

logger = logging.getLogger(__name__)

#: environment variable that overrides the cache folder
WEIGHTS_DIR_ENV = "SEMST_WEIGHTS_DIR"
FETCH_COMMAND = "python -m domains.weights fetch"


@dataclass(frozen=True)
class WeightFile:
    """One known weight file: where it comes from and what it initialises.

    ``hash_prefix`` is the SHA-256 prefix carried in the file name (torch hub / OpenMMLab
    convention), checked on download; None when the name carries none.
    """

    name: str
    filename: str
    url: str
    initialises: str
    config_key: str
    hash_prefix: str | None = None


def _registry(*entries: WeightFile) -> Mapping[str, WeightFile]:
    return MappingProxyType({e.name: e for e in entries})


#: name -> weight file (read-only); docs/weights.md describes each entry
REGISTRY: Mapping[str, WeightFile] = _registry(
    WeightFile("resnet101_v1c", "resnet101_v1c-e67eebb6.pth",
               "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
               "DeepLab-V2 ResNet-101 backbone (mmseg ResNetV1c, ImageNet; = open-mmlab://resnet101_v1c)",
               "init_from", "e67eebb6"),
    WeightFile("vgg16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
               "FCN-8s VGG16 backbone (torchvision ImageNet VGG16; classifier.0/3 become fc6/fc7)",
               "init_from", "397923af"),
    WeightFile("vgg19", "vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
               "LDR perceptual loss (torchvision ImageNet VGG19 features up to relu5_1)",
               "uda.vgg19_weights", "dcbb9e9d"),
    WeightFile("pt_inception", "pt_inception-2015-12-05-6726825d.pth",
               "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth",
               "FID/KID Inception-V3 (pytorch-fid port of the TF FID graph, 1008-way fc)",
               "--inception-weights / $FID_INCEPTION_WEIGHTS", "6726825d"),
)


class WeightsError(RuntimeError):
    """A weights download or lookup failed; the message names the file and what to do."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A weights file is not where a registry name or path points (the message says how to get it)."""


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The weights cache folder: ``$SEMST_WEIGHTS_DIR`` or ``torch.hub.get_dir()/checkpoints``."""
    env = os.environ if env is None else env
    override = env.get(WEIGHTS_DIR_ENV)
    if override:
        return Path(override).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(entry: WeightFile, folder: Path | None = None) -> Path:
    """Where ``entry`` lives in the cache folder (whether or not it is there)."""
    return (folder if folder is not None else cache_dir()) / entry.filename


def get_entry(name: str, registry: Mapping[str, WeightFile] = REGISTRY) -> WeightFile:
    """The registry entry ``name``; :class:`WeightsError` listing the known names otherwise."""
    if name not in registry:
        raise WeightsError(f"unknown weights name {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]


def entry_for_file(path: str | os.PathLike, registry: Mapping[str, WeightFile] = REGISTRY) -> WeightFile | None:
    """The registry entry whose file name ``path`` has, if any (for hints about re-fetching)."""
    name = Path(path).name
    return next((e for e in registry.values() if e.filename == name), None)


def _key_label(config_key: str) -> str:
    """``config key init_from`` for a config key; a command-line option (``--x``) as it is."""
    return config_key if config_key.startswith("-") else f"config key {config_key}"


def _how_to_get(entry: WeightFile, config_key: str, folder: Path) -> str:
    return (f"on a machine with internet run `{FETCH_COMMAND} {entry.name}` (or download {entry.url}) and copy "
            f"{entry.filename} into {folder} (the cache folder; ${WEIGHTS_DIR_ENV} overrides it), or set "
            f"{_key_label(config_key)} to the path of a local copy")


def resolve(spec: str | os.PathLike, config_key: str, registry: Mapping[str, WeightFile] = REGISTRY,
            folder: Path | None = None, hint: str = "") -> Path:
    """``spec`` as an existing file: a registry name -> its cached file, anything else -> that path.

    Raises :class:`MissingWeightsError` (one line: the file, the URL, ``config_key`` and the fetch
    command; ``hint`` is appended, e.g. how to turn the feature off) when the file is not there.
    """
    text = os.fspath(spec)
    if not text:
        raise MissingWeightsError(f"{_key_label(config_key)} is empty; give a registry name "
                                  f"({', '.join(sorted(registry))}) or a file path")
    if text in registry:
        entry = registry[text]
        folder = cache_dir() if folder is None else folder
        path = cached_path(entry, folder)
        if not path.is_file():
            raise MissingWeightsError(f"{config_key} = {text!r}: weights file {path} is missing ({entry.initialises}); "
                                      f"{_how_to_get(entry, config_key, folder)}{hint}")
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    entry = entry_for_file(path, registry)
    how = (_how_to_get(entry, config_key, cache_dir() if folder is None else folder) if entry is not None
           else f"set {_key_label(config_key)} to an existing file or to a registry name "
                f"({', '.join(sorted(registry))}; `{FETCH_COMMAND}` downloads them)")
    raise MissingWeightsError(f"{config_key} = {text!r}: weights file {path} not found; {how}{hint}")


def fetch(entry: WeightFile, folder: Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Download ``entry`` into the cache folder (atomic: temporary name, SHA-256 prefix checked, rename).

    An existing file is kept unless ``force``. Raises :class:`WeightsError` naming the URL on a
    failed download or a hash mismatch; nothing is left under the final name or the temporary one.
    """
    from torch.hub import download_url_to_file

    from domains.io import atomic_path

    folder = cache_dir() if folder is None else folder
    dst = cached_path(entry, folder)
    if dst.is_file() and not force:
        logger.info("%s: %s already present", entry.name, dst)
        return dst
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(dst) as tmp:
            download_url_to_file(entry.url, str(tmp), hash_prefix=entry.hash_prefix, progress=progress)
    except (OSError, RuntimeError, ValueError) as err:
        raise WeightsError(f"{entry.name}: download of {entry.url} to {dst} failed ({err})") from err
    logger.info("%s: wrote %s (%d bytes)", entry.name, dst, dst.stat().st_size)
    return dst


def list_rows(registry: Mapping[str, WeightFile] = REGISTRY, folder: Path | None = None) -> list[dict[str, str]]:
    """One row per entry: name, file, present/missing, path, URL, what it initialises."""
    folder = cache_dir() if folder is None else folder
    rows = []
    for entry in registry.values():
        path = cached_path(entry, folder)
        rows.append(dict(name=entry.name, file=entry.filename, status="present" if path.is_file() else "missing",
                         path=str(path), url=entry.url, initialises=entry.initialises))
    return rows


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domains.weights",
                                description="Pretrained weight files: list the registry, fetch into the cache "
                                            f"(${WEIGHTS_DIR_ENV} or torch.hub.get_dir()/checkpoints).")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name, file, present/missing, path, URL of every known weights file")
    f = sub.add_parser("fetch", help="download weights files into the cache folder (needs internet)")
    f.add_argument("names", nargs="*", metavar="NAME", help="registry names (default: all)")
    f.add_argument("--force", action="store_true", help="download again even when the file is present")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _print_list(registry: Mapping[str, WeightFile]) -> None:
    rows = list_rows(registry)
    print(f"cache folder: {cache_dir()}")
    for row in rows:
        print(f"{row['name']:<14} {row['status']:<8} {row['file']}")
        print(f"{'':<14} path {row['path']}")
        print(f"{'':<14} url  {row['url']}")
        print(f"{'':<14} for  {row['initialises']}")


def main(argv: Sequence[str] | None = None, registry: Mapping[str, WeightFile] | None = None) -> int:
    """CLI entry point; bad input or a failed download is one line on stderr and exit code 2."""
    registry = REGISTRY if registry is None else registry
    args = _build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    if args.command == "list":
        _print_list(registry)
        return 0
    try:
        entries = [get_entry(n, registry) for n in (args.names or list(registry))]
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for entry in entries:                 # one failure does not stop the others
        try:
            print(f"{entry.name}: {fetch(entry, force=args.force, progress=not args.no_progress)}")
        except WeightsError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


__all__ = ["REGISTRY", "WEIGHTS_DIR_ENV", "FETCH_COMMAND", "WeightFile", "WeightsError", "MissingWeightsError",
           "cache_dir", "cached_path", "entry_for_file", "fetch", "get_entry", "list_rows", "main", "resolve"]

if __name__ == "__main__":
    sys.exit(main())
