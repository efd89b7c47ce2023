"""CycleGAN (Zhu et al. 2017) as used by BDL (Li et al. 2019), with BDL's optional semantic loss.

Networks: G_A: A -> B and G_B: B -> A (ResNet generators, CycleGAN's plain strided convs:
``model.antialias: false``), D_A on domain B and D_B on domain A (70x70 PatchGANs), N(0, 0.02) init.

Generator objective (docs/reference.md §7.1; CycleGAN ``cycle_gan_model.py``)::

    L_G = LSGAN(D_A(G_A(a)), 1) + LSGAN(D_B(G_B(b)), 1)
        + lambda_cycle * (|G_B(G_A(a)) - a|_1 + |G_A(G_B(b)) - b|_1)                 (lambda_A = lambda_B = 10)
        + lambda_cycle * lambda_identity * (|G_A(b) - b|_1 + |G_B(a) - a|_1)          (lambda_identity = 0.5)
        + w_trans * (L_sem(G_A(a), a) + L_sem(G_B(b), b))                             (BDL, w_trans = 0.1)
        + w_rec   * (L_sem(G_B(G_A(a)), a) + L_sem(G_A(G_B(b)), b))                   (BDL, w_rec = 10)

    L_D_A = 1/2 (LSGAN(D_A(b), 1) + LSGAN(D_A(pool_B(G_A(a))), 0)), L_D_B likewise with pool_A.

The semantic terms (``translators.losses.semantic``) exist only with a feedback segmenter
(``--feedback-segmenter``): the translation-vs-input weight is ``--feedback-weight`` (default 0.1,
BDL's hard-coded value), the reconstruction weight ``cyclegan.lambda_sem_reconstruction``
(BDL: lambda_A * lambda_semantic = 10 * 1). Order per iteration as CycleGAN: G step (Ds frozen),
then D step on *pooled* fakes (:class:`ImagePool`, 50 images). Optimiser: Adam(0.5, 0.999), lr 2e-4,
linear decay to 0 over the second half (``train.*``, the shared training loop's policy).
Speed (same maths): G_A runs once on cat(a, b) giving G_A(a) and the identity G_A(b) (instance norm
is per sample, so batching is exact); likewise G_B.

Target-to-source translation for LDR: train with ``--source <target> --target <source>``; G_A is then
the T->S generator that ``refine`` applies (see the LDR notes in docs/cli.md).
"""
from __future__ import annotations


import torch
from torch import nn

from translators import config as _config
from translators.data import CropSpec
from translators.losses import lsgan_loss
from translators.losses.cycle import cycle_loss, identity_loss
from translators.losses.semantic import BDL_TRANSLATION_WEIGHT, bdl_semantic_losses
from translators.networks import NLayerDiscriminator, ResnetGenerator, init_weights

from .base import TranslatorMethod, pad_to_multiple, set_requires_grad, tiled_apply


CycleGANConfig = _config.CycleGANConfig  # the ``cyclegan`` config section lives in translators/config.py


def section(cfg, name: str, cls):
    """``cfg.<name>`` when the config defines that section, else the dataclass defaults."""
    value = getattr(cfg, name, None)
    return value if value is not None else cls()


def generator_then_discriminator_step(method, batch, generator_loss, optimizers, scaler):
    """One CycleGAN-order iteration of ``method``: translate; G step with the discriminators frozen;
    then the D step. ``generator_loss(state, batch) -> (loss, logs)``. Returns (loss floats, state)."""
    batch = {k: (method.prepare_input(v) if v.dim() == 4 else v.to(method.device)) for k, v in batch.items()}
    nets_d = method.discriminators()
    set_requires_grad(nets_d, False)
    optimizers["G"].zero_grad(set_to_none=True)
    with method.autocast():
        state = method.forward_translation(batch)
        loss_g, logs_g = generator_loss(state, batch)
    logs = method._finite({"G": loss_g, **logs_g})
    scaler.scale(loss_g).backward()
    scaler.step(optimizers["G"])
    set_requires_grad(nets_d, True)
    optimizers["D"].zero_grad(set_to_none=True)
    with method.autocast():
        loss_d, logs_d = method.discriminator_loss(state, batch)
    logs.update(method._finite({"D": loss_d, **logs_d}))
    scaler.scale(loss_d).backward()
    scaler.step(optimizers["D"])
    scaler.update()
    return logs, state


