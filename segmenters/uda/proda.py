"""ProDA (Zhang et al., CVPR 2021; docs/reference.md §9.2) as three UDA methods, one per stage.

``--uda`` name -> stage (the workflow runs them as rounds 0, 1, 2, 3 of ``results/<pair>_proda_<tr>.csv``):

* ``proda_warmup`` (stage 0, round 0): source CE + output-space adversarial alignment with an
  LS-GAN (ProDA ``--stage warm_up``: FCDiscriminator on the softmax output, ``MSELoss``,
  ``--adv 0.01``, D Adam 1e-4 (0.9, 0.99), labels source 0 / target 1):

      L_G = CE(G(x_s), y_s) + adv * MSE(D(softmax G(x_t)), 0)
      L_D = 1/2 [MSE(D(softmax G(x_s)), 0) + MSE(D(softmax G(x_t)), 1)]

* ``proda_stage1`` (round 1; ``--pseudo`` = the folder written by ``python -m segmenters prototypes``
  from the warm-up model: soft pseudo-labels in ``confidences.h5`` (``soft/<stem>``) and the initial
  prototypes in ``prototypes.h5``). Per iteration, with the EMA teacher (alpha 0.999, BN buffers
  copied) on the (weak) target view x_t:

      w = softmax_k(-(||f~ - eta_k|| - min_j ||f~ - eta_j||) T)                (Eq. 4, rectification)
      y^ = argmax_k (w_k p_k^soft)                                            (Eq. 5, rectified label)
      L = CE(G(x_s), y_s) + SCE(G(x_t), y^)  [alpha 0.1 CE + beta 1.0 RCE]       (Eq. 6 with SCE)
          + proto_consistW * KL(softmax(-||f~ - eta|| T) || softmax(-||f(A(x_t)) - eta|| T))   (Eq. 7)
          + regular_w * MRKLD(G(x_t))                                         (KL-to-uniform regulariser)

  then the EMA step and the prototype moving average (momentum 1e-4) on the teacher's features
  with the teacher's argmax (classes absent from the batch keep their prototype).
* ``proda_distill`` (rounds 2 and 3 = ProDA stages 2 and 3): hard pseudo-labels of the previous
  stage's model at 0.95 confidence (``--pseudo``, written by ``segmenters pseudolabel --rule fixed
  --threshold 0.95``) and KL self-distillation from that model (``uda.proda.teacher``, frozen):

      L = CE(G(x_s), y_s) + CE(G(x_t), y^) + S_pseudo * CE(G(A(x_t)), y^) + distillation * KL(T(x_t) || G(x_t))

Choices (documented; all configurable in ``uda.proda``):

* Prototype feature space: the decode head's input, i.e. the backbone output ``feat_in_index``
  (default: the head's last ``in_index``; ResNet layer4, 2048-d at paper scale). ProDA's own
  DeepLab-V2 has a 256-d ASPP bottleneck before its 1x1 classifier; our DeepLab-V2 (DLV2Head, the
  same network every other method trains) has no hidden layer, so the penultimate features are the
  backbone's and ``final.pth`` stays a plain DLV2Head model.
* The strong view A(x_t) is the DACS photometric augmentation (colour jitter + blur,
  :func:`segmenters.uda.mix.strong_transform`) of the weak view, so teacher and student features are
  pixel-aligned without ProDA's geometric ``full2weak`` mapping.
* Losses with pseudo-labels are computed at 1/``feature_stride`` (4) of the crop (ProDA's 1/4): the
  rectification weights (feature resolution) and soft labels are resized bilinearly to it. The
  prototype consistency is computed at the feature resolution.
* Stages 2/3: the student starts from ``--init`` (the workflow passes the previous stage's model)
  instead of SimCLR weights (not available); ``--ema_bn`` of stage 3 is not reproduced. The source
  CE is kept in stages 2/3 (weight ``source_weight_distill``, default 1).
* At preset ``paper`` the segmenter optimiser follows ProDA (SGD momentum 0.9, wd 2e-4; lr 1e-4
  without a head multiplier in stage 1, 6e-4 with the 10x head in stages 2/3); ``batch_size=4`` and
  ``max_iters`` are the config's (set them with ``--cfg-options``). Tiny keeps the tiny config's.
* Classes without a prototype (count 0 in ``prototypes.h5``: the warm-up model predicted them nowhere)
  take no part in the rectification (weight 0) and the prototype consistency until the moving
  average has seen them; otherwise their zero vectors would be the nearest "prototype" of
  low-norm features and flip every pseudo-label (measured on minicity: 13 of 19 classes absent).
* The EMA teacher of stage 1 starts as a copy of the student at the first iteration of a fresh run
  (i.e. of the ``--init`` weights), or from ``uda.proda.teacher`` when that is set.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmcv.transforms import BaseTransform  # noqa: E402
from mmengine.optim import OptimWrapper, OptimWrapperDict  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.datasets.transforms import PackSegInputs  # noqa: E402
from mmseg.models.segmentors import EncoderDecoder  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import MODELS, TRANSFORMS  # noqa: E402

from ..datasets import _missing_message, train_pipeline  # noqa: E402
from .base import (SEGMENTOR_KEY, TrainError, TrainInputs, UDAMethod, UDASegmentor,  # noqa: E402
                   source_dataset_cfg, target_dataset_cfg, uda_param)
from .bdl import BDL, BDLSegmentor, DISCRIMINATOR_KEY, SOURCE_LABEL, TARGET_LABEL  # noqa: E402
from .ema import ema_update  # noqa: E402
from .mix import strong_transform  # noqa: E402
from .proda_parts import (PrototypeMemory, ProDAConfig, distillation_kl, kl_uniform_regulariser,  # noqa: E402
                          load_prototypes, prototype_consistency_loss, rectification_weights,
                          rectify_pseudo_labels, symmetric_cross_entropy)
from .sepico import current_iteration  # noqa: E402
from . import sepico as _sepico  # noqa: E402,F401  (registers SePiCoOptimWrapperConstructor)

logger = logging.getLogger(__name__)

from domains.labels import IGNORE_INDEX  # noqa: E402  (one definition: the label tables)
TEACHER_KEY = "ema_teacher"
DISTILL_TEACHER_KEY = "teacher"
PROTO_KEY = "proto_memory"
#: files of a ProDA stage-1 pseudo-label folder (``python -m segmenters prototypes``)
SOFT_FILE = "confidences.h5"
PROTO_FILE = "prototypes.h5"
SOFT_GROUP = "soft"


# --------------------------------------------------------------------------------------------------
# settings: ProDAConfig (proda_parts) + the options of this module
@dataclass(frozen=True)
class ProDAOptions:
    """Settings of the stage segmentors that are not in :class:`ProDAConfig` (``uda.proda.<key>``)."""

    teacher: str | None = None          # final.pth: distillation teacher (stages 2/3) / EMA init (stage 1)
    feat_in_index: int | None = None    # backbone output used as prototype features (None: head's last)
    color_jitter_s: float = 0.2         # strong view (DACS photometric augmentation)
    color_jitter_p: float = 0.2
    blur: bool = True
    source_weight_distill: float = 1.0  # source CE weight in stages 2/3


def _split_settings(user: Mapping[str, Any], key: str = "uda.proda") -> tuple[ProDAConfig, ProDAOptions]:
    user = dict(user or {})
    opt_names = {f.name for f in fields(ProDAOptions)}
    known = opt_names | {f.name for f in fields(ProDAConfig)}
    unknown = sorted(k for k in user if k not in known)
    if unknown:
        raise TrainError(f"{key}.{unknown[0]}: not a ProDA setting; valid keys: {sorted(known)}")
    opts = ProDAOptions(**{k: v for k, v in user.items() if k in opt_names})
    try:
        cfg = ProDAConfig.from_dict({k: v for k, v in user.items() if k not in opt_names}, key=key)
    except (TypeError, ValueError) as err:
        raise TrainError(str(err) if str(err).startswith(key) else f"{key}: {err}") from err
    return cfg, opts


def proda_settings(cfg: Any) -> dict:
    """The config's ``uda.proda`` dict (plain); an error naming the key when it is not a dict."""
    uda = cfg.get("uda", None) or {}
    user = uda.get("proda", None) or {}
    if hasattr(user, "to_dict"):
        user = user.to_dict()
    if not isinstance(user, Mapping):
        raise TrainError(f"config key 'uda.proda' must be a dict of ProDA settings, got {type(user).__name__}")
    return {k: v for k, v in dict(user).items()}


