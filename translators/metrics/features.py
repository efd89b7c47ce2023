"""Feature extractors for FID / KID: a protocol plus the FID Inception-V3 (pool3, 2048-d).

Any callable that maps a batch of RGB images ``(B, 3, H, W)`` float in [0, 255] to ``(B, D)``
features and has ``dim`` (D), ``input_size`` ((h, w) every image is resized to before batching,
or None to keep sizes) and ``name`` (written to result CSVs) is a :class:`FeatureExtractor`; the
statistics in :mod:`translators.metrics.fid` never look inside it.

:class:`InceptionFeatures` loads the Inception weights from a **file given by path**, or by the
registry name ``pt_inception`` of domains/weights.py (the file in the weights cache, fetched with
``python -m domains.weights fetch pt_inception`` on a machine with internet; nothing is downloaded
here; see :func:`load_inception` and docs/weights.md). Supported files, recognised by their keys
(``torch.load(..., weights_only=True)``, a plain state dict):

* ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid release asset) and
  ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity release asset): the TF FID
  Inception ported to torchvision's ``Inception3`` key layout with a 1008-way ``fc``. These give
  the FID used in papers. Run as in pytorch-fid: bilinear resize to 299x299
  (align_corners=False, no antialias), scale [0, 255] -> [-1, 1], the TF pooling variants
  (average pools exclude padding; the last block uses max pooling), pool3 features.
* torchvision's ImageNet ``inception_v3_google-*.pth`` (1000-way ``fc``, optional ``AuxLogits``):
  accepted, but its features differ from the TF network, so values are **not comparable** with
  published FIDs (the result CSV names the layout).

:class:`RandomConvFeatures` is a small fixed random conv net for unit tests and smoke runs of the
pipeline where no Inception file exists; its numbers are only comparable with themselves.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import inception as tv_inception

from . import MetricsInputError

logger = logging.getLogger(__name__)

#: what to tell a user who has no weights file
INCEPTION_HELP = (
    "FID/KID need the FID Inception-V3 weights file, which cannot be downloaded here. On a machine "
    "with internet, run `python -m domains.weights fetch pt_inception` (or fetch "
    "pt_inception-2015-12-05-6726825d.pth from the pytorch-fid GitHub releases, "
    "github.com/mseitzer/pytorch-fid/releases, v0.1.0, or weights-inception-2015-12-05-6726825d.pth "
    "from the torch-fidelity releases, github.com/toshas/torch-fidelity/releases, v0.2.0), copy it "
    "here and pass --inception-weights PATH (or set FID_INCEPTION_WEIGHTS=PATH); with the file in the "
    "weights cache (docs/weights.md) --inception-weights pt_inception finds it."
)
WEIGHTS_ENV = "FID_INCEPTION_WEIGHTS"
#: registry name of domains/weights.py accepted in place of a path
REGISTRY_NAME = "pt_inception"


class InceptionWeightsError(MetricsInputError):
    """The Inception weights file is missing or has an unknown layout; the message says what to do."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """images (B, 3, H, W) float RGB in [0, 255] -> features (B, dim)."""

    dim: int
    input_size: tuple[int, int] | None
    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


class _TFPoolMixin:
    """Replace torchvision's ``branch_pool`` average pooling by the TF variant.

    ``pool="avg"``: 3x3/1 average that excludes zero padding (TF ``avg_pool`` with SAME padding);
    ``pool="max"``: 3x3/1 max pooling (the TF graph's last block, ``mixed_10``).
    """

    pool: str = "avg"

    def _pool(self, x: Tensor) -> Tensor:
        if self.pool == "max":
            return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _TFInceptionA(_TFPoolMixin, tv_inception.InceptionA):
    def _forward(self, x: Tensor) -> list[Tensor]:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [b1, b5, b3, self.branch_pool(self._pool(x))]


class _TFInceptionC(_TFPoolMixin, tv_inception.InceptionC):
    def _forward(self, x: Tensor) -> list[Tensor]:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
        return [b1, b7, bd, self.branch_pool(self._pool(x))]


class _TFInceptionE(_TFPoolMixin, tv_inception.InceptionE):
    def _forward(self, x: Tensor) -> list[Tensor]:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return [b1, b3, bd, self.branch_pool(self._pool(x))]


def build_fid_inception(num_classes: int = 1008) -> tv_inception.Inception3:
    """torchvision ``Inception3`` with the TF FID graph's pooling (weights not initialised)."""
    blocks = [tv_inception.BasicConv2d, _TFInceptionA, tv_inception.InceptionB, _TFInceptionC,
              tv_inception.InceptionD, _TFInceptionE, tv_inception.InceptionAux]
    model = tv_inception.Inception3(num_classes=num_classes, aux_logits=False, transform_input=False,
                                    inception_blocks=blocks, init_weights=False)
    model.Mixed_7c.pool = "max"
    return model


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name and what to do (not torch's advice)
        from domains.errors import torch_load_problem

        raise InceptionWeightsError(f"{path}: cannot be read as a PyTorch weights file with weights_only=True "
                                    f"({torch_load_problem(err)}). {INCEPTION_HELP}") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InceptionWeightsError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}. "
                                    f"{INCEPTION_HELP}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def resolve_weights_path(path: str | os.PathLike | None) -> Path:
    """``path`` or ``$FID_INCEPTION_WEIGHTS``: a file, or the registry name ``pt_inception`` (its file in
    the weights cache of domains/weights.py); :class:`InceptionWeightsError` when neither names a file."""
    if path is None:
        path = os.environ.get(WEIGHTS_ENV)
    if not path:
        raise InceptionWeightsError(f"no Inception weights file given. {INCEPTION_HELP}")
    if os.fspath(path) == REGISTRY_NAME:
        from domains.weights import MissingWeightsError, resolve

        try:
            return resolve(REGISTRY_NAME, f"--inception-weights (or ${WEIGHTS_ENV})")
        except MissingWeightsError as err:
            raise InceptionWeightsError(str(err)) from err
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weights file {path} does not exist. {INCEPTION_HELP}")
    return path


def load_inception(path: str | os.PathLike | None) -> tuple[nn.Module, str]:
    """Build and load the Inception network from a weights file; returns (model, layout).

    layout ``"fid"`` (1008-way fc: pytorch-fid / torch-fidelity files, TF pooling) or
    ``"torchvision"`` (1000-way fc, torchvision's own pooling and ImageNet input normalisation).
    """
    path = resolve_weights_path(path)
    state = _read_state_dict(path)
    fc = state.get("fc.weight")
    if fc is None or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise InceptionWeightsError(f"{path}: not an Inception-V3 state dict (no 'fc.weight' / 'Mixed_7c.*' keys). "
                                    f"{INCEPTION_HELP}")
    if fc.shape[0] == 1008:
        layout, model = "fid", build_fid_inception(1008)
    else:
        layout = "torchvision"
        model = tv_inception.Inception3(num_classes=int(fc.shape[0]), aux_logits=False, transform_input=True,
                                        init_weights=False)
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        logger.warning("%s: torchvision ImageNet Inception layout; FID/KID values are not comparable with "
                       "published ones (those use the TF FID Inception, 1008 classes)", path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InceptionWeightsError(f"{path}: weights do not fit Inception-V3 ({str(err)[:1000]}). "
                                    f"{INCEPTION_HELP}") from err
    model.fc = nn.Identity()       # pool3 features: adaptive average pool -> flatten (dropout is off in eval)
    return model.eval().requires_grad_(False), layout


class InceptionFeatures:
    """2048-d pool3 features of the FID Inception-V3, loaded from ``weights`` (see module doc)."""

    dim = 2048
    input_size = (299, 299)

    def __init__(self, weights: str | os.PathLike | None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model, self.layout = load_inception(weights)
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.name = f"inception-v3-{self.layout}"

    def __call__(self, images: Tensor) -> Tensor:
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        if self.layout == "fid":
            x = x / 127.5 - 1.0                      # pytorch-fid: [0, 1] -> 2x - 1
        else:
            x = x / 255.0                            # Inception3(transform_input=True) maps ImageNet-normalised
            mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
            std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
            x = (x - mean) / std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()


class RandomConvFeatures(nn.Module):
    """A fixed, randomly initialised conv net (seeded): 3 strided convs + global average pool.

    For tests and tiny smoke runs only: its features are not Inception features, so its "FID" is
    not comparable with anything but itself (the CSV's ``features`` column says which was used).
    """

    def __init__(self, dim: int = 32, input_size: tuple[int, int] | None = (64, 64), seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        widths = (3, 16, 32, dim)
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.normal_(0.0, (2.0 / (9 * cin)) ** 0.5, generator=gen)
                conv.bias.uniform_(-0.1, 0.1, generator=gen)
            layers += [conv, nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)
        self.dim = dim
        self.input_size = input_size
        self.name = f"random-conv(dim={dim},seed={seed})"
        self.device = torch.device(device)
        self.to(self.device).eval().requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.to(self.device, torch.float32) / 127.5 - 1.0
        return self.net(x).mean(dim=(2, 3))


__all__ = ["FeatureExtractor", "InceptionFeatures", "InceptionWeightsError", "RandomConvFeatures",
           "build_fid_inception", "load_inception", "resolve_weights_path", "INCEPTION_HELP"]
