"""FCN-8s skip-fusion head (Long et al., "Fully Convolutional Networks", CVPR 2015), as in BDL's VGG16 model.

Inputs ``(pool3, pool4, fc7)`` from :class:`~segmenters.models.vgg.FCNVGG`
(``input_transform='multiple_select'``, ``in_index=(0, 1, 2)``)::

    s32 = score_fr(fc7)                                       # conv_seg of BaseDecodeHead
    s16 = up2(s32) + score_pool4(pool4_scale * pool4)        # pool4_scale = 0.01 (Caffe "at-once")
    s8  = up2(s16) + score_pool3(pool3_scale * pool3)        # pool3_scale = 1e-4
    out = up8(s8)

Choices (documented, configurable):
- Upsampling is bilinear interpolation to the exact size of the next skip (and, for ``up8``,
  mmseg's own resize of the logits to the label / input size in ``loss_by_feat`` /
  ``predict_by_feat``) instead of Caffe's bias-free, frozen, bilinear-initialised deconvolutions
  with crop offsets. A frozen bilinear deconv computes the same interpolation; interpolating to the
  skip's size needs no ``padding=100``/crop bookkeeping and works for any input size.
- ``pool4_scale`` / ``pool3_scale`` default to the Caffe "at-once" FCN-8s values (0.01, 1e-4).
- Score layers are zero-initialised as in FCN ("zero-initialize the class scoring layer");
  pass another ``init_cfg`` to change it.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from torch import Tensor

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

_ZERO_INIT = dict(type="Constant", val=0,
                  override=[dict(name="conv_seg"), dict(name="score_pool4"), dict(name="score_pool3")])


@MODELS.register_module(force=True)
class FCN8sHead(BaseDecodeHead):
    """FCN-8s head: score fc7, add scaled score_pool4 and score_pool3 on the way up (stride 8 output).

    Args:
        in_channels: channels of (pool3, pool4, fc7), e.g. (256, 512, 4096) for VGG16.
        pool4_scale: factor on pool4 before score_pool4 (0.01 in the Caffe model).
        pool3_scale: factor on pool3 before score_pool3 (1e-4 in the Caffe model).
        **kwargs: BaseDecodeHead arguments (``num_classes``, ``loss_decode``, ``dropout_ratio``
            (default 0: FCNVGG already applies drop6/drop7), ``align_corners``, ...).
            ``channels`` defaults to ``in_channels[2]``: ``conv_seg`` is FCN's ``score_fr``.
    """

    def __init__(self, in_channels: Sequence[int] = (256, 512, 4096), pool4_scale: float = 0.01,
                 pool3_scale: float = 1e-4, **kwargs) -> None:
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) != 3:
            raise ValueError(f"FCN8sHead: in_channels must list (pool3, pool4, fc7) channels, got {in_channels}")
        kwargs.setdefault("channels", in_channels[2])
        if kwargs["channels"] != in_channels[2]:
            raise ValueError(f"FCN8sHead: channels ({kwargs['channels']}) must equal the fc7 channels "
                             f"({in_channels[2]}): conv_seg is score_fr")
        kwargs.setdefault("in_index", (0, 1, 2))
        kwargs.setdefault("input_transform", "multiple_select")
        kwargs.setdefault("dropout_ratio", 0.0)
        kwargs.setdefault("init_cfg", _ZERO_INIT)
        super().__init__(in_channels=in_channels, **kwargs)
        if self.input_transform != "multiple_select":
            raise ValueError("FCN8sHead: input_transform must be 'multiple_select' (pool3, pool4, fc7)")
        self.pool4_scale = float(pool4_scale)
        self.pool3_scale = float(pool3_scale)
        self.score_pool4 = nn.Conv2d(in_channels[1], self.out_channels, 1)
        self.score_pool3 = nn.Conv2d(in_channels[0], self.out_channels, 1)

    def _up(self, x: Tensor, like: Tensor) -> Tensor:
        return resize(x, size=like.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fused class scores at stride 8 (pool3 resolution); mmseg resizes them to the image size."""
        pool3, pool4, fc7 = self._transform_inputs(inputs)
        score = self.cls_seg(fc7)                                                    # score_fr
        score = self._up(score, pool4) + self.score_pool4(pool4 * self.pool4_scale)  # fuse_pool4
        score = self._up(score, pool3) + self.score_pool3(pool3 * self.pool3_scale)  # fuse_pool3
        return score
