"""Label-driven reconstruction (LDR; Yang, An, Wang, Zhu, Yan, Huang, ECCV 2020), UDA method ``ldr``.

The segmenter G trains on ORIGINAL source images X_s and target images translated to the source
style X_{t->s} (target-to-source CycleGAN, paper Sec. 3.2; see "Data" below), with (Eq. 1, 6)::

    min_{G, M} max_{D_1..3}  L_G + alpha (L_adv^s + L_adv^{t->s}) + beta (L_rec^s + L_rec^{t->s})
    L_G   = CE(G(X_s), Y_s) + lambda_pseudo CE(G(X_{t->s}), Y_t^ssl) + lambda_adv L_adv(G(X_{t->s}))   (Eq. 1-2)
    Omega = softmax(G(X) / tau), tau = 0.001                                                          (Eq. 3)
    L_adv^phi = sum_k LSGAN(D_k(Omega, X), 1) + LSGAN(D_k(Omega, M(Omega)), 0)                          (Eq. 4)
    L_rec^phi = sum_m w_m |V_m(M(Omega)) - V_m(X)|_1 + sum_k sum_n w_fm |D_k^n(Omega, X) - D_k^n(Omega, M(Omega))|_1   (Eq. 5)

* L_adv(G(X_{t->s})) and the output-space discriminator are BDL's (:mod:`segmenters.uda.bdl`,
  ``FCDiscriminator``, BCE, source = 0 / target = 1, lambda_adv 1e-3 DeepLab-V2 / 1e-4 FCN-8s).
* M: pix2pixHD global generator on Omega (C channels); D_k: 3-scale conditional PatchGANs on
  cat(Omega, image) (:mod:`nets.pix2pixhd`; the losses :mod:`nets.losses`; Omega and the VGG19
  file :mod:`segmenters.uda.ldr_parts`). Choices where the paper is silent: the GAN form is LSGAN
  (pix2pixHD's default; Eq. 4 is written with logs); the feature-matching per-layer weight w_fm is
  pix2pixHD's 4/(n_layers+1)/num_D (Eq. 5 writes a plain sum), so beta = 10 plays pix2pixHD's
  lambda_feat = 10; the VGG19 weights w_m are 1/32, 1/16, 1/8, 1/4, 1; alpha is
  0.001 (DeepLab-V2) / 0.01 (FCN-8s) and beta 10 (paper Sec. 4.3). The D_k step minimises
  1/2 (LSGAN(real, 1) + LSGAN(fake, 0)) on detached Omega and M(Omega) (alpha only weighs the G/M side).
* Images for reconstruction are the segmenter's inputs mapped back to RGB in [-1, 1]; Omega comes
  from the logits upsampled to the input size (optionally both resized by ``recon_scale`` to bound
  the memory of M and D_k at paper resolution). Omega is computed in float32 outside autocast
  (:func:`~segmenters.uda.ldr_parts.boltzmann_softmax`).
* Gradients: L_G + alpha L_adv + beta L_rec reach G (through Omega) and M; each network has its own
  optimiser (``segmentor``, ``discriminator``, ``reconstructor``, ``recon_discriminator`` in an
  ``OptimWrapperDict``). One forward pass; two backward passes restricted with ``inputs=`` (G's
  parameters with the whole loss, M's with the reconstruction terms), so each optimiser wrapper
  scales its own loss under AMP.
* Pre-training of M (paper Sec. 4.3: "first pre-trained by reconstructing source images X_s from the
  corresponding labels Y_s"): for the first ``recon_warmup_iters`` iterations M and D_k learn from
  one-hot Y_s (ignored pixels all-zero) and G gets no reconstruction term (default 0: joint from the start).
* The VGG19 weights come from ``uda.vgg19_weights``: the registry name ``vgg19`` (the paper presets'
  default, resolved to the weights cache at start-up, docs/weights.md) or the path of a torchvision
  vgg19 state-dict file, loaded ``weights_only=True``; with None (the tiny presets) the perceptual
  term is disabled with a logged warning. The VGG is kept outside the module tree, so it is
  neither optimised nor written into checkpoints.

Hyper-parameters: ``cfg.uda.ldr`` (dict; keys of :data:`LDR_DEFAULTS`, missing keys take the
preset's defaults) and ``cfg.uda.vgg19_weights``.

Data: the target train split's images are replaced by their target->source translations when the
run gets a translated-target folder (``TrainInputs.target_images``, same stems; produced by
``python -m translators refine`` with a CycleGAN trained with ``--source <target> --target <source>``).
Without one, the raw target images are used and a warning says so (the paper's "T->S off" ablation).
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmengine.optim import OptimWrapperDict  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

from nets.losses import feature_matching_loss, lsgan_multiscale, perceptual_loss  # noqa: E402
from nets.pix2pixhd import GlobalGenerator, MultiscaleDiscriminator  # noqa: E402

from . import discriminator as _discriminator  # noqa: E402,F401  (registers FCDiscriminator)
from .base import (SEGMENTOR_KEY, TrainError, TrainInputs, UDAMethod, UDASegmentor,  # noqa: E402
                   set_requires_grad, source_dataset_cfg, target_dataset_cfg, uda_param)
from .bdl import DISCRIMINATOR_KEY, adversarial_generator_loss, discriminator_loss  # noqa: E402
from .ldr_parts import boltzmann_softmax, check_vgg19_weights, load_vgg19_features  # noqa: E402

logger = logging.getLogger(__name__)

RECONSTRUCTOR_KEY = "reconstructor"
RECON_DISCRIMINATOR_KEY = "recon_discriminator"

#: LDR hyper-parameters per preset (paper: pix2pixHD M with 3 downsamplings and 9 blocks, ngf 64;
#: 3-scale PatchGANs ndf 64, n_layers 3; tau 1e-3, beta 10; M and D_k Adam 2e-4 (0.5, 0.999)).
LDR_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": dict(tau=1e-3, alpha=None, beta=10.0, ngf=64, n_downsample=3, n_blocks=9, ndf=64, n_layers=3,
                  num_D=3, recon_scale=1.0, recon_warmup_iters=0,
                  m_optimizer=dict(type="Adam", lr=2e-4, betas=(0.5, 0.999)),
                  dk_optimizer=dict(type="Adam", lr=2e-4, betas=(0.5, 0.999))),
    "tiny": dict(tau=1e-3, alpha=None, beta=10.0, ngf=8, n_downsample=2, n_blocks=2, ndf=8, n_layers=2,
                 num_D=3, recon_scale=1.0, recon_warmup_iters=0,
                 m_optimizer=dict(type="Adam", lr=2e-4, betas=(0.5, 0.999)),
                 dk_optimizer=dict(type="Adam", lr=2e-4, betas=(0.5, 0.999))),
}
#: alpha of Eq. 6 per architecture (paper Sec. 4.3)
ALPHA = {"deeplabv2": 1e-3, "fcn8s": 1e-2}


def ldr_params(cfg: Any) -> dict[str, Any]:
    """``cfg.uda.ldr`` over the preset's :data:`LDR_DEFAULTS`; unknown keys are an error naming them."""
    preset = cfg.get("preset", "paper")
    params = copy.deepcopy(LDR_DEFAULTS.get(preset, LDR_DEFAULTS["paper"]))
    given = (cfg.get("uda", None) or {}).get("ldr", None) or {}
    given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ValueError(f"config key uda.ldr has unknown entries {unknown} (known: {sorted(params)})")
    params.update(given)
    if params["alpha"] is None:
        params["alpha"] = ALPHA.get(cfg.get("arch", "deeplabv2"), 1e-3)
    return params


