"""Oracle (upper bound): cross-entropy on the target's labelled training split.

Plain ``EncoderDecoder`` training on the target train split with its own labels; the source
is not used. Needs a prepared target whose train split is labelled (Cityscapes gtFine train).
"""
from __future__ import annotations

from typing import Any

from .base import TrainInputs, UDAMethod, target_dataset_cfg


class Oracle(UDAMethod):
    name = "oracle"
    uses_source = False

    def train_dataset(self, cfg: Any, inputs: TrainInputs) -> dict:
        return target_dataset_cfg(cfg, inputs, labelled=True)
