"""CUT (Park et al., ECCV 2020): one-sided translation with PatchNCE (docs/reference.md §1).

L_G = lambda_GAN * LSGAN(D(G(x)), 1) + lambda_NCE * 1/2 (NCE(x, G(x)) + NCE(y, G(y)))  [nce_idt]
L_D = 1/2 (LSGAN(D(y), 1) + LSGAN(D(G(x)), 0)).

As in CUT, x and y go through G in one forward pass (``cat(x, y)``). Differences (speed, same
maths): the input-side NCE features come from that same pass (``forward_with_features``) rather
than a second encoder pass; D scores fake and real in one batched pass (InstanceNorm is
per-sample, so this is exact); the source and identity terms share the patch positions (CUT
already shares them across the batch). ``loss.lambda_TS > 0`` adds SemST's TS term (CUT + TS).
"""
from __future__ import annotations

import torch

from translators.data import CropSpec
from translators.losses import lsgan_loss

from .base import TranslatorMethod, pad_to_multiple, tiled_apply


class CUT(TranslatorMethod):
    name = "cut"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.G = self.make_generator()
        self.F = self.make_patch_mlp(self.G)
        self.D = self.make_discriminator()

    def crop_spec(self) -> CropSpec:
        c = self.cfg.data.crop
        return CropSpec(local=(c, c))

    def param_groups(self):
        return {"G": list(self.G.parameters()), "F": list(self.F.parameters()), "D": list(self.D.parameters())}

    def discriminators(self):
        return [self.D]

    def forward_translation(self, batch):
        real_a, real_b = batch["A_l"], batch["B_l"]
        real = torch.cat([real_a, real_b]) if self.cfg.loss.nce_idt else real_a
        fake_all, feats_real = self.G.forward_with_features(real, self.cfg.loss.nce_layers)
        n = real_a.shape[0]
        return {"fake_all": fake_all, "fake": fake_all[:n], "feats_real": feats_real, "n": n}

    def discriminator_loss(self, state, batch):
        return self.d_loss_pair(self.D, [state["fake"]], batch["B_l"]), {}

    def generator_loss(self, state, batch, progress):
        gan = lsgan_loss(self.D(state["fake"]), True)
        parts = self.content_losses(self.G, self.F, state["feats_real"], state["fake_all"], state["n"], progress)
        total = self.cfg.loss.lambda_GAN * gan + self.weighted_content(parts)
        return total, {"G_GAN": gan, **parts}

    def feedback_pair(self, state, batch):
        return batch["A_l"], state["fake"]

    def visuals(self, state, batch):
        cols = [batch["A_l"], state["fake"], batch["B_l"]]
        if self.cfg.loss.nce_idt:
            cols.append(state["fake_all"][state["n"]:])
        return cols

    def translate_full(self, x, tile=None, overlap=0.25, batch_size=4, blend="mean"):
        """G over the whole image, or over overlapping tiles (default tile: the training crop)."""
        tile = tile or self.cfg.refine.tile or self.cfg.data.crop
        return tiled_apply(pad_to_multiple(self.G), x, tile, overlap, batch_size, blend)