def _feat_index(decode_head: nn.Module, index: int | None) -> int:
    in_index = decode_head.in_index
    last = int(in_index[-1] if isinstance(in_index, (list, tuple)) else in_index)
    return last if index is None else int(index)


# --------------------------------------------------------------------------------------------------
# data: soft pseudo-labels through the training pipeline
@TRANSFORMS.register_module(force=True)
class LoadSoftPseudoLabel(BaseTransform):
    """Adds ``results['soft_label']`` (H, W, C) float32: the stored ``soft/<stem>`` probabilities of
    ``h5_path`` resized (bilinear) to the current image size. Put it right after ``Resize``; it joins
    ``seg_fields`` so mmseg's ``RandomCrop`` and ``RandomFlip`` crop and flip it with the image."""

    def __init__(self, h5_path: str) -> None:
        self.h5_path = str(h5_path)
        self._h5 = None

    def _file(self):
        if self._h5 is None:  # opened lazily: once per (forked) data-loader worker
            import h5py

            self._h5 = h5py.File(self.h5_path, "r")
        return self._h5

    def transform(self, results: dict) -> dict:
        stem = results["stem"]
        key = f"{SOFT_GROUP}/{stem}"
        h5 = self._file()
        if key not in h5:
            raise KeyError(f"{self.h5_path}: no soft pseudo-label '{key}'; regenerate the folder with "
                           "`python -m segmenters prototypes`")
        soft = torch.from_numpy(h5[key][()].astype(np.float32))[None]  # (1, C, h, w)
        h, w = results["img"].shape[:2]
        soft = F.interpolate(soft, size=(h, w), mode="bilinear", align_corners=False)[0]
        results["soft_label"] = np.ascontiguousarray(soft.permute(1, 2, 0).numpy())
        results.setdefault("seg_fields", []).append("soft_label")
        return results


