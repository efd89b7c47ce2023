"""Discriminator feature-matching L1 loss (pix2pixHD; LDR Eq. 5 second sum).

Per intermediate layer weight lambda_feat * 4/(n_layers+1) / num_D, lambda_feat = 10 in pix2pixHD
and SPADE. One implementation, in :mod:`segmenters.ldr_networks` (shared with LDR), re-exported here.
"""
from segmenters.ldr_networks import feature_matching_loss

__all__ = ["feature_matching_loss"]
