"""SePiCo: semantic-guided pixel contrast on a DACS mean-teacher (Xie et al., TPAMI 2023;
docs/reference.md §9.1), as an mmseg segmentor with its own ``train_step``.

Per iteration t (0-based, read from mmengine's ``MessageHub`` ``'iter'`` so it survives a resume),
with a source batch (x_s, y_s) and a target batch x_t:

1. EMA teacher (network + projection head) <- student, ``alpha_t = min(1 - 1/(t+1), alpha)``
   (:func:`segmenters.uda.ema.ema_update`; parameters only, as SePiCo's ``_update_ema``; at t = 0
   the teacher becomes a copy of the student).
2. Source CE ``L_s = CE(G(x_s), y_s)`` (the head's configured loss).
3. Teacher pseudo-labels on the (weak) target image, class-balanced cropped (CBC, below):
   ``y_hat_t = argmax p_T(x_t)`` with the per-image weight q = fraction of pixels with
   max-probability >= ``pseudo_threshold`` (0.968); the top/bottom ``psweight_ignore_top/bottom`` rows
   (15/120 of a 640-row crop, scaled to the crop height) get 0
   (:func:`~segmenters.uda.sepico_parts.pseudo_label_weight`).
4. ClassMix of source into target (:func:`~segmenters.uda.mix.class_mix_masks`, :func:`~.mix.mix`) for
   image, label and weight (1 on source pixels), DACS strong augmentation of the mixed image
   (:func:`~segmenters.uda.mix.strong_transform`) and the weighted CE
   ``L_mix = sum_p w_p CE(G(x_mix), y_mix)_p / #non-ignored pixels`` (DACS Eq. 3 with SePiCo's weight).
5. Class statistics (mu_k, Sigma_k; :class:`~segmenters.uda.sepico_parts.ClassStatistics`) are
   updated every iteration from TEACHER-projected SOURCE layer-4 features with the GT labels
   (avg-pool label downscaling, min ratio 0.75).
6. From ``start_distribution_iter`` on (3000 paper, 20 tiny), semantic-guided pixel contrast on
   STUDENT-projected layer-4 features: of the source (GT labels) and of the target (pseudo-labels,
   pixels with weight 0 ignored), with the variant ``contrast_mode``:
   ``dist`` (DistCL, default, SePiCo Eq. 13), ``proto`` (ProtoCL, Eq. 7) or ``bank`` (BankCL, Eq. 9),
   weight ``contrastive_weight``, plus the regulariser (Eq. 15) with weight
   ``reg_relative_weight * contrastive_weight``. Before that iteration the terms are absent.

Total: ``L = L_s + L_mix + L_cl,s + L_cl,t + L_reg,s + L_reg,t`` (one optimiser step).

Modules outside the EncoderDecoder (``extra_modules``): ``ema_teacher`` (EncoderDecoder),
``ema_proj_head``, ``proj_head`` (:class:`~segmenters.uda.sepico_parts.ProjectionHead`) and
``class_stats``. All are in the model's state dict, so the Runner's ``iter_<n>.pth`` keeps them for
``--resume``; :func:`segmenters.checkpoint.save_final` keeps only the EncoderDecoder's keys.
Optimiser (:class:`SePiCoOptimWrapperConstructor`): the teacher, its projection head and the class
statistics get no optimiser; the student projection head is in the segmentor's optimiser with the
decode head's ``lr_mult`` (10x for DeepLab-V2; SePiCo's projection head is part of its decode head).

Hyper-parameters: :class:`~segmenters.uda.sepico_parts.SePiCoConfig` (paper scale), overridden by
:data:`PRESET_OVERRIDES` / :data:`ARCH_OVERRIDES` and then by the config's ``uda.sepico`` dict
(an unknown key is an error naming ``uda.sepico.<key>``).

Choices / not (yet) implemented:

* Class-balanced cropping (CBC, ``pseudo_random_crop``, on by default as the reference): the target
  is loaded uncropped at ``target_scale``; the teacher labels it, :func:`~segmenters.uda.sampling
  .class_balanced_crop_boxes` picks, per image, the best of ``cbc_tries`` (10) random boxes
  (max ``sum log n_k`` with max class ratio < ``cat_max_ratio`` 0.75) and the teacher labels the crop
  again (``regen_pseudo``). The crop is ``cbc_crop_size`` or the source crop size (ClassMix needs equal
  sizes). It acts only when the target image is larger than the crop: the paper preset's 1024x512
  target and 512x1024 crop (BDL protocol) and the tiny preset's full-image crops leave nothing to
  choose; SePiCo's own recipe is ``--cfg-options target_scale=(1280,640) crop_size=(640,640)
  model.data_preprocessor.size=(640,640) train_scale=(1280,720)``. Without ``regen_pseudo`` the
  full-image probabilities are cropped and the confidence fraction is taken over the crop (the
  reference keeps the full image's).
* Rare class sampling (RCS, ``rcs_temperature`` 0.01, ``rcs_min_pixels`` 3000, ``rcs_min_crop_ratio``
  0.5; None turns it off) draws the source image (:class:`~segmenters.uda.sampling.RCSUDADataset`);
  ``rcs_min_pixels`` counts label-file pixels (tiny preset: 50, scaled by the label area).
* Contrast temperature ``tau`` = 100 and weight 1.0 (reference ``contrast_temp``/``loss_weight``).
  Embeddings are unit vectors and centroids have norm <= 1, so the logits ``f.mu_k / tau`` lie in
  [-0.01, 0.01]: ProtoCL/DistCL sit within ~0.02 of log C (2.94 for 19 classes) and the regulariser
  near -1 for the whole run. This is the reference's behaviour, not a bug: the gradient
  ``sum_k (p_k - 1[k=y]) mu_k / tau`` is what trains (small; the reference trains with AdamW, whose
  update does not scale with the gradient's size).
* The source CE uses the weak (un-jittered) source image; the reference also colour-jitters/blurs
  the source for its CE (``enable_strong_aug``).
* The teacher runs in train mode with dropout off (DAFormer/SePiCo): BN uses batch statistics.
* Mixed-image CE is normalised by the number of non-ignored pixels (our configs' ``avg_non_ignore``);
  DACS divides by all pixels, which differs only by the ignored fraction.
* ``mix`` other than ``"class"`` and ``enable_self_training=False`` (source + contrast only) are
  supported; ``mix="none"`` trains on the strongly augmented target with its pseudo-labels.
* FCN-8s (not in the paper): its backbone has three outputs; the projection head reads the deepest
  (fc7, ``proj_in_index`` 2, :data:`ARCH_OVERRIDES`).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import compat

compat.install_mmcv_ops_stand_in()

from mmengine.logging import MessageHub  # noqa: E402
from mmengine.optim import OptimWrapper, OptimWrapperDict  # noqa: E402
from mmseg.models.segmentors import EncoderDecoder  # noqa: E402
from mmseg.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402

from ..datasets import train_pipeline  # noqa: E402
from .base import (SEGMENTOR_KEY, TrainError, TrainInputs, UDAMethod, UDAOptimWrapperConstructor,  # noqa: E402
                   UDASegmentor, _aug, source_dataset_cfg, target_dataset_cfg)
from .ema import ema_update, teacher_state_mismatches  # noqa: E402
from .mix import class_mix_masks, mix, strong_transform  # noqa: E402
from .sampling import class_balanced_crop_boxes, crop_batch  # noqa: E402
from .sepico_parts import (ClassStatistics, ProjectionHead, SePiCoConfig, bank_contrastive_loss,  # noqa: E402
                           contrastive_regulariser, dist_contrastive_loss, flatten_labelled_features,
                           proto_contrastive_loss, pseudo_label_weight)

logger = logging.getLogger(__name__)

from domains.labels import IGNORE_INDEX  # noqa: E402  (one definition: the label tables)
TEACHER_KEY = "ema_teacher"
TEACHER_PROJ_KEY = "ema_proj_head"
PROJ_KEY = "proj_head"
STATS_KEY = "class_stats"

#: preset -> SePiCoConfig overrides applied before ``uda.sepico``; empty: the presets' values live in
#: their config files (``segmenters/configs/*_tiny.py`` ``uda.sepico``), this is an extension point
PRESET_OVERRIDES: dict[str, dict[str, Any]] = {"tiny": dict(), "paper": dict()}
#: arch -> SePiCoConfig overrides applied before ``uda.sepico``
ARCH_OVERRIDES: dict[str, dict[str, Any]] = {
    "deeplabv2": dict(),
    "fcn8s": dict(proj_in_index=2),  # FCNVGG outputs (pool3, pool4, fc7): the deepest is fc7
}


def sepico_config(cfg: Any) -> SePiCoConfig:
    """SePiCoConfig for an mmengine config: paper defaults < preset/arch overrides < ``uda.sepico``."""
    uda = cfg.get("uda", None) or {}
    user = uda.get("sepico", None) or {}
    if hasattr(user, "to_dict"):
        user = user.to_dict()
    if not isinstance(user, Mapping):
        raise TrainError(f"config key 'uda.sepico' must be a dict of SePiCo settings, got {type(user).__name__}")
    merged = dict(PRESET_OVERRIDES.get(str(cfg.get("preset", "")), {}))
    merged.update(ARCH_OVERRIDES.get(str(cfg.get("arch", "")), {}))
    merged.update(dict(user))
    try:
        return SePiCoConfig.from_dict(merged, key="uda.sepico")
    except (TypeError, ValueError) as err:
        msg = str(err)
        raise TrainError(msg if msg.startswith("uda.sepico") else f"uda.sepico: {msg}") from err


def current_iteration() -> int:
    """Training iteration t (0-based) from mmengine's current ``MessageHub`` (``RuntimeInfoHook``
    sets ``'iter'`` before every train iteration, also after a resume); 0 if unset."""
    it = MessageHub.get_current_instance().get_info("iter")
    return int(it) if it is not None else 0


def _stack_labels(data_samples: list) -> torch.Tensor:
    return torch.stack([ds.gt_sem_seg.data[0] for ds in data_samples]).long()


def _layer_channels(decode_head: nn.Module, index: int) -> int:
    """Channels of backbone output ``index``, read from the decode head's ``in_index``/``in_channels``."""
    in_index, in_channels = decode_head.in_index, decode_head.in_channels
    if isinstance(in_index, int):
        in_index, in_channels = [in_index], [in_channels]
    for i, c in zip(in_index, in_channels):
        if int(i) == index:
            return int(c)
    raise ValueError(f"uda.sepico.proj_in_index={index}: the decode head does not read backbone output {index}, "
                     f"so its channels are unknown; choose one of {list(in_index)}")


