"""VGG16 backbone for FCN-8s (Long et al. CVPR 2015), registered in mmseg's MODELS as ``FCNVGG``.

Wraps ``mmcv.cnn.VGG`` (five conv stages, max-pool after each, module ``features`` with the same
indices as torchvision ``vgg16().features``, so ImageNet weights map 1:1 to ``features.*``) and adds
the fully-connected layers as convolutions, as in FCN: ``fc6`` (kernel ``fc6_kernel``, 7 in VGG16)
and ``fc7`` (1x1), each followed by ReLU and Dropout2d. Outputs ``(pool3, pool4, fc7)`` at strides
8, 16 and 32 for the FCN-8s head.

Choices (documented, configurable):
- ``widths``: channels of the five conv stages, (64, 128, 256, 512, 512) for VGG16; the tiny preset
  narrows them (mmcv's VGG hard-codes the widths, so for non-default widths ``features`` is rebuilt
  with mmcv's own ``make_vgg_layer``; the layer layout and key names stay identical).
- No Caffe ``padding=100`` on conv1_1 and no crop offsets: pooling uses ``ceil_mode=True`` and fc6 is
  padded (kernel // 2), so the feature maps have sizes ceil(H/8), ceil(H/16), ceil(H/32) for any
  input; the head aligns them by bilinear interpolation.
- torchvision's ``classifier.0``/``classifier.3`` weights map to ``fc6``/``fc7`` after a reshape
  (4096x25088 -> 4096x512x7x7); see :func:`torchvision_vgg16_to_fcn`.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from torch import Tensor

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmcv.cnn import VGG  # noqa: E402
from mmcv.cnn.vgg import make_vgg_layer  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

VGG_WIDTHS = (64, 128, 256, 512, 512)


@MODELS.register_module(force=True)
class FCNVGG(VGG):
    """VGG with fc6/fc7 as convolutions returning ``(pool3, pool4, fc7)``.

    Args:
        depth: VGG depth (11, 13, 16, 19); 16 for FCN-8s.
        widths: output channels of the five conv stages.
        fc_channels: channels of fc6/fc7 (4096 in VGG16).
        fc6_kernel: kernel of fc6 (7 in VGG16; padding kernel // 2 keeps the pool5 size).
        dropout: Dropout2d probability after fc6 and fc7 (0.5 in FCN).
        with_bn, frozen_stages, bn_eval, bn_frozen: as ``mmcv.cnn.VGG``.
    """

    def __init__(self, depth: int = 16, widths: Sequence[int] = VGG_WIDTHS, fc_channels: int = 4096,
                 fc6_kernel: int = 7, dropout: float = 0.5, with_bn: bool = False,
                 frozen_stages: int = -1, bn_eval: bool = True, bn_frozen: bool = False,
                 init_cfg: dict | None = None) -> None:
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5:
            raise ValueError(f"FCNVGG: widths must give 5 stage widths, got {widths}")
        if fc6_kernel % 2 != 1:
            raise ValueError(f"FCNVGG: fc6_kernel must be odd (got {fc6_kernel})")
        super().__init__(depth, with_bn=with_bn, num_classes=-1, num_stages=5, dilations=(1,) * 5,
                         out_indices=(2, 3, 4), frozen_stages=frozen_stages, bn_eval=bn_eval,
                         bn_frozen=bn_frozen, ceil_mode=True, with_last_pool=True)
        if widths != VGG_WIDTHS:
            layers: list[nn.Module] = []
            inplanes = 3
            for planes, blocks in zip(widths, self.stage_blocks):
                layers.extend(make_vgg_layer(inplanes, planes, blocks, with_bn=with_bn, ceil_mode=True))
                inplanes = planes
            self.features = nn.Sequential(*layers)
        self.widths = widths
        self.init_cfg = init_cfg
        self.fc6 = nn.Conv2d(widths[4], fc_channels, fc6_kernel, padding=fc6_kernel // 2)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d(dropout)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d(dropout)
        self.out_channels = (widths[2], widths[3], fc_channels)

    def init_weights(self, pretrained: str | None = None) -> None:
        """Kaiming init of convs (mmcv VGG); pretrained weights go through segmenters.checkpoint."""
        if pretrained is not None:
            raise ValueError("FCNVGG: load pretrained weights with the config's init_from (weights_only) "
                             "instead of backbone.pretrained")
        super().init_weights(None)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pool3, pool4, pool5 = super().forward(x)
        fc7 = self.drop7(self.relu7(self.fc7(self.drop6(self.relu6(self.fc6(pool5))))))
        return pool3, pool4, fc7


def torchvision_vgg16_to_fcn(state_dict: dict[str, Tensor], prefix: str = "backbone.") -> dict[str, Tensor]:
    """Map a torchvision ``vgg16`` state dict to FCNVGG keys (``features.*`` as is, fc6/fc7 reshaped).

    :func:`segmenters.checkpoint.load_init_weights` applies it when ``init_from`` is a torchvision VGG16
    file (the paper preset's ``"vgg16"``, docs/weights.md), so the download is used as it is.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("features."):
            out[prefix + key] = value
    if "classifier.0.weight" in state_dict:
        w6 = state_dict["classifier.0.weight"]
        out[prefix + "fc6.weight"] = w6.reshape(w6.shape[0], -1, 7, 7)
        out[prefix + "fc6.bias"] = state_dict["classifier.0.bias"]
        w7 = state_dict["classifier.3.weight"]
        out[prefix + "fc7.weight"] = w7.reshape(w7.shape[0], w7.shape[1], 1, 1)
        out[prefix + "fc7.bias"] = state_dict["classifier.3.bias"]
    return out


__all__ = ["FCNVGG", "VGG_WIDTHS", "torchvision_vgg16_to_fcn"]
