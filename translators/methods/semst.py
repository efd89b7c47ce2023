"""SemST (Zhao et al., arXiv 2310.04995 + supplement): multi-scale CUT-style translation with
hDCE and the texture-structure (TS) loss.

Objective (supplement Eq. 2-4):
    L = lambda_TS (L_TS^g + L_TS^l) + lambda_hDCE (L_hDCE^g + L_hDCE^l) + lambda_GAN L_GAN,
each branch b in {g, l} has its own generator G_b and patch MLP F_b (supplement 2.1.1-2.1.2);
L_hDCE^b is 1/2 (hDCE(x_b, G_b(x_b)) + hDCE(y_b, G_b(y_b))) with identity terms when
``loss.nce_idt`` (SRC's ``--dce_idt``, on by default), L_TS^b = -mean rSMI (Eq. 1-3) on the
source rows only. ``loss.contrastive: patchnce`` gives the "w/o hDCE" ablation, ``lambda_TS`` the
TS-weight ablation and ``semst.multiscale: false`` the "w/o multiscale" one (local branch only).

Multi-scale geometry -- the paper leaves it open; our choices (all in this file and data.py):

* Crops (Eq. 4-5): a global window of h_g * r native pixels (``data.global_ratio`` r, default 2)
  is downsampled to h_g -> X_g; the local crop h_l is taken at native resolution **inside** that
  window -> X_l, with its offset recorded (``box``).
* Scale map: the ASPP head S on G_g's bottleneck of X_g gives M_s at h_g x w_g (supplement 2.1.3).
* Alignment (Eq. 6): Y_g and M_s are upsampled to the window's native size and the local crop's
  window is taken -- done in one step by bilinear ``grid_sample`` at the local pixels' centres
  (:func:`window_grid`; identical to ``interpolate(align_corners=False)`` + crop).
  Y = M_s * Y_l + (1 - M_s) * Y_g, at native resolution h_l x w_l.
* Discriminators: ``semst.gan_on`` -- ``fused`` (default: one PatchGAN on the fused output vs
  native-resolution target crops, the single D of the paper's Fig. 2), ``local`` (the same D also
  sees Y_l), ``global`` (a second PatchGAN D_g on Y_g vs downsampled target windows). The G-side
  GAN term is the mean over the listed outputs.
* Inference (:meth:`SemST.translate_full`): G_g + S on the whole image downsampled by r (the
  training scale relation: one global-crop pixel = r native pixels; tiled above
  ``refine.global_max_side``), Y_g and M_s upsampled to full size; G_l over overlapping native
  tiles of ``refine.tile`` (default h_l) averaged with weights summing to 1; fused by Eq. 6.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from translators.data import CropSpec, resize
from translators.losses import lsgan_loss
from translators.networks import ScaleAttention, init_weights

from .base import TranslatorMethod, pad_to_multiple, tiled_apply


def window_grid(box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sampling grid (B, h, w, 2) for ``grid_sample(align_corners=False)`` that reads, from a map
    covering a whole global window, the values at the local crop's pixel centres.

    ``box`` (B, 4) = (top, left, win_h, win_w) in native pixels. Native pixel (top + i) of a window
    of height win_h has normalised coordinate 2 (top + i + 0.5) / win_h - 1, independent of the
    map's own resolution -- exactly where bilinear upsampling with align_corners=False to the
    window's native size would put it."""
    h, w = size
    box = box.to(torch.float32)
    iy = torch.arange(h, device=box.device, dtype=torch.float32) + 0.5
    ix = torch.arange(w, device=box.device, dtype=torch.float32) + 0.5
    gy = 2.0 * (box[:, 0:1] + iy[None]) / box[:, 2:3] - 1.0   # (B, h)
    gx = 2.0 * (box[:, 1:2] + ix[None]) / box[:, 3:4] - 1.0   # (B, w)
    return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)


