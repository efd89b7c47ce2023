"""Semantically adaptive SPADE-guided translator (Musto & Zinelli, BMVC 2020), method ``spade``.

Two coupled auto-encoders sharing a latent space (UNIT/MUNIT-style, paper Sec. 3.1): encoders E_S,
E_T (:class:`~translators.networks.spade.ContentEncoder`) and generators G_S, G_T
(:class:`~translators.networks.spade.SpadeDecoder`) whose residual blocks are denormalised by
SPADE from m = M(x), the frozen segmenter's *unnormalised* logits (Sec. 3.2). With A = source (S),
B = target (T) and x_{A->B} = G_B(E_A(x_A), M(x_A)) (the paper's notation), the loss is Eq. 1::

    L = l_recon (|G_A(E_A(a), M(a)) - a|_1 + |G_B(E_B(b), M(b)) - b|_1)                  Eq. 2, l = 10
      + l_GAN  (LSGAN_G(D_B(a->b)) + LSGAN_G(D_A(b->a)))                                  Eq. 3, l = 1
      + l_CC_I (|a->b->a - a|_1 + |b->a->b - b|_1)                                         Eq. 4, l = 10
      + l_CC_H (|E_B(a->b) - E_A(a)|_1 + |E_A(b->a) - E_B(b)|_1)                           Eq. 4, l = 1
      + l_SCE  (SCE(M(a), M(a->b)) + SCE(M(b), M(b->a)))                                   Eq. 5, l = 10

with a->b->a = G_A(E_B(a->b), M(a->b)) (the translation of a translated image is guided by M of
that image, as at inference). D_A, D_B: multi-scale PatchGANs (``spade.num_D`` scales, spectral
norm), LSGAN (D: real -> 1, fake -> 0; G: fake -> 1; summed over scales as MUNIT/pix2pixHD).
(Eq. 3 as printed swaps the targets; we use the standard LSGAN objective.)

Optimisation (Sec. 4): Adam(beta1 = 0.9, beta2 = 0.99) (``train.beta1/beta2``), lr 1e-4, poly decay
(power 0.9) to 0 over ``train.iters``, batch 1, TTUR. The paper gives no TTUR ratio; we take
SPADE's (docs/reference.md §5.1: G lr/2, D 2 lr, i.e. D/G = 4): G lr = ``train.lr`` = 1e-4, D lr =
``spade.lr_D_ratio`` (4) x that. The method sets both learning rates itself at every step from the
training progress (overriding the shared loop's linear schedule; logged as ``lr_G``/``lr_D``).

Guidance M: the segmenter passed with ``--feedback-segmenter`` (round 0: a source-only model). It
is required: training without one raises a ConfigError. Its path and sha256 are recorded in
``spade.segmenter`` / ``spade.segmenter_sha256`` of the run's config, so ``refine`` reloads the same
segmenter (through ``segmenters.loader.load_segmenter``) to guide full-resolution inference; a
missing or changed file is an error naming the key. ``--feedback-weight`` is not used by this
method (its consistency term is the SCE above, weighted by ``spade.lambda_SCE``).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from nets.losses import lsgan_multiscale
from nets.pix2pixhd import MultiscaleDiscriminator
from translators import config as _config
from translators.config import ConfigError
from translators.data import CropSpec
from translators.feedback import to_pixel_range
from translators.losses.cycle import cycle_loss, latent_cycle_loss
from translators.losses.sce import symmetric_cross_entropy
from translators.networks.spade import SEG_INTERP, ContentEncoder, SpadeDecoder

from .base import TranslatorMethod, pad_to_multiple, tiled_apply
from .cyclegan import generator_then_discriminator_step, section

log = logging.getLogger(__name__)


SpadeConfig = _config.SpadeConfig  # the ``spade`` config section lives in translators/config.py

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class SpadeGuided(TranslatorMethod):
    name = "spade"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        o = self.opts = section(cfg, "spade", SpadeConfig)
        if o.seg_interp not in SEG_INTERP:
            raise ConfigError(f"'spade.seg_interp' must be one of {SEG_INTERP} (got {o.seg_interp!r})")
        if o.norm_D not in ("instance", "none"):
            raise ConfigError(f"'spade.norm_D' must be 'instance' or 'none' (got {o.norm_D!r})")
        m = cfg.model
        if cfg.data.crop % (2 ** o.n_downsample):
            raise ConfigError(f"'data.crop' ({cfg.data.crop}) must be a multiple of 2 ** spade.n_downsample")

        def encoder() -> ContentEncoder:
            return ContentEncoder(3, m.ngf, o.n_downsample, o.n_res, o.spectral_norm, m.init_type, m.init_gain)

        def decoder() -> SpadeDecoder:
            return SpadeDecoder(o.num_classes, 3, m.ngf, o.n_downsample, o.n_res, o.spade_hidden, o.spectral_norm,
                                o.seg_interp, m.init_type, m.init_gain)

        def disc() -> MultiscaleDiscriminator:
            return MultiscaleDiscriminator(3, m.ndf, m.n_layers_D, o.num_D, o.norm_D, o.spectral_norm)

        self.E_A, self.E_B = encoder(), encoder()
        self.G_A, self.G_B = decoder(), decoder()
        self.D_A, self.D_B = disc(), disc()
        self._guide = None  # callable images[0,255] -> logits; not a sub-module (frozen, not saved)

    # ------------------------------------------------------------------ guidance
    def attach_segmenter(self, predict_logits, path: str | Path | None = None) -> None:
        """Use ``predict_logits`` (RGB [0, 255] -> logits) as M; record ``path`` in the config."""
        self._guide = predict_logits
        if path is not None and hasattr(self.cfg, "spade"):
            path = Path(path)
            if self.cfg.spade.segmenter != str(path.resolve()):
                self.cfg.spade.segmenter = str(path.resolve())
                self.cfg.spade.segmenter_sha256 = _sha256(path)

    def _guide_from_feedback(self, feedback) -> None:
        if feedback is None:
            raise ConfigError("method 'spade' needs the segmenter that guides it: pass --feedback-segmenter "
                              "<final.pth> (round 0: a source-only segmenter)")
        predict = getattr(feedback, "predict_logits", None)
        if predict is None:
            raise ConfigError("method 'spade' needs a feedback object with predict_logits "
                              "(translators.feedback.load_feedback)")
        seg = getattr(predict, "__self__", None)
        path = getattr(feedback, "path", None) or getattr(seg, "path", None)
        n_cls = getattr(seg, "num_classes", None)
        if n_cls is not None and int(n_cls) != self.opts.num_classes:
            raise ConfigError(f"'spade.num_classes' is {self.opts.num_classes} but the guidance segmenter "
                              f"{path} predicts {n_cls} classes; set spade.num_classes={n_cls}")
        self.attach_segmenter(predict, path)

    def _load_recorded_segmenter(self) -> None:
        o = self.opts
        if not o.segmenter:
            raise ConfigError("this 'spade' translator has no recorded guidance segmenter ('spade.segmenter' is "
                              "empty); it must be trained with --feedback-segmenter")
        path = Path(o.segmenter)
        if not path.is_file():
            raise ConfigError(f"guidance segmenter {path} (config key 'spade.segmenter') not found; it is "
                              f"needed to refine with this translator")
        if o.segmenter_sha256 and _sha256(path) != o.segmenter_sha256:
            raise ConfigError(f"guidance segmenter {path} (config key 'spade.segmenter') changed since the "
                              f"translator was trained (sha256 differs); retrain the translator")
        from segmenters.loader import load_segmenter  # lazy: optional dependency direction

        with torch.inference_mode(False):  # refine calls us under inference_mode; keep normal weights
            seg = load_segmenter(path, self.device, expect_num_classes=o.num_classes)
        self._guide = seg.predict_logits

    def guidance(self, x: torch.Tensor) -> torch.Tensor:
        """M's logits for images in [-1, 1] (float32, at the input size)."""
        if self._guide is None:
            self._load_recorded_segmenter()
        return self._guide(to_pixel_range(x))

    # ------------------------------------------------------------------ hooks
    def crop_spec(self) -> CropSpec:
        c = self.cfg.data.crop
        return CropSpec(local=(c, c))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"G": [p for net in (self.E_A, self.E_B, self.G_A, self.G_B) for p in net.parameters()],
                "D": [*self.D_A.parameters(), *self.D_B.parameters()]}

    def discriminators(self) -> list[nn.Module]:
        return [self.D_A, self.D_B]

    def lr_at(self, progress: float) -> tuple[float, float]:
        """(G lr, D lr) at training progress in [0, 1): poly decay and the TTUR ratio."""
        g = self.cfg.train.lr * max(0.0, 1.0 - progress) ** self.opts.poly_power
        return g, g * self.opts.lr_D_ratio

    def forward_translation(self, batch: dict[str, torch.Tensor]) -> dict:
        a, b = batch["A_l"], batch["B_l"]
        n = a.shape[0]
        with torch.no_grad():
            m_real = self.guidance(torch.cat([a, b])).to(a.dtype)
        m_a, m_b = m_real[:n], m_real[n:]
        z_a, z_b = self.E_A(a), self.E_B(b)
        z = torch.cat([z_a, z_b])
        out_a = self.G_A(z, m_real)          # [a->a, b->a]
        out_b = self.G_B(z, m_real)          # [a->b, b->b]
        rec_a, fake_a = out_a[:n], out_a[n:]
        fake_b, rec_b = out_b[:n], out_b[n:]
        m_fake = self.guidance(torch.cat([fake_b, fake_a]))  # with grad (SCE and cycle guidance)
        m_ab, m_ba = m_fake[:n], m_fake[n:]
        z_ab, z_ba = self.E_B(fake_b), self.E_A(fake_a)
        cyc_a = self.G_A(z_ab, m_ab.to(z_ab.dtype))
        cyc_b = self.G_B(z_ba, m_ba.to(z_ba.dtype))
        return {"m_A": m_a, "m_B": m_b, "m_AB": m_ab, "m_BA": m_ba, "z_A": z_a, "z_B": z_b, "z_AB": z_ab,
                "z_BA": z_ba, "rec_A": rec_a, "rec_B": rec_b, "fake_B": fake_b, "fake_A": fake_a,
                "cyc_A": cyc_a, "cyc_B": cyc_b}

    def generator_loss(self, state: dict, batch: dict, progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o, a, b = self.opts, batch["A_l"], batch["B_l"]
        logs = {
            "recon": cycle_loss(state["rec_A"], a) + cycle_loss(state["rec_B"], b),
            "G_GAN": lsgan_multiscale(self.D_B(state["fake_B"]), True) + lsgan_multiscale(self.D_A(state["fake_A"]), True),
            "cycle": cycle_loss(state["cyc_A"], a) + cycle_loss(state["cyc_B"], b),
            "latent": latent_cycle_loss(state["z_AB"], state["z_A"]) + latent_cycle_loss(state["z_BA"], state["z_B"]),
            "SCE": symmetric_cross_entropy(state["m_A"], state["m_AB"]) + symmetric_cross_entropy(state["m_B"], state["m_BA"]),
        }
        total = (o.lambda_recon * logs["recon"] + o.lambda_GAN * logs["G_GAN"] + o.lambda_cycle * logs["cycle"]
                 + o.lambda_latent * logs["latent"] + o.lambda_SCE * logs["SCE"])
        return total, logs

    def discriminator_loss(self, state: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        d_a = 0.5 * (lsgan_multiscale(self.D_A(batch["A_l"]), True)
                     + lsgan_multiscale(self.D_A(state["fake_A"].detach()), False))
        d_b = 0.5 * (lsgan_multiscale(self.D_B(batch["B_l"]), True)
                     + lsgan_multiscale(self.D_B(state["fake_B"].detach()), False))
        return d_a + d_b, {"D_A": d_a, "D_B": d_b}

    def feedback_pair(self, state: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["A_l"], state["fake_B"]

    def visuals(self, state: dict, batch: dict) -> list[torch.Tensor]:
        return [batch["A_l"], state["fake_B"], state["rec_A"], state["cyc_A"], batch["B_l"], state["fake_A"]]

    def translate_full(self, x: torch.Tensor, tile: int | None = None, overlap: float = 0.25,
                       batch_size: int = 4, blend: str = "mean") -> torch.Tensor:
        """x (1, 3, H, W) in [-1, 1] -> G_B(E_A(x), M(x)); M runs on the whole image, the
        translator over overlapping tiles of (image, guidance) (default tile: refine.tile or the crop)."""
        tile = tile or self.cfg.refine.tile or self.cfg.data.crop
        m = self.guidance(x).to(x.dtype)

        def fn(t: torch.Tensor) -> torch.Tensor:
            return self.G_B(self.E_A(t[:, :3]), t[:, 3:])

        return tiled_apply(pad_to_multiple(fn, 2 ** self.opts.n_downsample), torch.cat([x, m], 1), tile,
                           overlap, batch_size, blend)

    # ------------------------------------------------------------------ one iteration
    def train_step(self, batch, progress, optimizers, scaler, feedback=None):
        """Set the TTUR/poly learning rates; translate; G step (Ds frozen); D step."""
        if self._guide is None or (feedback is not None and getattr(feedback, "predict_logits", None) != self._guide):
            self._guide_from_feedback(feedback)
        lr_g, lr_d = self.lr_at(progress)
        for name, lr in (("G", lr_g), ("D", lr_d)):
            for group in optimizers[name].param_groups:
                group["lr"] = lr
        logs, state = generator_then_discriminator_step(
            self, batch, lambda state, b: self.generator_loss(state, b, progress), optimizers, scaler)
        logs.update(lr_G=lr_g, lr_D=lr_d)
        return logs, state


__all__ = ["SpadeConfig", "SpadeGuided"]
