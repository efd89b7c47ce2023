"""MMSegmentation 1.x extensions: DeepLab-V2 / FCN-8s segmenters, UDA methods, train/evaluate CLIs.

Importing the package first installs the ``mmcv.ops`` stand-in (:mod:`segmenters.compat`, needed with
mmcv-lite before any ``mmseg.models`` import), then registers the project's models in mmseg's
``MODELS`` registry (:mod:`segmenters.models`).
"""
from . import compat

compat.install_mmcv_ops_stand_in()

from . import models  # noqa: E402,F401  (registers DLV2Head, FCNVGG, FCN8sHead)

__all__ = ["compat", "models"]