@MODELS.register_module(force=True)
class SePiCoSegmentor(UDASegmentor):
    """Student ``EncoderDecoder`` + EMA teacher + projection heads + class statistics (module docstring).

    Args (beyond ``EncoderDecoder``'s, which also build the teacher):
        sepico: :class:`SePiCoConfig` fields (dict); defaults are the paper's.
        seed: seeds the per-iteration CPU generator of ClassMix and the strong augmentation
            (``seed`` and t), so a resumed run draws the same mixes.
    """

    extra_modules = (TEACHER_KEY, TEACHER_PROJ_KEY, PROJ_KEY, STATS_KEY)
    #: modules that get no optimiser (SePiCoOptimWrapperConstructor)
    no_optim_modules = (TEACHER_KEY, TEACHER_PROJ_KEY, STATS_KEY)

    def __init__(self, *args: Any, sepico: Mapping[str, Any] | None = None, seed: int = 0, **kwargs: Any) -> None:
        teacher_kwargs = copy.deepcopy(kwargs)
        super().__init__(*args, **kwargs)
        self.cfg = SePiCoConfig.from_dict(dict(sepico or {}), key="uda.sepico")
        self.seed = int(seed)
        if self.cfg.mix not in ("class", "none"):
            raise ValueError(f"uda.sepico.mix must be 'class' or 'none', got {self.cfg.mix!r}")
        in_channels = _layer_channels(self.decode_head, self.cfg.proj_in_index)
        self.proj_head = ProjectionHead(in_channels, self.cfg.proj_dim, self.cfg.proj_num_convs)
        self.ema_teacher = EncoderDecoder(*copy.deepcopy(args), **teacher_kwargs)
        self.ema_teacher.load_state_dict(self.student_network().state_dict())
        self.ema_proj_head = copy.deepcopy(self.proj_head)
        for module in (self.ema_teacher, self.ema_proj_head):
            for p in module.parameters():
                p.requires_grad_(False)
        self.class_stats = ClassStatistics(
            self.num_classes, self.cfg.proj_dim, momentum=self.cfg.stats_momentum,
            memory_length=self.cfg.memory_length if self.cfg.contrast_mode == "bank" else 0,
            ignore_index=IGNORE_INDEX)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Refuse a checkpoint whose teacher / projection heads / class statistics have other shapes
        (mmengine's non-strict load would only warn and leave them freshly initialised)."""
        problems = []
        for name in self.extra_modules:
            head = f"{prefix}{name}."
            sub = {k[len(head):]: v for k, v in state_dict.items() if k.startswith(head)}
            if sub:
                problems += [f"{name}: {p}" for p in teacher_state_mismatches(getattr(self, name), sub)
                             if "shape" in p]
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise TrainError("the checkpoint being loaded (--resume: the newest iter_<n>.pth of --work-dir) does "
                             "not match this SePiCo model: " + "; ".join(problems[:3]) + more
                             + "; it was saved with other settings (uda.sepico.proj_dim / contrast_mode / "
                             "num_classes / memory_length, arch or preset): use another --work-dir or the same "
                             "settings")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ helpers
    def student_network(self) -> nn.Module:
        """The student EncoderDecoder's modules (same parameter names as ``ema_teacher``)."""
        return nn.ModuleDict({n: c for n, c in self.named_children() if n not in self.extra_modules})

    def update_teacher(self, iteration: int) -> float:
        """EMA step of teacher network and projection head; returns alpha_t."""
        alpha = ema_update(self.ema_teacher, self.student_network(), iteration, self.cfg.alpha, buffers="none")
        ema_update(self.ema_proj_head, self.proj_head, iteration, self.cfg.alpha, buffers="none")
        return alpha

    def _teacher_train_mode(self) -> None:
        for module in (self.ema_teacher, self.ema_proj_head):
            module.train()
            for m in module.modules():
                if isinstance(m, nn.modules.dropout._DropoutNd):
                    m.eval()

    @torch.no_grad()
    def teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        """EMA-teacher softmax ``(B, C, H, W)`` at the image size."""
        logits = self.ema_teacher.decode_head.forward(self.ema_teacher.extract_feat(images))
        return F.softmax(self.upsample(logits, images).float(), dim=1)

    @torch.no_grad()
    def class_balanced_crop(self, images: torch.Tensor, probs: torch.Tensor, default_size: tuple[int, int],
                            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """CBC (SePiCo ``pseudo_random_crop``; :mod:`segmenters.uda.sampling`): crop each target image to
        the box of ``cbc_tries`` random boxes whose pseudo-label (argmax of the teacher's ``probs``) is
        best balanced, then take the teacher's probabilities on the crop (``regen_pseudo``, the
        reference's setting) or crop the full-image ones. Crop size ``cbc_crop_size`` or
        ``default_size`` (the source crop, so ClassMix gets equal sizes). An image no larger than the
        crop is returned as is (``balanced`` None: there is no box to choose)."""
        cfg = self.cfg
        size = tuple(cfg.cbc_crop_size or default_size)
        if images.shape[-2] <= size[0] and images.shape[-1] <= size[1]:
            return images, probs, None
        res = class_balanced_crop_boxes(probs.argmax(dim=1), size, self.num_classes, cfg.cat_max_ratio,
                                        cfg.cbc_tries, generator, IGNORE_INDEX)
        images = crop_batch(images, res.boxes)
        probs = self.teacher_probs(images) if cfg.regen_pseudo else crop_batch(probs, res.boxes)
        return images, probs, res.balanced

    def _project(self, feats: list[torch.Tensor], head: nn.Module) -> torch.Tensor:
        return head(feats[self.cfg.proj_in_index])

    def _flatten(self, proj: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return flatten_labelled_features(proj, labels, self.num_classes, self.cfg.scale_min_ratio,
                                         "avg_pool" if self.cfg.use_avg_pool else "nearest", IGNORE_INDEX)

    def contrastive_losses(self, proj: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
        """Pixel contrast of student embeddings ``proj`` (B, D, h, w) with labels (B, H, W) against
        the class statistics (variant ``contrast_mode``) and the regulariser."""
        f, y = self._flatten(proj.float(), labels)
        stats, cfg = self.class_stats, self.cfg
        valid = stats.initialized
        if cfg.contrast_mode == "dist":
            loss = dist_contrastive_loss(f, y, stats.mean, stats.variance, cfg.tau, valid, ignore_index=IGNORE_INDEX)
        elif cfg.contrast_mode == "proto":
            loss = proto_contrastive_loss(f, y, stats.mean, cfg.tau, valid, ignore_index=IGNORE_INDEX)
        else:
            loss = bank_contrastive_loss(f, y, stats.bank, stats.bank_valid, cfg.tau, ignore_index=IGNORE_INDEX)
        out = {f"{prefix}.loss_contrast": cfg.contrastive_weight * loss}
        if cfg.reg_weight > 0:
            out[f"{prefix}.loss_reg"] = cfg.reg_weight * contrastive_regulariser(f, stats.mean, cfg.tau, valid,
                                                                               self.num_classes)
        return out

    def mixed_ce(self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Pixel-weighted CE of full-resolution ``logits`` on ``labels`` (255 ignored)."""
        ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
        valid = (labels != IGNORE_INDEX).sum().clamp(min=1)
        return (ce * weight).sum() / valid

    # ------------------------------------------------------------------ training
    def train_step(self, data: dict, optim_wrapper: OptimWrapper | OptimWrapperDict) -> dict[str, torch.Tensor]:
        seg_ow = optim_wrapper[SEGMENTOR_KEY] if isinstance(optim_wrapper, OptimWrapperDict) else optim_wrapper
        cfg = self.cfg
        t = current_iteration()
        alpha = self.update_teacher(t)
        self._teacher_train_mode()
        src, trg = self.preprocess_pair(data)
        x_s, x_t = src["inputs"], trg["inputs"]
        y_s = _stack_labels(src["data_samples"]).to(x_s.device)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + t)
        contrast_on = t >= cfg.start_distribution_iter
        extra_logs: dict[str, torch.Tensor] = {"sepico.alpha": torch.tensor(alpha)}

        with seg_ow.optim_context(self):
            # teacher: pseudo-labels on the weak target, class statistics from source features
            with torch.no_grad():
                probs = self.teacher_probs(x_t)
                if cfg.pseudo_random_crop:
                    x_t, probs, balanced = self.class_balanced_crop(x_t, probs, tuple(x_s.shape[-2:]), gen)
                    if balanced is not None:
                        extra_logs["sepico.cbc_balanced"] = balanced.float().mean()
                if cfg.enable_self_training and cfg.mix == "class" and x_t.shape[-2:] != x_s.shape[-2:]:
                    raise TrainError(f"SePiCo ClassMix needs source and target crops of one size; got source "
                                     f"{tuple(x_s.shape[-2:])} and target {tuple(x_t.shape[-2:])} (check crop_size, "
                                     "target_scale and uda.sepico.cbc_crop_size)")
                top, bottom = cfg.ignore_rows(x_t.shape[-2])
                pseudo, pseudo_w = pseudo_label_weight(probs, cfg.pseudo_threshold, top, bottom, cfg.psweight_per_image)
                t_proj_s = self._project(self.ema_teacher.extract_feat(x_s), self.ema_proj_head)
                self.class_stats.update(*self._flatten(t_proj_s.float(), y_s))
            extra_logs["trg.pseudo_weight"] = pseudo_w.mean()

            # student: source CE
            feats_s, logits_s = self.seg_forward(x_s)
            losses = self.seg_losses(feats_s, logits_s, src["data_samples"], "src")

            # student: ClassMix + strong augmentation, pseudo-label-weighted CE
            if cfg.enable_self_training:
                if cfg.mix == "class":
                    mask = class_mix_masks(y_s, "half", gen, IGNORE_INDEX).to(x_s.device)
                    mixed = mix(mask, x_s, x_t)
                    mixed_y = mix(mask, y_s, pseudo)
                    mixed_w = mix(mask, torch.ones_like(pseudo_w), pseudo_w)
                else:
                    mixed, mixed_y, mixed_w = x_t, pseudo, pseudo_w
                mean = self.data_preprocessor.mean.flatten() if self.data_preprocessor._enable_normalize else None
                std = self.data_preprocessor.std.flatten() if self.data_preprocessor._enable_normalize else None
                mixed = strong_transform(mixed, gen, mean, std, cfg.color_jitter_s, cfg.color_jitter_p, cfg.blur)
                _, logits_m = self.seg_forward(mixed.to(x_s.dtype))
                losses["mix.loss_ce"] = self.mixed_ce(self.upsample(logits_m, mixed), mixed_y, mixed_w)

            # student: semantic-guided pixel contrast (source GT, target pseudo-labels)
            if contrast_on and cfg.contrastive_weight > 0:
                losses.update(self.contrastive_losses(self._project(feats_s, self.proj_head), y_s, "src"))
                feats_t = self.extract_feat(x_t)
                y_t = pseudo.masked_fill(pseudo_w == 0, IGNORE_INDEX)
                losses.update(self.contrastive_losses(self._project(feats_t, self.proj_head), y_t, "trg"))
        loss, log_vars = self.parse_losses(losses)
        seg_ow.update_params(loss)
        log_vars = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in log_vars.items()}
        log_vars.update({k: v.detach().float() for k, v in extra_logs.items()})
        return log_vars


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class SePiCoOptimWrapperConstructor(UDAOptimWrapperConstructor):
    """:class:`~segmenters.uda.base.UDAOptimWrapperConstructor` over the model without its
    ``no_optim_modules`` (EMA teacher, teacher projection head, class statistics): those get no
    optimiser, everything else (student + projection head) is the ``segmentor`` entry."""

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        if hasattr(model, "module"):
            model = model.module
        frozen = set(getattr(model, "no_optim_modules", ()))
        trainable = nn.ModuleDict({n: c for n, c in model.named_children() if n not in frozen})
        return super().__call__(trainable)


class SePiCo(UDAMethod):
    """Self-training with an EMA teacher, ClassMix and semantic-guided pixel contrast (online
    pseudo-labels; ``--pseudo`` is not used)."""

    name = "sepico"
    accepts_pseudo = False
    paired = True

    def train_dataset(self, cfg: Any, inputs: TrainInputs) -> dict:
        """Source/target pairs. With CBC (``pseudo_random_crop``) the target is only resized to
        ``target_scale`` (the reference's "no_crop" target pipeline): the segmentor crops it on its
        pseudo-label. With RCS (``rcs_temperature`` not None) the source image is drawn by rare class
        sampling (:class:`segmenters.uda.sampling.RCSUDADataset`)."""
        scfg = sepico_config(cfg)
        target = target_dataset_cfg(cfg, inputs, labelled=False)
        if scfg.pseudo_random_crop:
            w, h = (int(v) for v in cfg.target_scale)
            target["pipeline"] = train_pipeline(cfg.target_scale, (h, w), **_aug(cfg))  # crop = image: no-op
        dataset = dict(type="UDADataset", seed=inputs.seed, source=source_dataset_cfg(cfg, inputs), target=target)
        if scfg.rcs_temperature is not None:
            dataset.update(type="RCSUDADataset", rare_class_sampling=dict(
                class_temp=scfg.rcs_temperature, min_pixels=scfg.rcs_min_pixels,
                min_crop_ratio=scfg.rcs_min_crop_ratio))
        return dataset

    def model(self, cfg: Any, inputs: TrainInputs) -> dict:
        model = super().model(cfg, inputs)
        model.update(type="SePiCoSegmentor", sepico=sepico_config(cfg).to_dict(), seed=int(inputs.seed))
        return model

    def optim_wrapper(self, cfg: Any) -> dict:
        """``segmentor``: the config's optim_wrapper with ``proj_head`` at the decode head's lr_mult."""
        seg = super().optim_wrapper(cfg)
        paramwise = seg.setdefault("paramwise_cfg", {})
        custom = paramwise.setdefault("custom_keys", {})
        if "decode_head" in custom and PROJ_KEY not in custom:
            custom[PROJ_KEY] = copy.deepcopy(dict(custom["decode_head"]))
        if not custom:
            paramwise.pop("custom_keys")
        if not paramwise:
            seg.pop("paramwise_cfg")
        return dict(constructor="SePiCoOptimWrapperConstructor", segmentor=seg)
