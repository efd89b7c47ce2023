"""DeepLab-V2 classifier head ("ASPP as a sum"), Chen et al. TPAMI 2017, as used by AdaptSegNet/BDL.

Four parallel 3x3 convolutions with dilation = padding in ``dilations`` go from the backbone's last
stage (2048 channels for ResNet-101 at output stride 8) straight to ``num_classes``; their outputs
are SUMMED - no BN, no ReLU, no concatenation, no image pooling (docs/reference.md §8.3).
Weights N(0, 0.01), biases 0.

``dilations=(6, 12, 18, 24)`` (default) is the DeepLab-V2 / BDL head. ``dilations=(6, 12)``
reproduces the AdaptSegNet-lineage code, whose ``return`` inside the branch loop sums only the first
two branches (DAFormer keeps it on purpose; docs/reference.md §8.3).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmseg.models.decode_heads.aspp_head import ASPPModule  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402


@MODELS.register_module(force=True)
class DLV2Head(BaseDecodeHead):
    """DeepLab-V2 head: ``sum_i conv3x3_{d_i}(x)`` with ``d_i`` in ``dilations``.

    Args:
        dilations: dilation (= padding) of each 3x3 branch; (6, 12, 18, 24) or (6, 12).
        **kwargs: BaseDecodeHead arguments (``in_channels``, ``num_classes``, ``in_index``,
            ``loss_decode``, ``align_corners``, ...). ``channels`` is fixed to 1 and
            ``dropout_ratio``/``norm_cfg``/``act_cfg`` are forced off: the branches output class
            scores directly, so BaseDecodeHead's ``conv_seg`` is removed.
    """

    def __init__(self, dilations: Sequence[int] = (6, 12, 18, 24), **kwargs) -> None:
        if len(dilations) == 0:
            raise ValueError("DLV2Head: dilations must name at least one branch, e.g. (6, 12, 18, 24)")
        for key in ("channels", "dropout_ratio", "norm_cfg", "act_cfg"):
            if kwargs.get(key) not in (None, 1 if key == "channels" else 0, 0.0):
                raise ValueError(f"DLV2Head: {key}={kwargs[key]!r} is not supported (the DeepLab-V2 "
                                 "head has no hidden channels, dropout, norm or activation)")
            kwargs.pop(key, None)
        # BaseDecodeHead's default init_cfg overrides 'conv_seg', which is deleted below; without this
        # override runner.train() fails: "module did not have attribute conv_seg" (docs/reference.md §8.4).
        kwargs.setdefault("init_cfg", dict(type="Normal", std=0.01, override=dict(name="aspp_modules")))
        super().__init__(channels=1, dropout_ratio=0, norm_cfg=None, act_cfg=None, **kwargs)
        del self.conv_seg
        self.dilations = tuple(int(d) for d in dilations)
        self.aspp_modules = ASPPModule(self.dilations, self.in_channels, self.out_channels,
                                       conv_cfg=self.conv_cfg, norm_cfg=None, act_cfg=None)

    def branch_outputs(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Per-dilation class scores (B, num_classes, h, w) before summation."""
        x = self._transform_inputs(inputs)
        return self.aspp_modules(x)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Class scores at the backbone's output stride: the sum of the branch outputs."""
        outs = self.branch_outputs(inputs)
        total = outs[0]
        for out in outs[1:]:
            total = total + out
        return total
