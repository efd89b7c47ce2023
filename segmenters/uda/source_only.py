"""Source-only baseline: cross-entropy on labelled (raw or refined) source images only.

Plain ``EncoderDecoder`` training on one :class:`~segmenters.datasets.PreparedSegDataset` (the
simplest correct route: mmseg's own ``train_step``); the target is used for validation only.
With ``--source-images`` this is the "translation-only" row of two-stage UDA tables.
"""
from __future__ import annotations

from .base import UDAMethod


class SourceOnly(UDAMethod):
    name = "source_only"