class ImagePool(nn.Module):
    """CycleGAN's image history buffer (Shrivastava et al. 2017).

    ``query(images)``: while fewer than ``size`` images are stored, each image is stored and
    returned; afterwards each image is, with probability 1/2, swapped with a random stored one (the
    stored one is returned, the new one kept), else returned as is. ``size`` 0 returns the input.
    Draws use the global torch RNG (checkpointed by the training loop). The buffer itself is not
    checkpointed (as in the reference code): a resumed run starts with an empty pool.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"pool_size must be >= 0, got {size}")
        self.size = int(size)
        self.images: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        images = images.detach()
        if self.size == 0:
            return images
        out = []
        for img in images:
            img = img[None].clone()
            if len(self.images) < self.size:
                self.images.append(img)
                out.append(img)
            elif float(torch.rand(())) < 0.5:
                j = int(torch.randint(0, self.size, ()))
                out.append(self.images[j])
                self.images[j] = img
            else:
                out.append(img)
        return torch.cat(out)


class CycleGAN(TranslatorMethod):
    name = "cyclegan"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.opts = section(cfg, "cyclegan", CycleGANConfig)
        if self.opts.pool_size < 0:
            from translators.config import ConfigError
            raise ConfigError(f"'cyclegan.pool_size' must be >= 0 (got {self.opts.pool_size})")
        self.G_A, self.G_B = self.make_generator(), self.make_generator()
        self.D_A, self.D_B = self.make_discriminator(), self.make_discriminator()
        self.pool_A, self.pool_B = ImagePool(self.opts.pool_size), ImagePool(self.opts.pool_size)

    # ------------------------------------------------------------------ hooks
    def make_generator(self) -> ResnetGenerator:
        m = self.cfg.model
        g = ResnetGenerator(3, 3, ngf=m.ngf, n_blocks=m.n_blocks, antialias=m.antialias, norm=m.norm)
        return init_weights(g, m.init_type, m.init_gain)

    def crop_spec(self) -> CropSpec:
        c = self.cfg.data.crop
        return CropSpec(local=(c, c))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"G": [*self.G_A.parameters(), *self.G_B.parameters()],
                "D": [*self.D_A.parameters(), *self.D_B.parameters()]}

    def discriminators(self) -> list[nn.Module]:
        return [self.D_A, self.D_B]

    def forward_translation(self, batch: dict[str, torch.Tensor]) -> dict:
        real_a, real_b = batch["A_l"], batch["B_l"]
        n_a = real_a.shape[0]
        use_idt = self.opts.lambda_identity > 0
        out_a = self.G_A(torch.cat([real_a, real_b]) if use_idt else real_a)
        out_b = self.G_B(torch.cat([real_b, real_a]) if use_idt else real_b)
        fake_b, fake_a = out_a[:n_a], out_b[:real_b.shape[0]]
        state = {"fake_B": fake_b, "fake_A": fake_a, "rec_A": self.G_B(fake_b), "rec_B": self.G_A(fake_a)}
        if use_idt:
            state["idt_A"], state["idt_B"] = out_a[n_a:], out_b[real_b.shape[0]:]
        return state

    def generator_loss(self, state: dict, batch: dict, progress: float, feedback=None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        o = self.opts
        real_a, real_b = batch["A_l"], batch["B_l"]
        logs = {"G_A": lsgan_loss(self.D_A(state["fake_B"]), True), "G_B": lsgan_loss(self.D_B(state["fake_A"]), True),
                "cycle_A": cycle_loss(state["rec_A"], real_a), "cycle_B": cycle_loss(state["rec_B"], real_b)}
        total = self.cfg.loss.lambda_GAN * (logs["G_A"] + logs["G_B"]) + o.lambda_cycle * (logs["cycle_A"] + logs["cycle_B"])
        if "idt_A" in state:
            logs["idt_A"] = identity_loss(state["idt_A"], real_b)
            logs["idt_B"] = identity_loss(state["idt_B"], real_a)
            total = total + o.lambda_cycle * o.lambda_identity * (logs["idt_A"] + logs["idt_B"])
        if feedback is not None:
            predict = getattr(feedback, "predict_logits", None)
            if predict is None:  # a plain (input, output) -> loss callable: translation terms only
                logs["sem"] = feedback(real_a, state["fake_B"]) + feedback(real_b, state["fake_A"])
                total = total + logs["sem"]
            else:
                w_trans = float(getattr(feedback, "weight", BDL_TRANSLATION_WEIGHT))
                sem = bdl_semantic_losses(predict, real_a, state["fake_B"], state["rec_A"], real_b,
                                          state["fake_A"], state["rec_B"])
                logs.update(sem)
                total = total + w_trans * (sem["sem_A"] + sem["sem_B"]) \
                    + o.lambda_sem_reconstruction * (sem["sem_rec_A"] + sem["sem_rec_B"])
        return total, logs

    def discriminator_loss(self, state: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fake_b = self.pool_B.query(state["fake_B"])
        fake_a = self.pool_A.query(state["fake_A"])
        d_a = 0.5 * (lsgan_loss(self.D_A(batch["B_l"]), True) + lsgan_loss(self.D_A(fake_b), False))
        d_b = 0.5 * (lsgan_loss(self.D_B(batch["A_l"]), True) + lsgan_loss(self.D_B(fake_a), False))
        return d_a + d_b, {"D_A": d_a, "D_B": d_b}

    def feedback_pair(self, state: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["A_l"], state["fake_B"]

    def visuals(self, state: dict, batch: dict) -> list[torch.Tensor]:
        return [batch["A_l"], state["fake_B"], state["rec_A"], batch["B_l"], state["fake_A"], state["rec_B"]]

    def translate_full(self, x: torch.Tensor, tile: int | None = None, overlap: float = 0.25,
                       batch_size: int = 4, blend: str = "mean") -> torch.Tensor:
        """G_A over the whole image or overlapping tiles (default tile: refine.tile or the crop)."""
        tile = tile or self.cfg.refine.tile or self.cfg.data.crop
        return tiled_apply(pad_to_multiple(self.G_A), x, tile, overlap, batch_size, blend)

    # ------------------------------------------------------------------ one iteration
    def train_step(self, batch, progress, optimizers, scaler, feedback=None):
        """Translate; G step (D_A, D_B frozen); D step on pooled fakes. Returns (loss floats, state)."""
        return generator_then_discriminator_step(
            self, batch, lambda state, b: self.generator_loss(state, b, progress, feedback), optimizers, scaler)


__all__ = ["CycleGAN", "CycleGANConfig", "ImagePool", "generator_then_discriminator_step", "section"]