def sample_window(m: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear read of ``m`` at ``grid`` (edge-clamped, as interpolate's border handling)."""
    return F.grid_sample(m.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(m.dtype)


def fuse(y_local: torch.Tensor, y_global: torch.Tensor, m_s: torch.Tensor) -> torch.Tensor:
    """SemST Eq. 6: Y = M_s * Y_l + (1 - M_s) * Y_g (all at the same geometry)."""
    return m_s * y_local + (1.0 - m_s) * y_global


class SemST(TranslatorMethod):
    name = "semst"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.multiscale = cfg.semst.multiscale
        self.G_l = self.make_generator()
        self.F_l = self.make_patch_mlp(self.G_l)
        gan_on = set(cfg.semst.gan_on)
        if self.multiscale:
            self.G_g = self.make_generator()
            self.F_g = self.make_patch_mlp(self.G_g)
            m = cfg.model
            self.S = init_weights(ScaleAttention(self.G_g.bottleneck_channels, mid_channels=m.scale_mid_channels,
                                                 kernel_size=m.scale_kernel), m.init_type, m.init_gain)
        self.D = self.make_discriminator() if gan_on & {"fused", "local"} else None
        self.D_g = self.make_discriminator() if "global" in gan_on and self.multiscale else None

    # ------------------------------------------------------------------ plumbing
    def crop_spec(self) -> CropSpec:
        d = self.cfg.data
        if not self.multiscale:
            return CropSpec(local=(d.local_crop, d.local_crop))
        return CropSpec(local=(d.local_crop, d.local_crop), global_=(d.global_crop, d.global_crop), ratio=d.global_ratio)

    def param_groups(self):
        g = list(self.G_l.parameters())
        f = list(self.F_l.parameters())
        if self.multiscale:
            g += list(self.G_g.parameters()) + list(self.S.parameters())
            f += list(self.F_g.parameters())
        d = [p for net in self.discriminators() for p in net.parameters()]
        return {"G": g, "F": f, "D": d}

    def discriminators(self):
        return [net for net in (self.D, self.D_g) if net is not None]

    # ------------------------------------------------------------------ training
    def _global_pass(self, x: torch.Tensor, n_src: int):
        """G_g with NCE taps + bottleneck in one pass; scale map from the source rows' bottleneck."""
        layers = list(self.cfg.loss.nce_layers)
        b = self.G_g.bottleneck_index
        taps = layers if b in layers else layers + [b]
        y, feats = self.G_g.forward_with_features(x, taps)
        m_s = self.S(feats[taps.index(b)][:n_src], out_size=x.shape[-2:])
        return y, feats[: len(layers)], m_s

    def forward_translation(self, batch):
        idt = self.cfg.loss.nce_idt
        a_l = batch["A_l"]
        n = a_l.shape[0]
        x_l = torch.cat([a_l, batch["B_l"]]) if idt else a_l
        y_l_all, feats_l = self.G_l.forward_with_features(x_l, self.cfg.loss.nce_layers)
        state = {"n": n, "y_l_all": y_l_all, "y_l": y_l_all[:n], "feats_l": feats_l}
        if not self.multiscale:
            state["fused"] = state["y_l"]
            return state
        x_g = torch.cat([batch["A_g"], batch["B_g"]]) if idt else batch["A_g"]
        y_g_all, feats_g, m_s = self._global_pass(x_g, n)
        grid = window_grid(batch["A_box"], a_l.shape[-2:])
        y_g_win = sample_window(y_g_all[:n], grid)
        m_win = sample_window(m_s, grid)
        state.update(y_g_all=y_g_all, y_g=y_g_all[:n], feats_g=feats_g, m_s=m_s, y_g_win=y_g_win,
                     m_win=m_win, fused=fuse(state["y_l"], y_g_win, m_win))
        return state

    def _fakes(self, state) -> dict[str, list[torch.Tensor]]:
        gan_on = self.cfg.semst.gan_on
        native = [state[k] for k, name in (("fused", "fused"), ("y_l", "local")) if name in gan_on]
        out = {"D": native} if self.D is not None else {}
        if self.D_g is not None:
            out["D_g"] = [state["y_g"]]
        return out

    def discriminator_loss(self, state, batch):
        logs, total = {}, 0.0
        for name, fakes in self._fakes(state).items():
            real = batch["B_l"] if name == "D" else batch["B_g"]
            term = self.d_loss_pair(getattr(self, name), fakes, real)
            logs[name if name != "D" else "D_native"] = term
            total = total + term
        return total, logs

    def generator_loss(self, state, batch, progress):
        c = self.cfg.loss
        gan = torch.stack([lsgan_loss(getattr(self, name)(fake), True)
                           for name, fakes in self._fakes(state).items() for fake in fakes]).mean()
        logs = {"G_GAN": gan}
        total = c.lambda_GAN * gan
        branches = [("l", self.G_l, self.F_l, state["feats_l"], state["y_l_all"])]
        if self.multiscale:
            branches.append(("g", self.G_g, self.F_g, state["feats_g"], state["y_g_all"]))
        nce_sum, ts_sum = 0.0, 0.0
        for tag, g, f, feats, y_all in branches:
            parts = self.content_losses(g, f, feats, y_all, state["n"], progress)
            total = total + self.weighted_content(parts)
            nce = 0.5 * (parts["NCE"] + parts["NCE_idt"]) if "NCE_idt" in parts else parts["NCE"]
            nce_sum = nce_sum + nce
            logs.update({f"{k}_{tag}": v for k, v in parts.items()})
            if "TS" in parts:
                ts_sum = ts_sum + parts["TS"]
        logs["NCE"] = nce_sum  # L_hDCE = L^g + L^l (supplement Eq. 3)
        if c.lambda_TS > 0:
            logs["TS"] = ts_sum
        if self.multiscale:
            logs["M_s"] = state["m_win"].detach().float().mean()
        return total, logs

    def feedback_pair(self, state, batch):
        return batch["A_l"], state["fused"]

    def visuals(self, state, batch):
        cols = [batch["A_l"], state["fused"], state["y_l"]]
        if self.multiscale:
            cols += [state["y_g_win"], (state["m_win"] * 2 - 1).expand(-1, 3, -1, -1)]
        return cols + [batch["B_l"]]

    # ------------------------------------------------------------------ inference
    def global_branch(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w): Y_g (3 channels) and M_s (1 channel) of an already-downsampled image."""
        b = self.G_g.bottleneck_index
        y, feats = self.G_g.forward_with_features(x, [b])
        return torch.cat([y, self.S(feats[0], out_size=x.shape[-2:]).to(y.dtype)], dim=1)

    def global_size(self, h: int, w: int) -> tuple[int, int]:
        r = self.cfg.data.global_ratio
        return max(4, round(h / r)), max(4, round(w / r))

    def translate_full(self, x, tile=None, overlap=0.25, batch_size=4, blend="mean"):
        """Full-resolution SemST on (1, 3, H, W); see the module docstring (Inference)."""
        tile = tile or self.cfg.refine.tile or self.cfg.data.local_crop
        y_l = tiled_apply(pad_to_multiple(self.G_l), x, tile, overlap, batch_size, blend)
        if not self.multiscale:
            return y_l
        h, w = x.shape[-2:]
        x_g = resize(x, self.global_size(h, w))
        g_max = self.cfg.refine.global_max_side
        g_tile = g_max if g_max is not None and max(x_g.shape[-2:]) > g_max else None
        g = tiled_apply(pad_to_multiple(self.global_branch), x_g, g_tile, overlap, batch_size, blend)
        g = F.interpolate(g, size=(h, w), mode="bilinear", align_corners=False)
        return fuse(y_l, g[:, :3], g[:, 3:4])