def one_hot_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) integer labels -> (B, C, H, W) float one-hot; ignored pixels all zero."""
    if labels.dim() == 4:
        labels = labels[:, 0]
    labels = labels.long()
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    out = F.one_hot(torch.where(valid, labels, torch.zeros_like(labels)), num_classes).permute(0, 3, 1, 2).float()
    return out * valid[:, None].float()


@MODELS.register_module(force=True)
class LDRSegmentor(UDASegmentor):
    """``EncoderDecoder`` + output-space D + reconstruction network M + 3-scale conditional D_k.

    Args (beyond ``EncoderDecoder``'s): ``discriminator`` (FCDiscriminator cfg), ``lambda_adv``,
    ``lambda_pseudo``, ``use_pseudo`` (as BDL); ``tau``, ``alpha``, ``beta``, ``ngf``,
    ``n_downsample``, ``n_blocks`` (M), ``ndf``, ``n_layers``, ``num_D`` (D_k), ``recon_scale``,
    ``recon_warmup_iters``, ``vgg19_weights`` (path, registry name ``vgg19`` or None).
    """

    extra_modules = (DISCRIMINATOR_KEY, RECONSTRUCTOR_KEY, RECON_DISCRIMINATOR_KEY)

    def __init__(self, *args: Any, discriminator: dict | None = None, lambda_adv: float = 1e-3,
                 lambda_pseudo: float = 1.0, use_pseudo: bool = False, tau: float = 1e-3, alpha: float = 1e-3,
                 beta: float = 10.0, ngf: int = 64, n_downsample: int = 3, n_blocks: int = 9, ndf: int = 64,
                 n_layers: int = 3, num_D: int = 3, recon_scale: float = 1.0, recon_warmup_iters: int = 0,
                 vgg19_weights: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        d_cfg = copy.deepcopy(dict(discriminator or dict(type="FCDiscriminator")))
        d_cfg.setdefault("num_classes", self.num_classes)
        self.discriminator = MODELS.build(d_cfg)
        self.reconstructor = GlobalGenerator(self.num_classes, 3, ngf, n_downsample, n_blocks)
        self.recon_discriminator = MultiscaleDiscriminator(self.num_classes + 3, ndf, n_layers, num_D)
        if tau <= 0 or not 0 < recon_scale <= 1:
            raise ValueError(f"LDR: tau must be > 0 and recon_scale in (0, 1] (got tau={tau}, recon_scale={recon_scale})")
        self.lambda_adv, self.lambda_pseudo, self.use_pseudo = float(lambda_adv), float(lambda_pseudo), bool(use_pseudo)
        self.tau, self.alpha, self.beta = float(tau), float(alpha), float(beta)
        self.recon_scale, self.recon_warmup_iters = float(recon_scale), int(recon_warmup_iters)
        self.register_buffer("ldr_iter", torch.zeros((), dtype=torch.long))
        vgg = None
        if vgg19_weights:
            vgg = load_vgg19_features(vgg19_weights)
        else:
            logger.warning("LDR: no VGG19 weights (config key uda.vgg19_weights); the perceptual term of "
                           "L_rec is disabled (feature matching and the conditional GAN remain)")
        object.__setattr__(self, "_vgg", vgg)  # not a sub-module: frozen, not optimised, not checkpointed

    # ------------------------------------------------------------------ helpers
    def vgg(self, device: torch.device):
        if self._vgg is not None and next(self._vgg.parameters()).device != device:
            self._vgg.to(device)
        return self._vgg

    def rgb(self, inputs: torch.Tensor) -> torch.Tensor:
        """Segmenter inputs (normalised, RGB after the preprocessor) -> RGB in [-1, 1]."""
        pre = self.data_preprocessor
        mean = pre.mean.view(1, -1, 1, 1).to(inputs.device, torch.float32)
        std = pre.std.view(1, -1, 1, 1).to(inputs.device, torch.float32)
        return ((inputs.float() * std + mean) / 127.5 - 1.0).clamp(-1, 1)

    def _recon_size(self, h: int, w: int) -> tuple[int, int]:
        mult = self.reconstructor.multiple
        return (max(mult, round(h * self.recon_scale / mult) * mult), max(mult, round(w * self.recon_scale / mult) * mult))

    def recon_inputs(self, logits: torch.Tensor | None, inputs: torch.Tensor,
                     labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Omega, image) at the reconstruction size: Omega = Boltzmann softmax of the logits
        (upsampled to the input size, then resized), or the one-hot labels when ``labels`` is given."""
        h, w = inputs.shape[-2:]
        size = self._recon_size(h, w)
        image = self.rgb(inputs)
        if tuple(size) != (h, w):
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        if labels is not None:
            omega = one_hot_labels(F.interpolate(labels.float(), size=size, mode="nearest"), self.num_classes)
        else:
            logits = self.upsample(logits, inputs)
            if tuple(size) != (h, w):
                logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
            omega = boltzmann_softmax(logits, self.tau)
        return omega, image

    def reconstruction_losses(self, omega: torch.Tensor, image: torch.Tensor, prefix: str) -> tuple[dict, torch.Tensor]:
        """alpha * L_adv^phi (G/M side) and beta * L_rec^phi (Eq. 4-5) for one domain; returns
        (loss dict, M(Omega))."""
        fake = self.reconstructor(omega)
        pred_fake = self.recon_discriminator(torch.cat([omega, fake], 1))
        pred_real = self.recon_discriminator(torch.cat([omega, image], 1))
        losses = {f"{prefix}.loss_recon_adv": self.alpha * lsgan_multiscale(pred_fake, True),
                  f"{prefix}.loss_recon_fm": self.beta * feature_matching_loss(pred_real, pred_fake, 1.0)}
        vgg = self.vgg(omega.device)
        if vgg is not None:
            losses[f"{prefix}.loss_recon_vgg"] = self.beta * perceptual_loss(vgg(fake), vgg(image))
        return losses, fake

    def recon_discriminator_loss(self, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean over domains of 1/2 (LSGAN(D_k(Omega, X), 1) + LSGAN(D_k(Omega, M(Omega)), 0)), detached."""
        terms = []
        for omega, image, fake in pairs:
            omega = omega.detach()
            real = lsgan_multiscale(self.recon_discriminator(torch.cat([omega, image.detach()], 1)), True)
            fake_ = lsgan_multiscale(self.recon_discriminator(torch.cat([omega, fake.detach()], 1)), False)
            terms.append(0.5 * (real + fake_))
        return torch.stack(terms).mean()

    @staticmethod
    def _backward(ow, loss: torch.Tensor, inputs: list[torch.Tensor], retain_graph: bool = False) -> None:
        """Backward of ``loss`` (scaled by this wrapper) into ``inputs`` only."""
        ow.backward(ow.scale_loss(loss), inputs=inputs, retain_graph=retain_graph)

    @staticmethod
    def _update(ow) -> None:
        if ow.should_update():
            ow.step()
            ow.zero_grad()

    # ------------------------------------------------------------------ one iteration
    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> dict[str, torch.Tensor]:
        keys = (SEGMENTOR_KEY, DISCRIMINATOR_KEY, RECONSTRUCTOR_KEY, RECON_DISCRIMINATOR_KEY)
        if not isinstance(optim_wrapper, OptimWrapperDict) or any(k not in optim_wrapper for k in keys):
            raise TypeError(f"LDRSegmentor needs an OptimWrapperDict with {list(keys)} "
                            "(optim_wrapper constructor 'UDAOptimWrapperConstructor')")
        seg_ow, d_ow = optim_wrapper[SEGMENTOR_KEY], optim_wrapper[DISCRIMINATOR_KEY]
        m_ow, dk_ow = optim_wrapper[RECONSTRUCTOR_KEY], optim_wrapper[RECON_DISCRIMINATOR_KEY]
        src, trg = self.preprocess_pair(data)
        warmup = int(self.ldr_iter) < self.recon_warmup_iters
        extra = {id(p) for k in self.extra_modules for p in getattr(self, k).parameters()}
        seg_params = [p for p in self.parameters() if id(p) not in extra and p.requires_grad]
        m_params = [p for p in self.reconstructor.parameters() if p.requires_grad]

        # 1. segmenter G and reconstruction network M; both discriminators frozen
        set_requires_grad(self.discriminator, False)
        set_requires_grad(self.recon_discriminator, False)
        pairs = []
        with seg_ow.optim_context(self):
            feats_s, logits_s = self.seg_forward(src["inputs"])
            losses = self.seg_losses(feats_s, logits_s, src["data_samples"], "src")
            feats_t, logits_t = self.seg_forward(trg["inputs"])
            if self.use_pseudo:
                losses.update(self.seg_losses(feats_t, logits_t, trg["data_samples"], "trg", self.lambda_pseudo))
            prob_t = F.softmax(self.upsample(logits_t, trg["inputs"]).float(), dim=1)
            losses["trg.loss_adv"] = self.lambda_adv * adversarial_generator_loss(self.discriminator(prob_t))
            recon: dict[str, torch.Tensor] = {}
            if warmup:  # pre-train M from the source labels
                labels = torch.stack([ds.gt_sem_seg.data for ds in src["data_samples"]]).to(src["inputs"].device)
                omega, image = self.recon_inputs(None, src["inputs"], labels)
                part, fake = self.reconstruction_losses(omega, image, "src")
                recon.update(part)
                pairs.append((omega, image, fake))
            else:
                for prefix, logits, batch in (("src", logits_s, src), ("trg", logits_t, trg)):
                    omega, image = self.recon_inputs(logits, batch["inputs"])
                    part, fake = self.reconstruction_losses(omega, image, prefix)
                    recon.update(part)
                    pairs.append((omega, image, fake))
        seg_loss, log_vars = self.parse_losses(losses if warmup else {**losses, **recon})
        recon_loss = sum(recon.values())
        # both backward passes before any step: the shared graph must not see updated weights
        self._backward(seg_ow, seg_loss, seg_params, retain_graph=True)
        self._backward(m_ow, recon_loss, m_params)
        self._update(seg_ow)
        self._update(m_ow)
        if warmup:
            log_vars.update({k: v.detach() for k, v in recon.items()})

        # 2. output-space discriminator on detached probability maps (BDL)
        set_requires_grad(self.discriminator, True)
        with d_ow.optim_context(self.discriminator):
            prob_s = F.softmax(self.upsample(logits_s.detach(), src["inputs"]).float(), dim=1)
            prob_t = F.softmax(self.upsample(logits_t.detach(), trg["inputs"]).float(), dim=1)
            loss_d = discriminator_loss(self.discriminator(prob_s), self.discriminator(prob_t))
        d_ow.update_params(loss_d)

        # 3. conditional multi-scale discriminators D_k on detached (Omega, X) / (Omega, M(Omega))
        set_requires_grad(self.recon_discriminator, True)
        with dk_ow.optim_context(self.recon_discriminator):
            loss_dk = self.recon_discriminator_loss(pairs)
        dk_ow.update_params(loss_dk)

        self.ldr_iter += 1
        log_vars = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in log_vars.items()}
        log_vars["disc.loss_d"] = loss_d.detach()
        log_vars["recon_disc.loss_d"] = loss_dk.detach()
        return log_vars


class LDR(UDAMethod):
    """Source CE on original source images + target (translated to source style) pseudo-label CE +
    output-space adversarial alignment + label-driven reconstruction (module docstring)."""

    name = "ldr"
    accepts_pseudo = True
    paired = True

    def train_dataset(self, cfg: Any, inputs: TrainInputs) -> dict:
        if inputs.source_images is not None:
            logger.warning("LDR trains on original source images by design; --source-images %s replaces them "
                           "as requested", inputs.source_images)
        target = target_dataset_cfg(cfg, inputs, labelled=False, label_dir=inputs.pseudo)
        target_images = getattr(inputs, "target_images", None)
        if target_images is not None:
            target["image_dir"] = str(target_images)
        else:
            logger.warning("LDR without translated target images (TrainInputs.target_images / --target-images): "
                           "the segmenter sees raw target images (target-to-source translation off)")
        return dict(type="UDADataset", seed=inputs.seed, source=source_dataset_cfg(cfg, inputs), target=target)

    def model(self, cfg: Any, inputs: TrainInputs) -> dict:
        model = super().model(cfg, inputs)
        p = ldr_params(cfg)
        uda = cfg.get("uda", None) or {}
        model.update(type="LDRSegmentor",
                     discriminator=copy.deepcopy(dict(uda_param(cfg, "discriminator"))),
                     lambda_adv=float(uda_param(cfg, "lambda_adv")),
                     lambda_pseudo=float(uda_param(cfg, "lambda_pseudo")),
                     use_pseudo=inputs.pseudo is not None,
                     vgg19_weights=self._vgg19_file(uda.get("vgg19_weights", None)),
                     **{k: v for k, v in p.items() if k not in ("m_optimizer", "dk_optimizer")})
        return model

    @staticmethod
    def _vgg19_file(spec: Any) -> str | None:
        """``uda.vgg19_weights`` resolved and checked at start-up (before the Runner and the run folder
        exist), so a missing, unreadable or wrong file stops the run with one message
        (:class:`TrainError`) instead of failing in the model build."""
        if not spec:
            return None
        try:
            return str(check_vgg19_weights(spec))
        except (FileNotFoundError, ValueError) as err:
            raise TrainError(str(err)) from err

    def optim_wrapper(self, cfg: Any) -> dict:
        """``segmentor``: the config's; ``discriminator``: ``uda.d_optimizer``; ``reconstructor`` and
        ``recon_discriminator``: ``uda.ldr.m_optimizer`` / ``dk_optimizer`` (Adam 2e-4, (0.5, 0.999))."""
        seg = super().optim_wrapper(cfg)
        kind = seg.get("type", "OptimWrapper")
        p = ldr_params(cfg)
        return dict(constructor="UDAOptimWrapperConstructor", segmentor=seg,
                    discriminator=dict(type=kind, optimizer=copy.deepcopy(dict(uda_param(cfg, "d_optimizer")))),
                    reconstructor=dict(type=kind, optimizer=copy.deepcopy(dict(p["m_optimizer"]))),
                    recon_discriminator=dict(type=kind, optimizer=copy.deepcopy(dict(p["dk_optimizer"]))))


__all__ = ["ALPHA", "LDR", "LDRSegmentor", "LDR_DEFAULTS", "ldr_params", "one_hot_labels"]
