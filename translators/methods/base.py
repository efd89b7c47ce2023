"""Shared machinery of the one-sided contrastive translators (CUT, SemST).

* :class:`TranslatorMethod`: one training iteration in CUT's order -- translate, D step, then the
  G+F step -- with AMP (autocast + GradScaler) and channels_last on CUDA, and on CPU in float32 or,
  when asked (``train.cpu_amp``), under bf16 autocast; non-finite losses raise :class:`NonFiniteLossError` *before* any optimiser step.
* :meth:`TranslatorMethod.content_losses`: the contrastive (PatchNCE or hDCE) and TS terms of one
  generator/F pair. The key (input) side reuses the encoder features of the translation pass
  (``forward_with_features``) instead of re-encoding the input as CUT does (same values, one encoder
  pass saved) and is embedded under ``no_grad``: CUT/SRC detach the key anyway, and we also detach
  the input side of the TS loss so F cannot raise the mutual information on its own. The source
  and identity rows are scored in one contrastive call per layer (negatives and hDCE weights are
  per image, so this equals two calls).
* :func:`tune_cpu_allocator` (called by ``setup`` on CPU): glibc keeps freed tensor memory instead
  of unmapping it, so large activations are not page-faulted again every step (the largest single
  CPU speed-up at crop 256; TRANSLATOR_NO_MALLOC_TUNING=1, or a ``cpu_malloc_tuning = False``
  field on the train config, turns it off).
* :func:`tiled_apply`: fully convolutional inference over overlapping tiles whose per-pixel weights
  sum to 1 (bounded memory for any image size).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from translators.config import ConfigError, TranslatorConfig
from translators.data import CropSpec
from translators.losses import (hdce_coupled_value, hdce_gamma, hdce_loss, hdce_weights, lsgan_loss, patchnce_loss,
                                ts_loss)
from translators.networks import NLayerDiscriminator, PatchSampleF, ResnetGenerator, init_weights


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/Inf; raised before the optimiser step so the weights stay finite."""

    def __init__(self, name: str, value: float) -> None:
        super().__init__(f"loss '{name}' is {value}")
        self.name, self.value = name, value


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed CPU tensor memory in the process instead of returning it to the OS (glibc only).

    By default glibc serves every large allocation (above a threshold of 128 KiB to 32 MiB) with a
    fresh ``mmap`` and unmaps it on free, so each activation of a training step is page-faulted
    and zeroed by the kernel again, every step. At crop 256 that made memory-bound ops (padding,
    norms, blur, ReLU backward) several times slower than their arithmetic. ``mallopt`` with
    M_MMAP_MAX=0 and a huge M_TRIM_THRESHOLD makes the heap keep and reuse the memory; the peak
    RSS is unchanged (the memory is reused, not grown). Process-wide, idempotent, a no-op where
    glibc's ``mallopt`` is unavailable; set ``TRANSLATOR_NO_MALLOC_TUNING=1`` to skip it.
    Returns whether the setting is active."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("TRANSLATOR_NO_MALLOC_TUNING") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), so bf16 autocast is a
    speed-up rather than an emulation. False where torch cannot tell."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except RuntimeError:
        return False


