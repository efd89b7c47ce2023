"""BDL segmentation adaptation (Li, Yuan, Vasconcelos, CVPR 2019; ``BDL.py``, derived from AdaptSegNet).

Per iteration, with source batch (x_s, y_s) and target batch x_t (docs/reference.md
§7.2):

1. segmentation network G, discriminator D frozen::

       L_G = CE(G(x_s), y_s) + lambda_pseudo * CE(G(x_t), y_hat_t) + lambda_adv * L_adv(x_t)
       L_adv(x_t) = BCE(D(softmax(G(x_t))), source)      # generator term: target -> "source"

   (``CE(G(x_t), y_hat_t)`` only with offline pseudo-labels ``y_hat_t``, ``--pseudo``; 255 ignored.)
2. discriminator on detached probability maps::

       L_D = 1/2 * [BCE(D(softmax(G(x_s))), source) + BCE(D(softmax(G(x_t))), target)]

BCE is ``binary_cross_entropy_with_logits``; labels source = 0, target = 1 (BDL's convention).
Logits are upsampled to the input size before the softmax (AdaptSegNet's ``interp``), so D sees
full-resolution output-space maps. Defaults: lambda_adv 1e-3 (DeepLab-V2) / 1e-4 (FCN-8s),
lambda_pseudo 1; D: Adam lr 1e-4, betas (0.9, 0.99), same poly schedule as G (the configs' ``uda``
dict). The two optimisers live in an ``OptimWrapperDict`` (``segmentor``, ``discriminator``) built by
:class:`~segmenters.uda.base.UDAOptimWrapperConstructor`, so mmengine checkpoints and resumes both.
Choice: the 1/2 on L_D follows AdaptSegNet's code (each term divided by 2).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmengine.optim import OptimWrapperDict  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from . import discriminator as _discriminator  # noqa: E402,F401  (registers FCDiscriminator)
from .base import (SEGMENTOR_KEY, TrainInputs, UDAMethod, UDASegmentor, set_requires_grad,  # noqa: E402
                   source_dataset_cfg, target_dataset_cfg, uda_param)

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0
DISCRIMINATOR_KEY = "discriminator"


def adversarial_generator_loss(d_target: torch.Tensor) -> torch.Tensor:
    """L_adv: BCE of D's logits on target probability maps against the *source* label (G fools D)."""
    return F.binary_cross_entropy_with_logits(d_target, torch.full_like(d_target, SOURCE_LABEL))


