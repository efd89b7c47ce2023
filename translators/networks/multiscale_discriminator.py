"""Multi-scale PatchGAN discriminators (pix2pixHD / MUNIT / SPADE style) for the translators.

Re-exported from :mod:`segmenters.ldr_networks` (one implementation shared with LDR's 3-scale
conditional discriminators): ``num_D`` PatchGANs, AvgPool(3, s2, pad 1, count_include_pad=False)
between scales, optional spectral norm, every intermediate activation returned for feature
matching. :func:`score_maps` extracts the per-scale score maps for plain GAN losses.
"""
from __future__ import annotations

import torch

from segmenters.ldr_networks import MultiscaleDiscriminator, NLayerDiscriminator, lsgan_multiscale


def score_maps(outputs: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """The final (score) map of every scale of a :class:`MultiscaleDiscriminator` output."""
    return [feats[-1] for feats in outputs]


__all__ = ["MultiscaleDiscriminator", "NLayerDiscriminator", "lsgan_multiscale", "score_maps"]
