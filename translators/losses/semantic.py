"""BDL's semantic ("perceptual") loss through a frozen segmenter (docs/reference.md §7.1).

L_sem(a, b) = mean( (IN(f(a)) - IN(f(b)))^2 ), f = the segmenter's logit map, IN = affine-free
instance norm per logit channel (:func:`translators.feedback.semantic_consistency_loss`).

BDL's CycleGAN adds, per direction (A = source, B = target):

* translation vs input, weight 0.1 (hard-coded in BDL):   0.1 * L_sem(G_A(x_A), x_A)  (+ B side)
* reconstruction vs input, weight lambda_A * lambda_semantic = 10 * 1 = 10:
  10 * L_sem(G_B(G_A(x_A)), x_A)  (+ B side).

:func:`bdl_semantic_losses` computes the four terms with one batched segmenter pass over the
generated images (inputs without a graph; the segmenter is frozen but differentiable).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from translators.feedback import semantic_consistency_loss, to_pixel_range

#: BDL weights: translation vs input (hard-coded 0.1) and reconstruction (lambda_A * lambda_semantic)
BDL_TRANSLATION_WEIGHT = 0.1
BDL_RECONSTRUCTION_WEIGHT = 10.0


def bdl_semantic_losses(predict_logits: Callable[[torch.Tensor], torch.Tensor], real_a: torch.Tensor,
                        fake_b: torch.Tensor, rec_a: torch.Tensor, real_b: torch.Tensor, fake_a: torch.Tensor,
                        rec_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Unweighted L_sem terms ``sem_A`` (fake_B vs real_A), ``sem_B`` (fake_A vs real_B),
    ``sem_rec_A`` (rec_A vs real_A), ``sem_rec_B`` (rec_B vs real_B). Images in [-1, 1]."""
    n = real_a.shape[0]
    with torch.no_grad():
        logits_real = predict_logits(to_pixel_range(torch.cat([real_a, real_b])))
    logits_fake = predict_logits(to_pixel_range(torch.cat([fake_b, rec_a, fake_a, rec_b])))
    la, lb = logits_real[:n].detach(), logits_real[n:].detach()
    f_b, r_a, f_a, r_b = logits_fake.split([n, n, real_b.shape[0], real_b.shape[0]])
    return {"sem_A": semantic_consistency_loss(la, f_b), "sem_rec_A": semantic_consistency_loss(la, r_a),
            "sem_B": semantic_consistency_loss(lb, f_a), "sem_rec_B": semantic_consistency_loss(lb, r_b)}


__all__ = ["BDL_RECONSTRUCTION_WEIGHT", "BDL_TRANSLATION_WEIGHT", "bdl_semantic_losses",
           "semantic_consistency_loss"]
