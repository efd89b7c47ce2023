"""Label-driven reconstruction (LDR, Yang et al. ECCV 2020) pieces of its own, wired by :mod:`segmenters.uda.ldr`.

LDR's reconstruction network ``M`` rebuilds an image from the segmenter's (near one-hot) label map
and is trained with the pix2pixHD loss stack (docs/reference.md §5.2 and §6; LDR paper Sec. 3.4,
Eq. 3-6). The generic pix2pixHD blocks (generator, multi-scale discriminator, VGG19 features,
LSGAN / feature-matching / perceptual losses) are shared with the translators and live in the
bottom-layer package ``nets`` (nets/pix2pixhd.py, nets/vgg.py, nets/losses.py); what is LDR's
alone is here:

* :func:`boltzmann_softmax` -- LDR Eq. 3, Omega = softmax(G(X) / tau), tau = 0.001 by default.
* the ``uda.vgg19_weights`` file: :func:`resolve_vgg19_weights` (registry name or path,
  domains/weights.py), :func:`check_vgg19_weights` (start-up check of keys and shapes) and
  :func:`load_vgg19_features` (a :class:`nets.vgg.VGG19Features` loaded ``weights_only=True``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from nets.vgg import VGG19Features, vgg19_features_layers

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# LDR Eq. 3
# ------------------------------------------------------------------------------------------------
def boltzmann_softmax(logits: torch.Tensor, tau: float = 1e-3, dim: int = 1) -> torch.Tensor:
    """Omega = softmax(logits / tau) over ``dim`` (LDR Eq. 3), computed in float32.

    Numerical care: ``torch.softmax`` subtracts the per-pixel maximum before ``exp``, so even
    ``logits / 0.001`` (values ~1e4) cannot overflow; the computation is forced to float32 (outside
    autocast) because fp16 would overflow at 65504 and lose the small gradients. The gradient
    dOmega_i/dz_j = Omega_i (delta_ij - Omega_j) / tau is finite; it is non-zero where the top-2
    logit margin is below roughly 80 tau (exp(-margin/tau) still representable), i.e. Omega is a
    differentiable near-one-hot map whose gradient concentrates on ambiguous pixels -- the
    behaviour the paper's tau = 0.001 ablation (Table 5) selects.
    """
    if tau <= 0:
        raise ValueError(f"Boltzmann temperature tau must be > 0, got {tau}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return torch.softmax(logits.float() / float(tau), dim=dim)


# ------------------------------------------------------------------------------------------------
# the uda.vgg19_weights file
# ------------------------------------------------------------------------------------------------
VGG19_HINT = "; or set uda.vgg19_weights=None to train without the perceptual term"


def resolve_vgg19_weights(spec: str | os.PathLike) -> Path:
    """``uda.vgg19_weights`` as a file: the registry name ``vgg19`` (domains/weights.py) -> the cached
    torchvision file, else the path. A missing file raises ``domains.weights.MissingWeightsError`` (a
    ``FileNotFoundError``) naming the file, URL, config key and fetch command."""
    from domains.weights import resolve

    return resolve(spec, "uda.vgg19_weights", hint=VGG19_HINT)


VGG19_EXPECTED = ("expected torchvision's ImageNet vgg19 weights (vgg19-dcbb9e9d.pth: `python -m domains.weights "
                  "fetch vgg19`) or their features-only state dict")


def _vgg19_state(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The ``features`` state dict (keys ``<i>.weight``) of a VGG19 file, checked against VGG19's
    keys and shapes; ``ValueError`` naming the file, what it holds and what it should be."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name (never torch's weights_only advice)
        from domains.errors import torch_load_problem

        raise ValueError(f"{path}: cannot load VGG19 weights: {torch_load_problem(err)}; {VGG19_EXPECTED}"
                         f"{VGG19_HINT}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a VGG19 state dict, got {type(state).__name__}; {VGG19_EXPECTED}")
    if any(k.startswith("features.") for k in state):
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    wanted = {k: v.shape for k, v in vgg19_features_layers().state_dict().items()}
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"{path}: not a VGG19 state dict (missing {missing[:4]}...; found keys "
                         f"{sorted(state)[:6]}); {VGG19_EXPECTED}")
    wrong = [f"{k}: file {tuple(getattr(state[k], 'shape', ()))} vs VGG19 {tuple(shape)}"
             for k, shape in wanted.items() if tuple(getattr(state[k], "shape", ())) != tuple(shape)]
    if wrong:
        raise ValueError(f"{path}: weights do not fit VGG19 ({len(wrong)} tensors of another shape, e.g. "
                         f"{wrong[:2]}); {VGG19_EXPECTED}")
    return {k: state[k] for k in wanted}


def check_vgg19_weights(spec: str | os.PathLike) -> Path:
    """``uda.vgg19_weights`` resolved and checked at start-up (keys and shapes, the file memory-mapped,
    not read): its path, or ``FileNotFoundError`` / ``ValueError`` naming the file and what to do."""
    path = resolve_vgg19_weights(spec)
    try:
        _vgg19_state(path, mmap=True)
    except ValueError as err:
        if "cannot load" not in str(err):
            raise
        _vgg19_state(path, mmap=False)   # a legacy (non-zip) torch file cannot be memory-mapped
    return path


def load_vgg19_features(path: str | os.PathLike) -> VGG19Features:
    """VGG19 features from a weights file or the registry name ``vgg19``, loaded with ``weights_only=True``.

    Accepts torchvision's full ``vgg19`` state dict (``features.<i>.weight`` keys, e.g. the
    ``vgg19-dcbb9e9d.pth`` download) or a ``features``-only state dict (``<i>.weight``); only the
    convolutions up to relu5_1 are needed. Errors name the file and what was found.
    """
    path = resolve_vgg19_weights(path)
    features = vgg19_features_layers()
    features.load_state_dict(_vgg19_state(path), strict=True)
    logger.info("loaded VGG19 perceptual weights from %s", path)
    return VGG19Features(features)


__all__ = ["VGG19_HINT", "boltzmann_softmax", "check_vgg19_weights", "load_vgg19_features",
           "resolve_vgg19_weights"]
