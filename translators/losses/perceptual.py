"""VGG19 perceptual L1 loss with the pix2pixHD/SPADE layer weights 1/32, 1/16, 1/8, 1/4, 1.

sum_m w_m ||V_m(x) - V_m(y)||_1 (LDR Eq. 5 first sum; docs/reference.md §5.1, §5.2). One
implementation, in :mod:`segmenters.ldr_networks` (shared with LDR), re-exported here.
"""
from segmenters.ldr_networks import VGG_LAYER_WEIGHTS, perceptual_loss

__all__ = ["VGG_LAYER_WEIGHTS", "perceptual_loss"]
