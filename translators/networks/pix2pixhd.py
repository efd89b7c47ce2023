"""pix2pixHD global generator and ResNet block for the translators.

The implementation lives in :mod:`segmenters.ldr_networks` (LDR's reconstruction network needs it
and ``segmenters`` never imports ``translators``, docs/design.md §2.2); this module re-exports it so
translator code imports its networks from ``translators.networks`` without duplicating them.
"""
from segmenters.ldr_networks import GlobalGenerator, ResnetBlock, init_normal

__all__ = ["GlobalGenerator", "ResnetBlock", "init_normal"]
