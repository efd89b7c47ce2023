"""Project models registered in mmseg's ``MODELS`` (DeepLab-V2 head, FCN VGG16 backbone, FCN-8s head)."""
from .. import compat

compat.install_mmcv_ops_stand_in()

from .dlv2_head import DLV2Head  # noqa: E402
from .fcn8s_head import FCN8sHead  # noqa: E402
from .vgg import FCNVGG  # noqa: E402

__all__ = ["DLV2Head", "FCN8sHead", "FCNVGG"]
