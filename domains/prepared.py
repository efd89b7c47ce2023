"""The prepared-dataset contract every later stage reads (docs/design.md §3.3).

``data/prepared/<name>/`` holds::

    meta.json                 {"dataset": "gta5"|"synthia"|"cityscapes", "raw_root": str,
                               "label_suffix": "_labelTrainIds.png", "num_classes": 19,
                               "splits": {"<split>": {"image_dir": str (absolute), "img_suffix": str,
                                                      "count": int, "labelled": bool}}}
    <split>.txt               one stem per line, relative to the split's image_dir
                              (Cityscapes stems keep the city folder: ``aachen/aachen_000000_000019``)
    labels/<split>/<stem><label_suffix>   uint8 trainId PNGs, 255 = ignore (labelled splits only)
    class_stats.json          {"<split>": {"pixels": [19 ints], "ignored": int, "fractions": [19 floats]}}
                              (labelled splits only; fractions exclude ignored pixels)

Images stay where the dataset ships them; only labels are converted. A refined source set
(``data/refined/...``) reuses the stems, so ``image_path(stem, image_dir=refined)`` finds it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

META = "meta.json"
CLASS_STATS = "class_stats.json"


class PreparedDataError(RuntimeError):
    """A prepared dataset folder is missing or inconsistent; the message names the path."""


@dataclass(frozen=True)
class Sample:
    """One image of a prepared split; ``label`` is None for unlabelled splits."""

    stem: str
    image: Path
    label: Path | None


@dataclass(frozen=True)
class PreparedDataset:
    """Read access to one ``data/prepared/<name>/`` folder."""

    root: Path
    meta: dict

    @classmethod
    def load(cls, root: str | Path) -> "PreparedDataset":
        root = Path(root)
        meta_path = root / META
        if not meta_path.is_file():
            raise PreparedDataError(
                f"{meta_path} not found: {root} is not a prepared dataset; run "
                f"`python -m domains prepare --dataset <gta5|synthia|cityscapes> --raw <raw root> --out {root}`"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise PreparedDataError(f"{meta_path} is not valid JSON ({err}); re-run `python -m domains prepare`") from err
        return cls(root=root, meta=meta)

    @property
    def name(self) -> str:
        return self.meta["dataset"]

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    @property
    def label_suffix(self) -> str:
        return self.meta.get("label_suffix", "_labelTrainIds.png")

    def _split(self, split: str) -> dict:
        try:
            return self.meta["splits"][split]
        except KeyError:
            raise PreparedDataError(
                f"split '{split}' not in {self.root / META} (has: {', '.join(self.splits)})"
            ) from None

    def image_dir(self, split: str) -> Path:
        return Path(self._split(split)["image_dir"])

    def img_suffix(self, split: str) -> str:
        return self._split(split)["img_suffix"]

    def label_dir(self, split: str) -> Path:
        return self.root / "labels" / split

    def is_labelled(self, split: str) -> bool:
        return bool(self._split(split).get("labelled", False))

    def split_file(self, split: str) -> Path:
        return self.root / f"{split}.txt"

    def stems(self, split: str) -> list[str]:
        path = self.split_file(split)
        self._split(split)
        if not path.is_file():
            raise PreparedDataError(f"split list {path} missing; re-run `python -m domains prepare`")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def image_path(self, split: str, stem: str, image_dir: Path | None = None) -> Path:
        return Path(image_dir or self.image_dir(split)) / f"{stem}{self.img_suffix(split)}"

    def label_path(self, split: str, stem: str) -> Path:
        return self.label_dir(split) / f"{stem}{self.label_suffix}"

    def samples(self, split: str, image_dir: Path | None = None) -> list[Sample]:
        """All samples of ``split``; ``image_dir`` swaps in another image folder (refined images)."""
        labelled = self.is_labelled(split)
        return [
            Sample(stem, self.image_path(split, s := stem, image_dir), self.label_path(split, s) if labelled else None)
            for stem in self.stems(split)
        ]

    def class_stats(self) -> dict:
        path = self.root / CLASS_STATS
        if not path.is_file():
            raise PreparedDataError(f"{path} missing; re-run `python -m domains prepare`")
        return json.loads(path.read_text())
