"""pix2pixHD's GAN loss stack as pure functions (shared by LDR and the translators).

* :func:`lsgan_multiscale` -- pix2pixHD's default LSGAN, summed over the scales of a
  :class:`~nets.pix2pixhd.MultiscaleDiscriminator`.
* :func:`feature_matching_loss` -- discriminator feature matching, per intermediate layer weight
  lambda_feat * 4/(n_layers+1) / num_D (lambda_feat = 10 in pix2pixHD and SPADE; LDR Eq. 5 second sum).
* :func:`perceptual_loss` -- L1 per VGG layer with weights 1/32, 1/16, 1/8, 1/4, 1
  (:data:`~nets.vgg.VGG_LAYER_WEIGHTS`; LDR Eq. 5 first sum; docs/reference.md §5.1, §5.2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .vgg import VGG_LAYER_WEIGHTS


def lsgan_multiscale(preds: Sequence[Sequence[torch.Tensor]], target_is_real: bool) -> torch.Tensor:
    """pix2pixHD LSGAN: sum over scales of mean((D_k(x)[-1] - t)^2), t = 1 real / 0 fake."""
    total = None
    for feats in preds:
        p = feats[-1]
        target = torch.ones_like(p) if target_is_real else torch.zeros_like(p)
        term = F.mse_loss(p.float(), target.float())
        total = term if total is None else total + term
    if total is None:
        raise ValueError("lsgan_multiscale got no discriminator outputs")
    return total


def feature_matching_loss(real: Sequence[Sequence[torch.Tensor]], fake: Sequence[Sequence[torch.Tensor]],
                          lambda_feat: float = 10.0) -> torch.Tensor:
    """Discriminator feature matching (pix2pixHD; LDR Eq. 5, second sum).

    sum_k sum_n w * ||D_k^(n)(real) - D_k^(n)(fake)||_1 over all intermediate layers n (the final
    score map excluded), w = lambda_feat * 4/(n_layers+1) / num_D with n_layers + 1 the number of
    intermediate layers per scale. The real-side features are detached (targets)."""
    num_d = len(fake)
    if num_d == 0 or len(real) != num_d:
        raise ValueError(f"feature_matching_loss needs the same number of scales, got {len(real)} and {num_d}")
    total = None
    for feats_r, feats_f in zip(real, fake):
        n_inter = len(feats_f) - 1
        if n_inter < 1:
            raise ValueError("feature_matching_loss needs discriminators with intermediate layers")
        w = lambda_feat * (4.0 / n_inter) / num_d
        for fr, ff in zip(feats_r[:-1], feats_f[:-1]):
            term = w * F.l1_loss(ff.float(), fr.detach().float())
            total = term if total is None else total + term
    return total


def perceptual_loss(feats_x: Sequence[torch.Tensor], feats_y: Sequence[torch.Tensor],
                    weights: Sequence[float] = VGG_LAYER_WEIGHTS) -> torch.Tensor:
    """sum_m w_m ||V_m(x) - V_m(y)||_1 (mean absolute error per layer; LDR Eq. 5 first sum,
    pix2pixHD ``VGGLoss``). ``y`` is the target: its features are detached."""
    if not (len(feats_x) == len(feats_y) == len(weights)):
        raise ValueError(f"perceptual_loss: {len(feats_x)}/{len(feats_y)} feature maps for {len(weights)} weights")
    total = None
    for w, fx, fy in zip(weights, feats_x, feats_y):
        term = float(w) * F.l1_loss(fx.float(), fy.detach().float())
        total = term if total is None else total + term
    return total


__all__ = ["feature_matching_loss", "lsgan_multiscale", "perceptual_loss"]
