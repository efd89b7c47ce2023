"""Semantic-consistency feedback from a frozen segmenter (BDL, docs/reference.md §7.1).

L_sem(x, G(x)) = weight * mean( (IN(f(x)) - IN(f(G(x))))^2 ),

with f the segmenter's logit map and IN an affine-free instance norm over each logit channel.
BDL uses weight 0.1 for translation-vs-input. The segmenter is frozen (eval, no parameter
gradients) but differentiable, so the gradient reaches the generator through f(G(x)); f(x) is
computed without a graph. Used from round 1 on (``--feedback-segmenter``).

The segmenter is loaded only through the public loader ``segmenters.loader.load_segmenter``
(imported lazily: ``translators`` needs ``segmenters`` only when feedback is requested).
Its ``predict_logits(images)`` takes float RGB (B, 3, H, W) in [0, 255] and must be
differentiable (no ``torch.no_grad``/``inference_mode`` inside).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class FeedbackError(RuntimeError):
    """The feedback segmenter cannot be loaded; the message names the checkpoint."""


def semantic_consistency_loss(logits_in: torch.Tensor, logits_out: torch.Tensor) -> torch.Tensor:
    """BDL's L_sem: MSE between instance-normalised logit maps (B, C, h, w)."""
    return F.mse_loss(F.instance_norm(logits_out.float()), F.instance_norm(logits_in.float()))


def to_pixel_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 255] float (the segmenter's input convention)."""
    return (x.float() + 1.0) * 127.5


class SemanticFeedback:
    """Callable ``(input, output) -> weight * L_sem`` around a frozen segmenter."""

    def __init__(self, predict_logits: Callable[[torch.Tensor], torch.Tensor], model: nn.Module | None,
                 weight: float = 0.1) -> None:
        self.predict_logits, self.model, self.weight = predict_logits, model, float(weight)
        if model is not None:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)

    def __call__(self, x_in: torch.Tensor, y_out: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits_in = self.predict_logits(to_pixel_range(x_in))
        logits_out = self.predict_logits(to_pixel_range(y_out))
        return self.weight * semantic_consistency_loss(logits_in.detach(), logits_out)


def load_feedback(checkpoint: str | Path, weight: float, device: torch.device | str) -> SemanticFeedback:
    """Load the segmenter through ``segmenters.loader.load_segmenter`` and wrap it."""
    try:
        from segmenters.loader import load_segmenter  # lazy: optional dependency direction
    except ImportError as err:
        raise FeedbackError(f"--feedback-segmenter needs segmenters.loader.load_segmenter, which is not "
                            f"importable ({err})") from err
    if not Path(checkpoint).is_file():
        raise FeedbackError(f"feedback segmenter checkpoint {checkpoint} not found")
    try:
        seg = load_segmenter(str(checkpoint), device)
    except (ValueError, RuntimeError, OSError) as err:
        raise FeedbackError(f"cannot load feedback segmenter {checkpoint}: {err}") from err
    return SemanticFeedback(seg.predict_logits, getattr(seg, "model", None), weight)