def discriminator_loss(d_source: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
    """L_D = 1/2 [BCE(D(P_s), source) + BCE(D(P_t), target)] on detached probability maps."""
    return 0.5 * (F.binary_cross_entropy_with_logits(d_source, torch.full_like(d_source, SOURCE_LABEL))
                  + F.binary_cross_entropy_with_logits(d_target, torch.full_like(d_target, TARGET_LABEL)))


@MODELS.register_module(force=True)
class BDLSegmentor(UDASegmentor):
    """``EncoderDecoder`` + output-space discriminator, trained by BDL's step (module docstring).

    Args (beyond ``EncoderDecoder``'s):
        discriminator: config of the discriminator (``FCDiscriminator``; ``num_classes`` filled in).
        lambda_adv: weight of the generator adversarial term.
        lambda_pseudo: weight of the target pseudo-label cross-entropy.
        use_pseudo: add the pseudo-label term (target batches carry pseudo-labels).
    """

    extra_modules = (DISCRIMINATOR_KEY,)

    def __init__(self, *args: Any, discriminator: dict | None = None, lambda_adv: float = 1e-3,
                 lambda_pseudo: float = 1.0, use_pseudo: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        d_cfg = copy.deepcopy(dict(discriminator or dict(type="FCDiscriminator")))
        d_cfg.setdefault("num_classes", self.num_classes)
        self.discriminator = MODELS.build(d_cfg)
        self.lambda_adv = float(lambda_adv)
        self.lambda_pseudo = float(lambda_pseudo)
        self.use_pseudo = bool(use_pseudo)

    def adv_generator_loss(self, d_target: torch.Tensor) -> torch.Tensor:
        """Segmenter side of the output-space GAN: target maps should look like source (BCE)."""
        return adversarial_generator_loss(d_target)

    def adv_discriminator_loss(self, d_source: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
        """Discriminator side of the output-space GAN on detached maps (BCE)."""
        return discriminator_loss(d_source, d_target)

    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> dict[str, torch.Tensor]:
        if not isinstance(optim_wrapper, OptimWrapperDict) or DISCRIMINATOR_KEY not in optim_wrapper:
            raise TypeError(f"{type(self).__name__} needs an OptimWrapperDict with 'segmentor' and 'discriminator' "
                            "(optim_wrapper constructor 'UDAOptimWrapperConstructor')")
        seg_ow, d_ow = optim_wrapper[SEGMENTOR_KEY], optim_wrapper[DISCRIMINATOR_KEY]
        src, trg = self.preprocess_pair(data)

        # 1. segmentation network; D frozen so L_adv only reaches G
        set_requires_grad(self.discriminator, False)
        with seg_ow.optim_context(self):
            feats_s, logits_s = self.seg_forward(src["inputs"])
            losses = self.seg_losses(feats_s, logits_s, src["data_samples"], "src")
            feats_t, logits_t = self.seg_forward(trg["inputs"])
            if self.use_pseudo:
                losses.update(self.seg_losses(feats_t, logits_t, trg["data_samples"], "trg", self.lambda_pseudo))
            prob_t = F.softmax(self.upsample(logits_t, trg["inputs"]).float(), dim=1)
            losses["trg.loss_adv"] = self.lambda_adv * self.adv_generator_loss(self.discriminator(prob_t))
        seg_loss, log_vars = self.parse_losses(losses)
        seg_ow.update_params(seg_loss)

        # 2. discriminator on detached output-space maps
        set_requires_grad(self.discriminator, True)
        with d_ow.optim_context(self.discriminator):
            prob_s = F.softmax(self.upsample(logits_s.detach(), src["inputs"]).float(), dim=1)
            prob_t = F.softmax(self.upsample(logits_t.detach(), trg["inputs"]).float(), dim=1)
            loss_d = self.adv_discriminator_loss(self.discriminator(prob_s), self.discriminator(prob_t))
        d_ow.update_params(loss_d)
        log_vars = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in log_vars.items()}
        log_vars["disc.loss_d"] = loss_d.detach()
        return log_vars


class BDL(UDAMethod):
    """Source CE + output-space adversarial alignment (+ target pseudo-label CE with ``--pseudo``)."""

    name = "bdl"
    accepts_pseudo = True
    paired = True

    def train_dataset(self, cfg: Any, inputs: TrainInputs) -> dict:
        return dict(type="UDADataset", seed=inputs.seed, source=source_dataset_cfg(cfg, inputs),
                    target=target_dataset_cfg(cfg, inputs, labelled=False, label_dir=inputs.pseudo))

    def model(self, cfg: Any, inputs: TrainInputs) -> dict:
        model = super().model(cfg, inputs)
        model.update(type="BDLSegmentor",
                     discriminator=copy.deepcopy(dict(uda_param(cfg, "discriminator"))),
                     lambda_adv=float(uda_param(cfg, "lambda_adv")),
                     lambda_pseudo=float(uda_param(cfg, "lambda_pseudo")),
                     use_pseudo=inputs.pseudo is not None)
        return model

    def optim_wrapper(self, cfg: Any) -> dict:
        """``segmentor``: the config's optim_wrapper; ``discriminator``: ``uda.d_optimizer`` (same
        wrapper type, so AMP applies to both)."""
        seg = super().optim_wrapper(cfg)
        disc = dict(type=seg.get("type", "OptimWrapper"), optimizer=copy.deepcopy(dict(uda_param(cfg, "d_optimizer"))))
        return dict(constructor="UDAOptimWrapperConstructor", segmentor=seg, discriminator=disc)
