"""UDA methods: what each contributes to a training run (:class:`~segmenters.uda.base.UDAMethod`).

``source_only`` and ``oracle`` train a plain ``EncoderDecoder`` on one labelled dataset; ``bdl``
trains :class:`~segmenters.uda.bdl.BDLSegmentor` (its own ``train_step``) on source/target pairs;
``sepico`` and ``ldr`` likewise (:mod:`segmenters.uda.sepico`, :mod:`segmenters.uda.ldr`).
Add a method by writing a module with a ``UDAMethod`` subclass and listing it in :data:`METHODS`.
"""
from __future__ import annotations

from .base import TrainInputs, UDAMethod, UDAOptimWrapperConstructor, UDASegmentor
from .bdl import BDL, BDLSegmentor
from .discriminator import FCDiscriminator
from .ldr import LDR, LDRSegmentor
from .oracle import Oracle
from .proda import ProDADistill, ProDAStage1, ProDAWarmup
from .sepico import SePiCo, SePiCoSegmentor
from .source_only import SourceOnly

#: --uda name -> method
METHODS: dict[str, UDAMethod] = {m.name: m for m in (SourceOnly(), Oracle(), BDL(), SePiCo(), LDR(),
                                                  ProDAWarmup(), ProDAStage1(), ProDADistill())}


def get_method(name: str) -> UDAMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown UDA method '{name}' (known: {', '.join(METHODS)})") from None


__all__ = ["METHODS", "get_method", "TrainInputs", "UDAMethod", "UDASegmentor", "UDAOptimWrapperConstructor",
           "BDL", "BDLSegmentor", "FCDiscriminator", "Oracle", "SourceOnly",
           "SePiCo", "SePiCoSegmentor", "LDR", "LDRSegmentor",
           "ProDAWarmup", "ProDAStage1", "ProDADistill"]
