"""VGG19 perceptual feature extractor (relu1_1 .. relu5_1) and the pix2pixHD/SPADE layer weights.

:class:`VGG19Features` is torchvision's VGG19 ``features`` cut into relu1_1, relu2_1, relu3_1,
relu4_1, relu5_1 (slices [0:2], [2:7], [7:12], [12:21], [21:30]); ``VGG19Features()`` is randomly
initialised (tests), ``VGG19Features(features)`` wraps trained layers. Reading a weight file is the
caller's job (LDR's checked loader: segmenters/uda/ldr_parts.py).
"""
from __future__ import annotations

import torch
from torch import nn

#: pix2pixHD / SPADE VGG19 layer weights for relu1_1 .. relu5_1
VGG_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
#: slices of torchvision's ``vgg19().features`` ending at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features_layers() -> nn.Sequential:
    """torchvision's VGG19 ``features`` up to relu5_1 (layer indices 0..29), randomly initialised.

    Built with ``torchvision.models.vgg.make_layers`` so the 100M-parameter classifier of
    ``vgg19()`` is never allocated; the layer indices (and state-dict keys) equal ``vgg19().features``."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["E"], batch_norm=False)[:VGG_SLICES[-1][1]]


class VGG19Features(nn.Module):
    """Frozen VGG19 slices ending at relu1_1 .. relu5_1 for images in [-1, 1] (RGB).

    Inputs are mapped to [0, 1] and normalised with the ImageNet mean/std that torchvision's
    weights expect (pix2pixHD feeds [-1, 1] unnormalised; normalising is our choice, it matches
    the weights' training statistics). Parameters never require grad; gradients still flow to
    the input. LDR builds it from a user weight file with ``segmenters.uda.ldr_parts.load_vgg19_features``.
    """

    def __init__(self, features: nn.Sequential | None = None) -> None:
        super().__init__()
        if features is None:
            features = vgg19_features_layers()
        features = features[:VGG_SLICES[-1][1]]
        self.slices = nn.ModuleList(nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in VGG_SLICES)
        for m in self.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":  # always eval (no dropout/BN anyway)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x.float() + 1.0) * 0.5 - self.mean) / self.std
        feats = []
        for s in self.slices:
            x = s(x)
            feats.append(x)
        return feats


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VGG19Features", "VGG_LAYER_WEIGHTS", "VGG_SLICES",
           "vgg19_features_layers"]
