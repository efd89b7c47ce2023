"""Cycle-consistency, identity and reconstruction L1 losses (CycleGAN, UNIT/MUNIT).

* :func:`cycle_loss` -- CycleGAN ``||G_B(G_A(x)) - x||_1`` (Zhu et al. 2017 Eq. 2); also the image
  cycle L_CC_I and the reconstruction L_recon of the SPADE-guided translator (Musto & Zinelli Eq. 2, 4).
* :func:`latent_cycle_loss` -- L_CC_H = ||z_{S->T} - z_S||_1 (Musto & Zinelli Eq. 4; MUNIT's
  recon_c, not detached as in MUNIT).
* :func:`identity_loss` -- ``||G_A(y) - y||_1`` (CycleGAN identity mapping).
All are means over elements (the papers' ||.||_1 as implemented by nn.L1Loss in the reference code).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between a cycle-reconstructed image and its original."""
    return F.l1_loss(reconstructed.float(), original.float())


def identity_loss(mapped: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of a generator applied to an image already in its output domain."""
    return F.l1_loss(mapped.float(), original.float())


def latent_cycle_loss(z_cycled: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between a re-encoded latent code and the original code."""
    return F.l1_loss(z_cycled.float(), z.float())


__all__ = ["cycle_loss", "identity_loss", "latent_cycle_loss"]