@TRANSFORMS.register_module(force=True)
class PackSoftPseudoLabel(PackSegInputs):
    """``PackSegInputs`` that also packs ``results['soft_label']`` as ``data_sample.soft_label``
    (``PixelData`` (C, H, W) float16). mmseg's ``RandomCrop`` and ``RandomFlip`` already transformed it
    (it is in ``seg_fields``)."""

    def transform(self, results: dict) -> dict:
        soft = results.pop("soft_label", None)
        if "seg_fields" in results and "soft_label" in results["seg_fields"]:
            results["seg_fields"] = [k for k in results["seg_fields"] if k != "soft_label"]
        packed = super().transform(results)
        if soft is not None:
            tensor = torch.from_numpy(np.ascontiguousarray(soft.transpose(2, 0, 1))).half()
            packed["data_samples"].set_data(dict(soft_label=PixelData(data=tensor)))
        return packed


def soft_pipeline(cfg: Any, h5_path: Path, flip_prob: float, cat_max_ratio: float) -> list[dict]:
    """The target training pipeline with the soft pseudo-label loaded after the resize."""
    pipe = train_pipeline(cfg.target_scale, cfg.crop_size, flip_prob=flip_prob, cat_max_ratio=cat_max_ratio)
    at = next(i for i, t in enumerate(pipe) if t["type"] == "Resize") + 1
    pipe.insert(at, dict(type="LoadSoftPseudoLabel", h5_path=str(h5_path)))
    pipe[-1] = dict(type="PackSoftPseudoLabel")
    return pipe