def resolve_cpu_amp(setting: str | bool) -> bool:
    """``train.cpu_amp``: ``on``/true -> True, ``off``/false -> False, ``auto`` ->
    :func:`cpu_has_native_bf16` (YAML reads a bare on/off as a boolean, so both spellings count)."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return cpu_has_native_bf16()
    return setting == "on"


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


class TranslatorMethod(nn.Module):
    """Base class. Subclasses build their networks and implement the hooks below."""

    name = "base"
    #: set by multi-process training (translators.distributed.all_reduce_mean): logged losses are
    #: averaged over ranks before the non-finite check, so every rank raises (or not) together
    log_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(self, cfg: TranslatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.amp_enabled = False
        self.amp_dtype = torch.float16
        self.channels_last = False

    # ------------------------------------------------------------------ building
    def make_generator(self) -> ResnetGenerator:
        m = self.cfg.model
        g = ResnetGenerator(3, 3, ngf=m.ngf, n_blocks=m.n_blocks, antialias=m.antialias, norm=m.norm)
        return init_weights(g, m.init_type, m.init_gain)

    def make_discriminator(self) -> NLayerDiscriminator:
        m = self.cfg.model
        d = NLayerDiscriminator(3, ndf=m.ndf, n_layers=m.n_layers_D, antialias=m.antialias, norm=m.norm)
        return init_weights(d, m.init_type, m.init_gain)

    def make_patch_mlp(self, g: ResnetGenerator) -> PatchSampleF:
        try:
            channels = g.feature_channels(self.cfg.loss.nce_layers)
        except ValueError as err:
            raise ConfigError(f"loss.nce_layers: {err}") from err
        m = self.cfg.model
        return PatchSampleF(channels, nc=m.netF_nc, init_type=m.init_type, init_gain=m.init_gain)

    # ------------------------------------------------------------------ hooks
    def crop_spec(self) -> CropSpec:
        raise NotImplementedError

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimiser: ``G`` (generators, scale head), ``F``, ``D``."""
        raise NotImplementedError

    def discriminators(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward_translation(self, batch: dict[str, torch.Tensor]) -> dict:
        raise NotImplementedError

    def discriminator_loss(self, state: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def generator_loss(self, state: dict, batch: dict, progress: float
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def feedback_pair(self, state: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, output) images at the same geometry for the semantic-consistency loss."""
        raise NotImplementedError

    def visuals(self, state: dict, batch: dict) -> list[torch.Tensor]:
        """Equal-size (B, 3, h, w) images in [-1, 1] for the sample grid (one column each)."""
        raise NotImplementedError

    def translate_full(self, x: torch.Tensor, tile: int | None = None, overlap: float = 0.25,
                       batch_size: int = 4, blend: str = "mean") -> torch.Tensor:
        raise NotImplementedError

    def translate(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-image translation of (B, 3, H, W) in [-1, 1] (no tiling)."""
        side = max(x.shape[-2:])
        return torch.cat([self.translate_full(xi[None], tile=side) for xi in x])

    # ------------------------------------------------------------------ device / AMP
    def setup(self, device: torch.device, cpu_amp: bool = False) -> "TranslatorMethod":
        """Move to ``device``; enable AMP and channels_last there when configured (CUDA), or bf16
        autocast on CPU when ``cpu_amp`` (training resolves ``train.cpu_amp``; inference stays fp32)."""
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda:
            self.amp_enabled = bool(self.cfg.train.amp)
            self.amp_dtype = torch.bfloat16 if self.cfg.train.amp_dtype == "bfloat16" else torch.float16
        else:
            self.amp_enabled = bool(cpu_amp and self.device.type == "cpu")
            self.amp_dtype = torch.bfloat16
        self.channels_last = bool(self.cfg.train.channels_last and cuda)
        if self.device.type == "cpu" and getattr(self.cfg.train, "cpu_malloc_tuning", True):
            tune_cpu_allocator()
        self.to(self.device)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def autocast(self):
        if not self.amp_enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def full_precision(self):
        """Region that runs in float32 even inside :meth:`autocast` (losses on float32 inputs)."""
        if not self.amp_enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, enabled=False)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ------------------------------------------------------------------ losses
    def gamma(self, progress: float) -> float:
        c = self.cfg.loss
        return hdce_gamma(progress, None, c.hdce_gamma_start, c.hdce_gamma_end, c.hdce_step_at, c.hdce_step_gamma)

    def contrastive(self, q: list[torch.Tensor], k: list[torch.Tensor], n_img: int, progress: float
                    ) -> torch.Tensor:
        """Mean over layers of the mean per-query PatchNCE (CUT Eq. 3) or hDCE (SemST Eq. 8-9)."""
        return torch.stack([t.mean() for t in self.contrastive_per_query(q, k, n_img, progress)]).mean()

    def contrastive_per_query(self, q: list[torch.Tensor], k: list[torch.Tensor], n_img: int,
                              progress: float) -> list[torch.Tensor]:
        """Per-layer (n_img * P,) per-query PatchNCE / hDCE losses. Every image only sees its own
        patches (negatives and hDCE weights are per image), so one call over a batch equals
        separate calls per image (used to score source and identity rows together)."""
        c = self.cfg.loss
        terms = []
        gamma = self.gamma(progress) if c.contrastive == "hdce" else None
        for ql, kl in zip(q, k):
            if c.contrastive == "hdce":
                w = hdce_weights(kl, gamma, batch_size=n_img)
                terms.append(hdce_loss(ql, kl, w, tau=c.nce_T, batch_size=n_img, form=c.hdce_form))
            else:
                terms.append(patchnce_loss(ql, kl, tau=c.nce_T, batch_size=n_img))
        return terms

    def ts(self, k: list[torch.Tensor], q: list[torch.Tensor], n_img: int) -> torch.Tensor:
        """SemST Eq. 1: -mean rSMI between input (k, detached) and output (q) embeddings."""
        c = self.cfg.loss
        if c.ts_patches is not None:
            def first(t: torch.Tensor) -> torch.Tensor:
                t = t.reshape(n_img, -1, t.shape[-1])
                return t[:, : c.ts_patches].reshape(-1, t.shape[-1])
            k, q = [first(t) for t in k], [first(t) for t in q]
        return ts_loss(k, q, batch_size=n_img, alpha=c.ts_alpha, lam=c.ts_lam, n_centres=c.ts_n_centres,
                       detach_centres=c.ts_detach_centres)

    def content_losses(self, g: ResnetGenerator, f: PatchSampleF, feats_real: list[torch.Tensor],
                       fake_all: torch.Tensor, n_src: int, progress: float) -> dict[str, torch.Tensor]:
        """Contrastive (+ identity) and TS terms of one branch.

        ``feats_real``: encoder features of the branch input (source images first, then the target
        images when identity NCE is on) from the translation pass; ``fake_all``: the branch output
        for the same batch. Patch ids are drawn on the input features and reused for the output
        (as CUT). The identity term uses the target rows (SRC: hDCE weights from real_B)."""
        c = self.cfg.loss
        feats_fake = g(fake_all, c.nce_layers, encode_only=True)
        with torch.no_grad():
            k, ids = f([t.detach() for t in feats_real], c.num_patches)
        q, _ = f(feats_fake, c.num_patches, ids)
        n_all = fake_all.shape[0]
        rows = [n_src * len(i) for i in ids]
        q_src = [ql[:r] for ql, r in zip(q, rows)]
        k_src = [kl[:r] for kl, r in zip(k, rows)]
        # the embeddings are float32; the similarity logits (up to 1/tau) and the TS solve stay
        # float32 under autocast too (bf16 logits would carry errors of ~0.05 at 1/tau = 14)
        with self.full_precision():
            # source and identity rows in one call per layer (per-image maths, so identical to two calls)
            per_query = self.contrastive_per_query(q, k, n_all, progress)
            out = {"NCE": torch.stack([t[:r].mean() for t, r in zip(per_query, rows)]).mean()}
            if n_all > n_src:
                out["NCE_idt"] = torch.stack([t[r:].mean() for t, r in zip(per_query, rows)]).mean()
            if c.contrastive == "hdce":     # SRC's logged value (coupled CE) beside the decoupled loss
                out["NCE_ce"] = torch.stack([hdce_coupled_value(t[:r]) for t, r in zip(per_query, rows)]).mean()
            if c.lambda_TS > 0:
                out["TS"] = self.ts(k_src, q_src, n_src)
        return out

    def weighted_content(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """lambda_NCE * (NCE, or 1/2 (NCE + NCE_idt) as CUT/SRC) + lambda_TS * TS."""
        c = self.cfg.loss
        nce = 0.5 * (parts["NCE"] + parts["NCE_idt"]) if "NCE_idt" in parts else parts["NCE"]
        total = c.lambda_NCE * nce
        if "TS" in parts:
            total = total + c.lambda_TS * parts["TS"]
        return total

    @staticmethod
    def d_loss_pair(d: nn.Module, fakes: list[torch.Tensor], real: torch.Tensor) -> torch.Tensor:
        """0.5 * (LSGAN(D(real), 1) + mean over fakes LSGAN(D(fake), 0)), one batched D pass."""
        preds = d(torch.cat([*[t.detach() for t in fakes], real]))
        n = real.shape[0]
        chunks = preds.split([t.shape[0] for t in fakes] + [n])
        fake_term = torch.stack([lsgan_loss(p, False) for p in chunks[:-1]]).mean()
        return 0.5 * (fake_term + lsgan_loss(chunks[-1], True))

    # ------------------------------------------------------------------ one iteration
    def _finite(self, logs: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss floats (rank means under :attr:`log_reducer`); NonFiniteLossError on NaN/Inf."""
        names = list(logs)
        values = torch.stack([logs[k].detach().float().reshape(()) for k in names])
        if self.log_reducer is not None:
            values = self.log_reducer(values)
        values = values.cpu().tolist()
        for k, v in zip(names, values):
            if v != v or v in (float("inf"), float("-inf")):
                raise NonFiniteLossError(k, v)
        return dict(zip(names, values))

    def train_step(self, batch: dict[str, torch.Tensor], progress: float,
                   optimizers: dict[str, torch.optim.Optimizer], scaler: torch.amp.GradScaler,
                   feedback: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                   ) -> tuple[dict[str, float], dict]:
        """One iteration: translate, update D, update G and F. Returns (loss floats, state)."""
        batch = {k: (self.prepare_input(v) if v.dim() == 4 else v.to(self.device)) for k, v in batch.items()}
        with self.autocast():
            state = self.forward_translation(batch)
        # ---- D step
        nets_d = self.discriminators()
        set_requires_grad(nets_d, True)
        optimizers["D"].zero_grad(set_to_none=True)
        with self.autocast():
            loss_d, logs_d = self.discriminator_loss(state, batch)
        logs = self._finite({"D": loss_d, **logs_d})
        scaler.scale(loss_d).backward()
        scaler.step(optimizers["D"])
        # ---- G + F step
        set_requires_grad(nets_d, False)
        optimizers["G"].zero_grad(set_to_none=True)
        optimizers["F"].zero_grad(set_to_none=True)
        with self.autocast():
            loss_g, logs_g = self.generator_loss(state, batch, progress)
            if feedback is not None:
                sem = feedback(*self.feedback_pair(state, batch))
                logs_g["sem"] = sem
                loss_g = loss_g + sem
        logs.update(self._finite({"G": loss_g, **logs_g}))
        scaler.scale(loss_g).backward()
        scaler.step(optimizers["G"])
        scaler.step(optimizers["F"])
        scaler.update()
        set_requires_grad(nets_d, True)
        return logs, state


# ---------------------------------------------------------------------- tiled inference
def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Tile origins covering [0, size): stride = tile * (1 - overlap), the last tile flush right."""
    if size <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return sorted(set(starts))


def tile_weight(h: int, w: int, blend: str, device: torch.device) -> torch.Tensor:
    """(1, 1, h, w) positive blending weights: flat (``mean``) or a linear ramp to the edges."""
    if blend == "mean":
        return torch.ones(1, 1, h, w, device=device)
    ry = torch.minimum(torch.arange(1, h + 1, device=device), torch.arange(h, 0, -1, device=device)).float()
    rx = torch.minimum(torch.arange(1, w + 1, device=device), torch.arange(w, 0, -1, device=device)).float()
    return (ry[:, None] * rx[None, :])[None, None]


def pad_to_multiple(fn: Callable[[torch.Tensor], torch.Tensor], multiple: int = 4
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap ``fn`` so inputs are padded (reflect) to a multiple of ``multiple`` and outputs cropped
    back (the ResNet generator halves the resolution twice)."""
    def wrapped(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph == 0 and pw == 0:
            return fn(x)
        mode = "reflect" if ph < h and pw < w else "replicate"
        y = fn(F.pad(x, (0, pw, 0, ph), mode=mode))
        return y[..., :h, :w]
    return wrapped


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int | None,
                overlap: float = 0.25, batch_size: int = 4, blend: str = "mean") -> torch.Tensor:
    """Apply a fully convolutional ``fn`` to (1, C, H, W) over overlapping ``tile`` x ``tile`` tiles
    (batched ``batch_size`` at a time) and average the overlaps with weights summing to 1 per pixel.
    ``tile`` None or >= the image: one whole-image pass. Output accumulates in float32."""
    if x.shape[0] != 1:
        raise ValueError("tiled_apply expects a single image (1, C, H, W)")
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return fn(x).float()
    th, tw = min(tile, h), min(tile, w)
    boxes = [(y, xx) for y in tile_starts(h, th, overlap) for xx in tile_starts(w, tw, overlap)]
    weight = tile_weight(th, tw, blend, x.device)
    acc = None
    wsum = torch.zeros(1, 1, h, w, device=x.device)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        out = fn(torch.cat([x[..., y:y + th, xx:xx + tw] for y, xx in chunk])).float()
        if acc is None:
            acc = torch.zeros(1, out.shape[1], h, w, device=x.device)
        for j, (y, xx) in enumerate(chunk):
            acc[..., y:y + th, xx:xx + tw] += out[j:j + 1] * weight
            wsum[..., y:y + th, xx:xx + tw] += weight
    return acc / wsum
