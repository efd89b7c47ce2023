"""ClassMix domain mixing and the DACS strong augmentation, as used by SePiCo (docs/reference.md §9.1).

ClassMix (Olsson et al. 2021; DACS, Tranheden et al. 2021): half of the classes present in a
source label map are picked at random; their source pixels are pasted onto the target image.
The same binary mask mixes images, labels (source GT / target pseudo-label) and pixel weights
(1 on source pixels / the pseudo-label weight on target pixels), so every mixed pixel keeps the
label and weight of the image its colour came from.

Choices (the public DACS/DAFormer code differs; the brief and the paper text were followed):

* Classes are picked per image from that image's own label map with the ignore index excluded,
  ``ceil(n/2)`` of ``n`` classes. DACS/DAFormer's ``get_class_masks`` draws from ``unique`` of the
  whole batch and can pick the ignore label 255 (then ignored source pixels are pasted too).
* ``strong_transform`` samples its random parameters per image from a ``torch.Generator`` (the
  public code draws one set per call with Python's ``random``); the operations and ranges are DACS':
  colour jitter with strength s (brightness, contrast, saturation factors U[1-s, 1+s], hue shift
  U[-s, s] of the hue circle, applied in random order), applied when u > p for u ~ U(0, 1), i.e.
  with probability 1 - p (DACS's ``if color_jitter > p``: with the configured p = 0.2 the jitter is
  applied 80% of the time); Gaussian blur with probability 0.5, sigma U(0.15, 1.15) and a kernel of
  about 10% of the image side (odd), run as two 1-D convolutions (:func:`gaussian_blur`).
* Normalisation is explicit: with ``mean``/``std`` (mmseg ``SegDataPreProcessor`` units, 0..255)
  the images are normalised inputs; they are de-normalised to [0, 1], augmented with torchvision's
  tensor ops, clamped to [0, 1] and normalised again. Without ``mean``/``std`` the images are taken
  as 0..255 RGB.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def class_mix_masks(source_labels: Tensor, num_classes_to_pick: int | str = "half",
                    generator: torch.Generator | None = None, ignore_index: int = 255) -> Tensor:
    """ClassMix masks ``(B, 1, H, W)`` (float 0/1) from source labels ``(B, H, W)``.

    For each image, ``ceil(n/2)`` (``"half"``) or ``min(k, n)`` (int k) of its ``n`` present classes
    (``ignore_index`` excluded) are drawn without replacement; the mask is 1 on their pixels.
    ``generator`` is a CPU ``torch.Generator`` (only the class draw uses it; labels may be on GPU).
    """
    if source_labels.dim() == 4 and source_labels.shape[1] == 1:
        source_labels = source_labels[:, 0]
    if source_labels.dim() != 3:
        raise ValueError(f"class_mix_masks: source_labels must be (B, H, W), got {tuple(source_labels.shape)}")
    if not (num_classes_to_pick == "half" or (isinstance(num_classes_to_pick, int) and num_classes_to_pick >= 0)):
        raise ValueError(f"class_mix_masks: num_classes_to_pick must be 'half' or an int >= 0, "
                         f"got {num_classes_to_pick!r}")
    masks = []
    for label in source_labels:
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        n = int(classes.numel())
        k = (n + 1) // 2 if num_classes_to_pick == "half" else min(int(num_classes_to_pick), n)
        order = torch.randperm(n, generator=generator)
        chosen = classes[order[:k].to(classes.device)]
        masks.append(torch.isin(label, chosen))
    return torch.stack(masks)[:, None].float()


def mix(mask: Tensor, src: Tensor, trg: Tensor) -> Tensor:
    """``mask * src + (1 - mask) * trg`` for images ``(B, C, H, W)``, labels or weights ``(B, H, W)``
    or ``(B, 1, H, W)``; the dtype is kept (labels stay integer)."""
    if src.shape != trg.shape:
        raise ValueError(f"mix: src {tuple(src.shape)} and trg {tuple(trg.shape)} differ")
    m = mask.bool()
    if m.dim() == 4 and src.dim() == 3:
        m = m[:, 0]
    if m.shape[0] != src.shape[0] or m.shape[-2:] != src.shape[-2:]:
        raise ValueError(f"mix: mask {tuple(mask.shape)} does not fit tensors {tuple(src.shape)}")
    return torch.where(m, src, trg)


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator).item())


def blur_kernel_size(side: int) -> int:
    """DACS kernel size for an image side: the odd number at or just below ``ceil(0.1 * side)``."""
    k = int(torch.ceil(torch.tensor(0.1 * side)).item())
    k = k if k % 2 == 1 else k - 1
    return max(k, 1)


def gaussian_blur(img: Tensor, kernel_size: tuple[int, int], sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(..., C, H, W)`` with odd ``kernel_size`` (ky, kx) and reflect padding:
    the same kernel and padding as ``torchvision.transforms.v2.functional.gaussian_blur`` (whose 2-D
    kernel is the outer product of these 1-D ones) at O(ky + kx) instead of O(ky * kx) per pixel,
    which matters for DACS kernels of ~10% of the image side (63 at 640 px)."""
    ky, kx = kernel_size
    shape = img.shape
    x = img.reshape(-1, 1, *shape[-2:])
    for k, dim in ((kx, 3), (ky, 2)):
        if k <= 1:
            continue
        half = (k - 1) * 0.5
        t = torch.linspace(-half, half, k, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        if dim == 3:
            x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect"), kernel.view(1, 1, 1, k))
        else:
            x = F.conv2d(F.pad(x, (0, 0, k // 2, k // 2), mode="reflect"), kernel.view(1, 1, k, 1))
    return x.reshape(shape)


def _jitter(img: Tensor, s: float, generator: torch.Generator | None) -> Tensor:
    """Colour jitter of one [0, 1] image ``(3, H, W)`` with strength s, random order."""
    # imported here, not at module level: torchvision costs ~1 s of start-up in every job that
    # imports the UDA methods, and only SePiCo/ProDA's strong augmentation calls it
    import torchvision.transforms.v2.functional as TF

    ops = [
        lambda x: TF.adjust_brightness(x, _uniform(generator, max(0.0, 1 - s), 1 + s)),
        lambda x: TF.adjust_contrast(x, _uniform(generator, max(0.0, 1 - s), 1 + s)),
        lambda x: TF.adjust_saturation(x, _uniform(generator, max(0.0, 1 - s), 1 + s)),
        lambda x: TF.adjust_hue(x, _uniform(generator, -min(s, 0.5), min(s, 0.5))),
    ]
    for i in torch.randperm(4, generator=generator).tolist():
        img = ops[i](img)
    return img


def strong_transform(images: Tensor, generator: torch.Generator | None = None,
                     mean: Sequence[float] | Tensor | None = None, std: Sequence[float] | Tensor | None = None,
                     color_jitter_s: float = 0.2, color_jitter_p: float = 0.2, blur: bool = True) -> Tensor:
    """DACS strong augmentation (colour jitter + Gaussian blur) of RGB images ``(B, 3, H, W)``.

    Args:
        images: normalised images if ``mean``/``std`` are given (``(x - mean) / std`` with x in
            0..255), else RGB in 0..255.
        generator: CPU ``torch.Generator`` for the per-image parameters (same state -> same output).
        mean, std: per-channel normalisation (0..255 units), e.g. the data preprocessor's.
        color_jitter_s: jitter strength s (SePiCo 0.2).
        color_jitter_p: DACS threshold p: jitter is applied when u > p (probability 1 - p).
        blur: enable the Gaussian blur (applied with probability 0.5 per image).

    Returns:
        Augmented images in the input convention (a new tensor; no autograd history needed).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"strong_transform: images must be (B, 3, H, W), got {tuple(images.shape)}")
    if (mean is None) != (std is None):
        raise ValueError("strong_transform: give both mean and std (normalised inputs) or neither (0..255)")
    x = images.detach().float()
    if mean is not None:
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        sd = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * sd + m) / 255.0
    else:
        x = x / 255.0
    x = x.clamp(0.0, 1.0)
    h, w = x.shape[-2:]
    ky, kx = blur_kernel_size(h), blur_kernel_size(w)
    out = []
    for img in x:
        if torch.rand((), generator=generator).item() > color_jitter_p:
            img = _jitter(img, color_jitter_s, generator)
        if blur and torch.rand((), generator=generator).item() > 0.5:
            sigma = _uniform(generator, 0.15, 1.15)
            img = gaussian_blur(img, (ky, kx), sigma)
        out.append(img.clamp(0.0, 1.0))
    y = torch.stack(out)
    if mean is not None:
        return (y * 255.0 - m) / sd
    return y * 255.0