def check_soft_labels(folder: Path, stems: Sequence[str]) -> None:
    """Clear errors when a stage-1 pseudo-label folder lacks its files or some images' soft labels."""
    import h5py

    folder = Path(folder)
    hint = "create it with `python -m segmenters prototypes --checkpoint <warm-up final.pth> --out " f"{folder}`"
    for name in (SOFT_FILE, PROTO_FILE):
        if not (folder / name).is_file():
            raise TrainError(f"{folder}: ProDA stage-1 pseudo-label folder has no {name}; {hint}")
    with h5py.File(folder / SOFT_FILE, "r") as h5:
        have = set()
        if SOFT_GROUP in h5:
            h5[SOFT_GROUP].visititems(lambda name, obj: have.add(name) if isinstance(obj, h5py.Dataset) else None)
    missing = [s for s in stems if s not in have]
    if missing:
        raise TrainError(_missing_message("soft pseudo-labels", folder / SOFT_FILE, missing, len(stems),
                                          f"the folder does not match the target split; regenerate: {hint}"))


def _soft_labels(data_samples: list, device: torch.device) -> torch.Tensor:
    if not all("soft_label" in ds for ds in data_samples):
        raise TypeError("ProDA stage 1 needs target batches with soft pseudo-labels (PackSoftPseudoLabel)")
    return torch.stack([ds.soft_label.data for ds in data_samples]).to(device=device, dtype=torch.float32)


def load_teacher_weights(module: nn.Module, path: str | Path, what: str) -> None:
    """Strictly load a final.pth into ``module`` (an EncoderDecoder like the student); a mismatch
    raises ``ValueError`` naming the file and the key."""
    from ..checkpoint import load_init_weights

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"uda.proda.teacher = {path}: file not found ({what}); pass the final.pth "
                                "of the previous ProDA stage")
    try:
        load_init_weights(module, path, strict=True, config_key="uda.proda.teacher", allow_backbone=False)
    except ValueError as err:
        raise ValueError(f"uda.proda.teacher: {path} does not match the student network ({what}); it must be "
                         f"a final.pth of the same arch/preset: {err}") from err


