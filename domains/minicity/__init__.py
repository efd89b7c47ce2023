"""minicity: a procedural street-scene benchmark written in the real datasets' on-disk formats.

The same random source scenes are written as GTA5 (``gta5/``) and SYNTHIA (``synthia/``), other
scenes with target class priors as Cityscapes (``cityscapes/``), so every stage of the pipeline
runs on CPU without the real data. Modules: ``scene`` (3-D layout -> label map), ``render``
(per-domain appearance: the domain gap), ``writers`` (dataset layouts), ``generate`` (parallel,
deterministic, atomic tree writer), ``strip`` (sample strip PNG + class-fraction table).

    python -m domains.minicity --out data/raw/minicity
    python -m domains.minicity.strip --root data/raw/minicity --out docs/minicity_strip.png
"""
from domains.minicity.builder import MANIFEST, MinicityError, Options, generate

__all__ = ["MANIFEST", "MinicityError", "Options", "generate"]
