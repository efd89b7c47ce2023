"""LSGAN loss (Mao et al. 2017) as used by CUT (``--gan_mode lsgan``, docs/reference.md §1.2, §1.4).

SemST's supplement writes the log-likelihood GAN objective (supp. Eq. 1) but builds on CUT/SRC
code, whose default is LSGAN; LSGAN is used here. G's term: lsgan_loss(D(G(x)), True);
D's loss: 0.5 * (lsgan_loss(D(y), True) + lsgan_loss(D(G(x).detach()), False)).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def lsgan_loss(pred: torch.Tensor | Sequence[torch.Tensor], target_is_real: bool) -> torch.Tensor:
    """Mean squared error of the patch scores to 1 (real) or 0 (fake); a list of predictions
    (multi-scale discriminators) gives the mean over scales."""
    if isinstance(pred, torch.Tensor):
        target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
        return F.mse_loss(pred, target)
    preds = list(pred)
    if not preds:
        raise ValueError("lsgan_loss got an empty list of predictions")
    return torch.stack([lsgan_loss(p, target_is_real) for p in preds]).mean()