def _frozen_copy(args: tuple, kwargs: dict) -> EncoderDecoder:
    net = EncoderDecoder(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class _ProDAMixin:
    """Helpers shared by the stage-1 and distillation segmentors."""

    #: (attribute, file, what) of frozen networks loaded from a final.pth (``uda.proda.teacher``)
    teacher_files: tuple[tuple[str, str, str], ...] = ()

    def load_teachers(self) -> None:
        for attr, path, what in self.teacher_files:
            load_teacher_weights(getattr(self, attr), path, what)

    def init_weights(self) -> None:
        """mmengine's Runner calls this before training (and before a resume restores the state):
        it re-initialises every child, the teachers included, so their files are loaded again here."""
        super().init_weights()
        self.load_teachers()

    def student_network(self) -> nn.Module:
        return nn.ModuleDict({n: c for n, c in self.named_children() if n not in self.extra_modules})

    def strong_view(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        pre = self.data_preprocessor
        mean = pre.mean.flatten() if pre._enable_normalize else None
        std = pre.std.flatten() if pre._enable_normalize else None
        o = self.options
        return strong_transform(x, gen, mean, std, o.color_jitter_s, o.color_jitter_p, o.blur).to(x.dtype)

    def generator(self, t: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + t)

    def loss_size(self, x: torch.Tensor) -> tuple[int, int]:
        s = max(int(self.cfg.feature_stride), 1)
        return max(x.shape[-2] // s, 1), max(x.shape[-1] // s, 1)


# --------------------------------------------------------------------------------------------------
# stage 0: warm-up (BDL's two-optimiser step with an LS-GAN)
def gan_loss(pred: torch.Tensor, label: float, gan: str) -> torch.Tensor:
    """ProDA ``--gan LS`` (MSE to the label, default) or ``Vanilla`` (BCE with logits)."""
    target = torch.full_like(pred, label)
    if gan == "LS":
        return F.mse_loss(pred, target)
    if gan == "Vanilla":
        return F.binary_cross_entropy_with_logits(pred, target)
    raise ValueError(f"uda.proda.gan must be 'LS' or 'Vanilla', got {gan!r}")


@MODELS.register_module(force=True)
class ProDAWarmupSegmentor(BDLSegmentor):
    """Source CE + output-space adversarial loss with ProDA's LS-GAN (module docstring, stage 0)."""

    def __init__(self, *args: Any, gan: str = "LS", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        gan_loss(torch.zeros(1), 0.0, gan)  # validates the name
        self.gan = gan

    def adv_generator_loss(self, d_target: torch.Tensor) -> torch.Tensor:
        return gan_loss(d_target, SOURCE_LABEL, self.gan)

    def adv_discriminator_loss(self, d_source: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (gan_loss(d_source, SOURCE_LABEL, self.gan) + gan_loss(d_target, TARGET_LABEL, self.gan))


# --------------------------------------------------------------------------------------------------
# stage 1: prototype rectification + target structure learning
@MODELS.register_module(force=True)
class ProDAStage1Segmentor(_ProDAMixin, UDASegmentor):
    """Student + EMA teacher + prototype memory (module docstring, stage 1).

    Args (beyond ``EncoderDecoder``'s): ``proda`` (``uda.proda`` settings), ``prototypes`` (h5 file
    of the initial prototypes), ``seed`` (strong-augmentation generator).
    """

    extra_modules = (TEACHER_KEY, PROTO_KEY)
    no_optim_modules = (TEACHER_KEY, PROTO_KEY)

    def __init__(self, *args: Any, proda: Mapping[str, Any] | None = None, prototypes: str | None = None,
                 seed: int = 0, **kwargs: Any) -> None:
        teacher_kwargs = copy.deepcopy(kwargs)
        super().__init__(*args, **kwargs)
        self.cfg, self.options = _split_settings(proda or {})
        self.seed = int(seed)
        self.feat_index = _feat_index(self.decode_head, self.options.feat_in_index)
        self.ema_teacher = _frozen_copy(args, teacher_kwargs)
        # 1 once the teacher holds the student's (or the teacher file's) weights; saved for --resume
        self.register_buffer("teacher_ready", torch.zeros((), dtype=torch.uint8))
        if self.options.teacher:
            self.teacher_files = ((TEACHER_KEY, str(self.options.teacher), "EMA teacher of ProDA stage 1"),)
            self.load_teachers()  # fails fast on a mismatch; reloaded after init_weights()
            self.teacher_ready.fill_(1)
        if prototypes is None:
            raise ValueError("ProDAStage1Segmentor needs the initial prototypes file (prototypes=...)")
        protos, counts = load_prototypes(prototypes)
        if protos.shape[0] != self.num_classes:
            raise ValueError(f"{prototypes}: {protos.shape[0]} prototypes but the model has {self.num_classes} "
                             "classes; recompute them with `python -m segmenters prototypes`")
        self.proto_memory = PrototypeMemory(self.num_classes, protos.shape[1], self.cfg.proto_momentum,
                                            self.cfg.proto_min_pixels, ignore_index=IGNORE_INDEX)
        self.proto_memory.set(protos, counts)  # a class with count 0 takes its first seen vector
        self.prototypes_file = str(prototypes)

    def _check_feature_dim(self, f: torch.Tensor) -> None:
        if f.shape[1] != self.proto_memory.dim:
            raise ValueError(f"{self.prototypes_file}: prototypes are {self.proto_memory.dim}-d but backbone output "
                             f"{self.feat_index} has {f.shape[1]} channels; recompute them with the warm-up model "
                             "of this arch/preset (`python -m segmenters prototypes`)")

    def masked_rectification_weights(self, features: torch.Tensor) -> torch.Tensor:
        """Eq. 4 weights ``(B, C, h, w)`` over the classes that have a prototype; a class never seen
        (count 0: the warm-up model predicted it nowhere) gets weight 0 instead of competing with a
        meaningless zero prototype (it joins once the moving average has seen it)."""
        valid = self.proto_memory.initialized
        b, _, h, w = features.shape
        weights = features.new_zeros(b, self.num_classes, h, w)
        if bool(valid.any()):
            weights[:, valid] = rectification_weights(features, self.proto_memory.prototypes[valid],
                                                      self.cfg.proto_temperature)
        else:
            weights.fill_(1.0)
        return weights

    def train_step(self, data: dict, optim_wrapper: OptimWrapper | OptimWrapperDict) -> dict[str, torch.Tensor]:
        seg_ow = optim_wrapper[SEGMENTOR_KEY] if isinstance(optim_wrapper, OptimWrapperDict) else optim_wrapper
        cfg = self.cfg
        if not bool(self.teacher_ready):
            with torch.no_grad():
                self.ema_teacher.load_state_dict(self.student_network().state_dict())
            self.teacher_ready.fill_(1)
        t = current_iteration()
        src, trg = self.preprocess_pair(data)
        x_s, x_t = src["inputs"], trg["inputs"]
        soft = _soft_labels(trg["data_samples"], x_t.device)
        size = self.loss_size(x_t)
        protos = self.proto_memory.prototypes

        with torch.no_grad():
            self.ema_teacher.eval()
            t_feats = self.ema_teacher.extract_feat(x_t)
            f_teacher = t_feats[self.feat_index].float()
            self._check_feature_dim(f_teacher)
            t_logits = self.ema_teacher.decode_head.forward(t_feats)
            weights = self.masked_rectification_weights(f_teacher)
            weights = resize(weights, size=size, mode="bilinear", align_corners=False)
            soft = resize(soft, size=size, mode="bilinear", align_corners=False)
            y_rect = rectify_pseudo_labels(soft, weights, cfg.rectify_min_confidence, IGNORE_INDEX)
            t_labels = resize(t_logits.float(), size=f_teacher.shape[2:], mode="bilinear",
                              align_corners=self.align_corners).argmax(dim=1)

        with seg_ow.optim_context(self):
            feats_s, logits_s = self.seg_forward(x_s)
            losses = self.seg_losses(feats_s, logits_s, src["data_samples"], "src")
            _, logits_t = self.seg_forward(x_t)
            logits_t = resize(logits_t, size=size, mode="bilinear", align_corners=self.align_corners).float()
            if cfg.rce:
                losses["trg.loss_sce"] = symmetric_cross_entropy(logits_t, y_rect, cfg.rce_alpha, cfg.rce_beta,
                                                                 IGNORE_INDEX, cfg.rce_label_clamp)
            else:
                losses["trg.loss_ce"] = F.cross_entropy(logits_t, y_rect, ignore_index=IGNORE_INDEX)
            if cfg.regular_w > 0:
                losses["trg.loss_reg"] = cfg.regular_w * kl_uniform_regulariser(logits_t)
            if cfg.proto_consistW > 0:
                f_strong = self.extract_feat(self.strong_view(x_t, self.generator(t)))[self.feat_index]
                # distances |f|^2 - 2 f.eta + |eta|^2 of high-dimensional features: float32, not AMP half
                with torch.autocast(device_type=x_t.device.type, enabled=False):
                    valid = self.proto_memory.initialized
                    losses["trg.loss_consist"] = cfg.proto_consistW * prototype_consistency_loss(
                        f_strong.float(), f_teacher, protos[valid], cfg.proto_temperature)
        loss, log_vars = self.parse_losses(losses)
        seg_ow.update_params(loss)

        ema_update(self.ema_teacher, self.student_network(), None, cfg.ema_alpha, buffers=cfg.ema_buffers)
        updated = self.proto_memory.update(f_teacher, t_labels, mode="moving_average")
        log_vars = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in log_vars.items()}
        valid = (y_rect != IGNORE_INDEX)
        changed = (y_rect != soft.argmax(dim=1)) & valid
        log_vars["proda.rectified_changed"] = changed.float().sum() / valid.float().sum().clamp(min=1)
        log_vars["proda.classes_updated"] = updated.float().sum()
        return log_vars


# --------------------------------------------------------------------------------------------------
# stages 2 and 3: self-distillation
@MODELS.register_module(force=True)
class ProDADistillSegmentor(_ProDAMixin, UDASegmentor):
    """Student + frozen previous-stage teacher (module docstring, stages 2/3)."""

    extra_modules = (DISTILL_TEACHER_KEY,)
    no_optim_modules = (DISTILL_TEACHER_KEY,)

    def __init__(self, *args: Any, proda: Mapping[str, Any] | None = None, seed: int = 0, **kwargs: Any) -> None:
        teacher_kwargs = copy.deepcopy(kwargs)
        super().__init__(*args, **kwargs)
        self.cfg, self.options = _split_settings(proda or {})
        self.seed = int(seed)
        if not self.options.teacher:
            raise ValueError("ProDA stages 2/3 distil from the previous stage's model: set uda.proda.teacher "
                             "(--cfg-options uda.proda.teacher=<previous final.pth>)")
        self.teacher = _frozen_copy(args, teacher_kwargs)
        self.teacher_files = ((DISTILL_TEACHER_KEY, str(self.options.teacher),
                               "self-distillation teacher of ProDA stage 2/3"),)
        self.load_teachers()  # fails fast on a mismatch; reloaded after init_weights()

    def train_step(self, data: dict, optim_wrapper: OptimWrapper | OptimWrapperDict) -> dict[str, torch.Tensor]:
        seg_ow = optim_wrapper[SEGMENTOR_KEY] if isinstance(optim_wrapper, OptimWrapperDict) else optim_wrapper
        cfg, opts = self.cfg, self.options
        t = current_iteration()
        src, trg = self.preprocess_pair(data)
        x_s, x_t = src["inputs"], trg["inputs"]
        with torch.no_grad():
            self.teacher.eval()
            t_logits = self.teacher.decode_head.forward(self.teacher.extract_feat(x_t)).float()
        with seg_ow.optim_context(self):
            losses = {}
            if opts.source_weight_distill > 0:
                feats_s, logits_s = self.seg_forward(x_s)
                losses.update(self.seg_losses(feats_s, logits_s, src["data_samples"], "src", opts.source_weight_distill))
            feats_t, logits_t = self.seg_forward(x_t)
            losses.update(self.seg_losses(feats_t, logits_t, trg["data_samples"], "trg"))
            if cfg.S_pseudo > 0:
                feats_a, logits_a = self.seg_forward(self.strong_view(x_t, self.generator(t)))
                losses.update(self.seg_losses(feats_a, logits_a, trg["data_samples"], "strong", cfg.S_pseudo))
            if cfg.distillation > 0:
                losses["trg.loss_distill"] = cfg.distillation * distillation_kl(logits_t.float(), t_logits)
        loss, log_vars = self.parse_losses(losses)
        seg_ow.update_params(loss)
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in log_vars.items()}


# --------------------------------------------------------------------------------------------------
# UDA methods (what `python -m segmenters train --uda proda_*` builds)
def _proda_optim(cfg: Any, seg: dict, stage: str) -> dict:
    """At preset paper: ProDA's SGD (docs/reference.md §8.1); elsewhere the config's optimiser as is."""
    if str(cfg.get("preset", "")) != "paper":
        return seg
    pc, _ = _split_settings(proda_settings(cfg))
    seg = copy.deepcopy(seg)
    seg["optimizer"] = dict(type="SGD", lr=pc.lr_stage1 if stage == "stage1" else pc.lr_stage23,
                            momentum=pc.momentum, weight_decay=pc.weight_decay)
    mult = 1.0 if stage == "stage1" else pc.head_lr_mult_stage23
    seg["paramwise_cfg"] = dict(custom_keys={"decode_head": dict(lr_mult=mult)})
    return seg


class ProDAWarmup(BDL):
    """ProDA stage 0: source CE + LS-GAN output-space adversarial (weight ``uda.proda.adv``)."""

    name = "proda_warmup"
    accepts_pseudo = False

    def model(self, cfg: Any, inputs: TrainInputs) -> dict:
        pc, _ = _split_settings(proda_settings(cfg))
        model = UDAMethod.model(self, cfg, inputs)
        model.update(type="ProDAWarmupSegmentor",
                     discriminator=copy.deepcopy(dict(uda_param(cfg, "discriminator"))),
                     lambda_adv=float(pc.adv), lambda_pseudo=0.0, use_pseudo=False, gan=pc.gan)
        return model

    def optim_wrapper(self, cfg: Any) -> dict:
        """Segmenter: the config's; discriminator: Adam ``uda.proda.lr_D`` (0.9, 0.99) as ProDA."""
        out = super().optim_wrapper(cfg)
        pc, _ = _split_settings(proda_settings(cfg))
        out[DISCRIMINATOR_KEY]["optimizer"] = dict(type="Adam", lr=float(pc.lr_D), betas=(0.9, 0.99))
        return out


class _ProDASelfTraining(UDAMethod):
    accepts_pseudo = True
    paired = True
    stage = "stage1"

    def _pseudo(self, inputs: TrainInputs) -> Path:
        if inputs.pseudo is None:
            raise TrainError(f"--uda {self.name} needs --pseudo ({self._pseudo_hint})")
        return Path(inputs.pseudo)

    def optim_wrapper(self, cfg: Any) -> dict:
        seg = _proda_optim(cfg, UDAMethod.optim_wrapper(self, cfg), self.stage)
        return dict(constructor="SePiCoOptimWrapperConstructor", segmentor=seg)


class ProDAStage1(_ProDASelfTraining):
    """ProDA stage 1 on the soft pseudo-labels + prototypes of ``python -m segmenters prototypes``."""

    name = "proda_stage1"
    stage = "stage1"
    _pseudo_hint = "the folder of `python -m segmenters prototypes` from the warm-up model"

    def train_dataset(self, cfg: Any, inputs: TrainInputs) -> dict:
        from domains.prepared import PreparedDataset

        pseudo = self._pseudo(inputs)
        check_soft_labels(pseudo, PreparedDataset.load(inputs.target).stems(inputs.target_split))
        target = target_dataset_cfg(cfg, inputs, labelled=False, label_dir=pseudo)
        aug = cfg.get("train_aug", None) or {}
        target["pipeline"] = soft_pipeline(cfg, pseudo / SOFT_FILE, float(aug.get("flip_prob", 0.5)),
                                           float(aug.get("cat_max_ratio", 1.0)))
        return dict(type="UDADataset", seed=inputs.seed, source=source_dataset_cfg(cfg, inputs), target=target)

    def model(self, cfg: Any, inputs: TrainInputs) -> dict:
        settings = proda_settings(cfg)
        _split_settings(settings)
        model = super().model(cfg, inputs)
        model.update(type="ProDAStage1Segmentor", proda=settings, seed=int(inputs.seed),
                     prototypes=str(self._pseudo(inputs) / PROTO_FILE))
        return model


class ProDADistill(_ProDASelfTraining):
    """ProDA stages 2/3: hard 0.95 pseudo-labels + KL distillation from ``uda.proda.teacher``."""

    name = "proda_distill"
    stage = "stage2"
    _pseudo_hint = ("hard pseudo-labels of the previous stage: `python -m segmenters pseudolabel --rule fixed "
                    f"--threshold {ProDAConfig.threshold}`")

    def train_dataset(self, cfg: Any, inputs: TrainInputs) -> dict:
        pseudo = self._pseudo(inputs)
        return dict(type="UDADataset", seed=inputs.seed, source=source_dataset_cfg(cfg, inputs),
                    target=target_dataset_cfg(cfg, inputs, labelled=False, label_dir=pseudo))

    def model(self, cfg: Any, inputs: TrainInputs) -> dict:
        settings = proda_settings(cfg)
        _, opts = _split_settings(settings)
        if not opts.teacher:
            raise TrainError(f"--uda {self.name} distils from the previous stage: set config key uda.proda.teacher "
                             "(--cfg-options uda.proda.teacher=<previous final.pth>)")
        model = super().model(cfg, inputs)
        model.update(type="ProDADistillSegmentor", proda=settings, seed=int(inputs.seed))
        return model


__all__ = ["ProDAWarmup", "ProDAStage1", "ProDADistill", "ProDAWarmupSegmentor", "ProDAStage1Segmentor",
           "ProDADistillSegmentor", "ProDAOptions", "LoadSoftPseudoLabel", "PackSoftPseudoLabel", "gan_loss",
           "check_soft_labels", "load_teacher_weights", "SOFT_FILE", "PROTO_FILE"]
