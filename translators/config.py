"""Translator configuration: dataclasses, YAML files read by mmengine, ``--cfg-options`` overrides.

A config is data (docs/design.md §7): one :class:`TranslatorConfig` with sections ``model``,
``data``, ``loss``, ``semst``, ``cyclegan``, ``spade``, ``train`` and ``refine``. The segmenters'
config mechanism reads the files (:func:`read_config_file`: ``mmengine.Config.fromfile``): a YAML may
name a ``_base_`` file (path relative to the YAML) whose values it overrides, nested sections merged
key by key, a list or any other value replaced as a whole, ``_delete_: true`` in a section replacing
the base's section, so ablation configs stay one-liners. Overrides are ``--cfg-options KEY=VALUE``
as for ``python -m segmenters train``, typed by the same reader (domains/cfg_options.py, mmengine's
``DictAction``). What is left here is what mmengine does not do: every value is converted to the type
of its dataclass field and range-checked; unknown keys (in YAML or ``--cfg-options``) and wrongly
typed values raise :class:`ConfigError` naming the key.

One source for every default: the defaults are the dataclass field defaults below (CUT's recipe
for the shared sections, each method section's published values), with :data:`METHOD_DEFAULTS` on
top for a method whose own defaults differ (SemST: hDCE and lambda_TS = 2), applied before the
YAML. A YAML file (``translators/configs/<method>_<preset>.yaml``) holds only what differs from
what it would get without it: those defaults, or its ``_base_`` file's values; a key that repeats
them is an error of tests/test_defaults.py. :data:`FEEDBACK_WEIGHT` is the default of
``translators train --feedback-weight`` (not a config key), which the workflow reads too.

Plain Python at import (the workflow imports :data:`FEEDBACK_WEIGHT` at plan time); mmengine is
imported when a file or an override is read.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from domains.cfg_options import FLAG as CFG_OPTIONS_FLAG
from domains.cfg_options import parse_cfg_options, parse_value

METHODS = ("cut", "semst", "cyclegan", "spade")
#: ``translators train --feedback-weight``: weight of the semantic-consistency loss on translation vs
#: input with ``--feedback-segmenter`` (BDL's 0.1); config key ``translators.<t>.feedback_weight`` of
#: the workflow is null = this value
FEEDBACK_WEIGHT = 0.1
ARCH_KEYS = ("model.ngf", "model.ndf", "model.n_blocks", "model.n_layers_D", "model.antialias",
             "model.norm", "model.netF_nc", "model.scale_mid_channels", "model.scale_kernel",
             "loss.nce_layers", "semst.multiscale", "semst.gan_on")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key or file."""


@dataclass
class ModelConfig:
    """Network sizes (CUT defaults: resnet_9blocks, ngf=ndf=64, PatchGAN n_layers=3, xavier 0.02)."""

    ngf: int = 64
    ndf: int = 64
    n_blocks: int = 9
    n_layers_D: int = 3
    antialias: bool = True
    norm: str = "instance"
    init_type: str = "xavier"
    init_gain: float = 0.02
    netF_nc: int = 256
    scale_mid_channels: int = 256   # ASPP width of the SemST scale-attention head
    scale_kernel: int = 3           # ASPP atrous kernel (supplement says 4x4; 3 as in DeepLab)


@dataclass
class DataConfig:
    """Crops. CUT uses ``crop``; SemST uses ``local_crop`` (h_l, native resolution) and
    ``global_crop`` (h_g): a window of ``global_crop * global_ratio`` pixels downsampled to h_g."""

    crop: int = 256
    local_crop: int = 256
    global_crop: int = 512
    global_ratio: float = 2.0
    resize_short: int | None = None  # resize every image so its short side is this (None: native)
    flip: bool = True
    prefetch: bool = True


@dataclass
class LossConfig:
    """Loss weights. ``lambda_NCE`` weighs the contrastive term: lambda_NCE in CUT, lambda_hDCE in
    SemST (supplement Eq. 4). ``contrastive`` picks PatchNCE (CUT) or hDCE (SemST)."""

    lambda_GAN: float = 1.0
    lambda_NCE: float = 1.0
    lambda_TS: float = 0.0
    contrastive: str = "patchnce"
    nce_idt: bool = True
    nce_layers: list[int] = field(default_factory=lambda: [0, 4, 8, 12, 16])
    num_patches: int = 256
    nce_T: float = 0.07
    hdce_form: str = "src"
    hdce_gamma_start: float = 50.0
    hdce_gamma_end: float = 10.0
    hdce_step_at: float | None = 0.5   # progress after which gamma = hdce_step_gamma (SRC recipe)
    hdce_step_gamma: float = 1.0
    ts_alpha: float = 0.5
    ts_lam: float = 0.05
    ts_n_centres: int | None = None
    ts_detach_centres: bool = True     # rSMI centres are constants of the basis (translators/losses/rsmi.py)
    ts_patches: int | None = None      # first N sampled patches per image fed to rSMI (None: all)


@dataclass
class SemSTConfig:
    """SemST multi-scale options (ignored by CUT)."""

    multiscale: bool = True
    gan_on: list[str] = field(default_factory=lambda: ["fused"])  # any of fused, local, global


@dataclass
class CycleGANConfig:
    """``cyclegan`` section (CycleGAN / BDL defaults; used by translators.methods.cyclegan)."""

    lambda_cycle: float = 10.0               # lambda_A = lambda_B
    lambda_identity: float = 0.5             # identity weight = lambda_identity * lambda_cycle
    pool_size: int = 50                      # image history per discriminator (0: no pool)
    lambda_sem_reconstruction: float = 10.0  # BDL lambda_A * lambda_semantic on L_sem(rec, x)


@dataclass
class SpadeConfig:
    """``spade`` section (SPADE-guided translator; used by translators.methods.spade_guided)."""

    num_classes: int = 19            # channels of the guidance (the segmenter's classes)
    n_downsample: int = 2            # encoder downsamplings = decoder upsamplings
    n_res: int = 4                   # residual blocks in E and (SPADE) in G
    spade_hidden: int = 128          # SPADE shared-conv width (hard-coded 128 in SPADE)
    seg_interp: str = "bilinear"     # guidance resize: bilinear | nearest
    spectral_norm: bool = True       # on E, G and D convs (paper: all models)
    num_D: int = 3                   # discriminator scales per domain
    norm_D: str = "instance"         # PatchGAN norm: instance | none (SPADE: spectral + instance)
    lambda_recon: float = 10.0
    lambda_GAN: float = 1.0
    lambda_cycle: float = 10.0       # image cycle L_CC_I
    lambda_latent: float = 1.0       # latent cycle L_CC_H
    lambda_SCE: float = 10.0
    lr_D_ratio: float = 4.0          # TTUR: D lr = ratio * G lr (SPADE: 4e-4 / 1e-4)
    poly_power: float = 0.9
    segmenter: str | None = None     # guidance segmenter (set from --feedback-segmenter at training)
    segmenter_sha256: str | None = None


@dataclass
class TrainConfig:
    """Optimisation schedule (CUT: Adam(0.5, 0.999), lr 2e-4 for G, D, F; linear decay to 0)."""

    iters: int = 200000
    decay_iters: int | None = None   # last N (<= iters) iterations decay linearly to 0 (None: iters // 2)
    batch_size: int = 1
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    save_every: int = 2000
    log_every: int = 50
    sample_every: int = 2000
    amp: bool = True                 # CUDA only: autocast + GradScaler
    cpu_amp: bool | str = "auto"     # CPU training: bf16 autocast; auto = where the CPU has native bf16
    amp_dtype: str = "float16"
    channels_last: bool = True       # CUDA only
    cudnn_benchmark: bool = True     # CUDA only; set false for bit-exact GPU resume
    cpu_malloc_tuning: bool = True   # CPU only: glibc keeps freed memory (methods.base.tune_cpu_allocator)
    device: str = "auto"


@dataclass
class RefineConfig:
    """Full-resolution inference. ``tile`` None: the training crop (CUT crop / SemST h_l)."""

    tile: int | None = None
    tile_overlap: float = 0.25
    blend: str = "linear"             # linear (ramp weights, fewer seams) | mean; both normalised to sum 1
    global_max_side: int | None = 2048  # SemST global branch is tiled above this long side
    batch_size: int = 4


@dataclass
class TranslatorConfig:
    method: str = "cut"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    semst: SemSTConfig = field(default_factory=SemSTConfig)
    cyclegan: CycleGANConfig = field(default_factory=CycleGANConfig)
    spade: SpadeConfig = field(default_factory=SpadeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def get(self, key: str) -> Any:
        obj: Any = self
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    def arch(self) -> dict:
        """What a checkpoint must agree on to be loaded into this config's networks."""
        return {"method": self.method, **{k: _plain(self.get(k)) for k in ARCH_KEYS}}

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TranslatorConfig":
        data = copy.deepcopy(data)
        method = data.get("method", "cut")
        if method not in METHODS:
            raise ConfigError(f"{source}: method must be one of {METHODS}, got {method!r}")
        cfg = cls(method=method)
        for key, value in METHOD_DEFAULTS.get(method, {}).items():
            _assign(cfg, key, value, source)
        _merge(cfg, data, "", source)
        validate(cfg, source)
        return cfg


#: defaults that differ per method, applied before the YAML/overrides
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "semst": {"loss.contrastive": "hdce", "loss.lambda_TS": 2.0},
}


#: strings a boolean field reads as true / false: DictAction's true/false, and YAML 1.1's yes/no/on/off
#: (so ``train.cpu_amp=off`` is False as before, when overrides were read as YAML)
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
#: strings an optional field reads as None besides DictAction's ``None``: YAML's null spellings, and nothing
NULLS = ("null", "~", "")


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _field_types(obj: Any) -> typing.Mapping[str, Any]:
    return _class_field_types(type(obj))


@functools.lru_cache(maxsize=None)
def _class_field_types(cls: type) -> typing.Mapping[str, Any]:
    """Field name -> annotated type of a config dataclass (resolved once: the workflow loads configs
    many times at plan time, workflow/lib/wflib/validate.py)."""
    hints = typing.get_type_hints(cls)
    return types.MappingProxyType({f.name: hints[f.name] for f in dataclasses.fields(cls)})


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; error names ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in NULLS)):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{source}: bad value for '{key}'")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):  # "0,4" or "[0, 4]" in a YAML file; one item alone: a list of one
            value = parse_value(value) if value.strip() else []
            value = value if isinstance(value, (list, tuple)) else [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise ConfigError(f"{source}: '{key}' must be true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}") from None
        if as_float != int(as_float):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    return value


def _assign(cfg: TranslatorConfig, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    obj: Any = cfg
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"{source}: unknown config key '{key}' ('{'.'.join(parts[:depth])}' has no sub-keys)")
        types_ = _field_types(obj)
        if part not in types_:
            prefix = ".".join(parts[:depth])
            names = [f"{prefix + '.' if prefix else ''}{k}" for k in types_]
            close = difflib.get_close_matches(".".join(parts[:depth + 1]), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: unknown config key '{key}' (known here: {', '.join(names)}){hint}")
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(f"{source}: '{key}' is a section; set one of its keys, e.g. '{key}.<name>=...'")
            if part == "method":
                raise ConfigError(f"{source}: 'method' cannot be overridden; use another config file")
            setattr(obj, part, _coerce(value, types_[part], key, source))
            return
        obj = getattr(obj, part)


def _merge(cfg: TranslatorConfig, data: dict, prefix: str, source: str) -> None:
    for k, v in data.items():
        key = f"{prefix}{k}"
        if key == "method":
            continue
        if isinstance(v, dict):
            target = cfg.get(key) if _exists(cfg, key) else None
            if target is None or not dataclasses.is_dataclass(target):
                _assign(cfg, key, v, source)  # raises a clear error
            _merge(cfg, v, key + ".", source)
        else:
            _assign(cfg, key, v, source)


def _exists(cfg: TranslatorConfig, key: str) -> bool:
    try:
        cfg.get(key)
        return True
    except AttributeError:
        return False


def validate(cfg: TranslatorConfig, source: str = "config") -> None:
    """Range/choice checks with the offending key in the message."""
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: '{key}' {msg} (got {cfg.get(key)!r})")

    need(cfg.loss.contrastive in ("patchnce", "hdce"), "loss.contrastive", "must be 'patchnce' or 'hdce'")
    need(cfg.loss.hdce_form in ("src", "paper"), "loss.hdce_form", "must be 'src' or 'paper'")
    need(cfg.loss.num_patches >= 2, "loss.num_patches", "must be >= 2")
    need(len(cfg.loss.nce_layers) > 0, "loss.nce_layers", "must list at least one layer")
    need(cfg.model.norm in ("instance", "batch", "none"), "model.norm", "must be instance|batch|none")
    need(set(cfg.semst.gan_on) <= {"fused", "local", "global"} and len(cfg.semst.gan_on) > 0,
         "semst.gan_on", "must be a non-empty subset of [fused, local, global]")
    if not cfg.semst.multiscale:
        need(set(cfg.semst.gan_on) <= {"fused", "local"}, "semst.gan_on",
             "cannot name 'global' when semst.multiscale is false")
    for key in ("data.crop", "data.local_crop", "data.global_crop"):
        need(cfg.get(key) >= 16 and cfg.get(key) % 4 == 0, key, "must be a multiple of 4 and >= 16")
    need(cfg.data.global_ratio >= 1.0, "data.global_ratio", "must be >= 1")
    for key in ("train.iters", "train.batch_size", "train.save_every", "train.log_every", "train.sample_every"):
        need(cfg.get(key) >= 1, key, "must be >= 1")
    need(cfg.train.decay_iters is None or cfg.train.decay_iters >= 0, "train.decay_iters", "must be >= 0")
    need(cfg.train.amp_dtype in ("float16", "bfloat16"), "train.amp_dtype", "must be float16 or bfloat16")
    need(cfg.train.cpu_amp in ("auto", "on", "off") or isinstance(cfg.train.cpu_amp, bool), "train.cpu_amp",
         "must be auto, on or off (or true / false)")
    need(0.0 <= cfg.refine.tile_overlap < 1.0, "refine.tile_overlap", "must be in [0, 1)")
    need(cfg.refine.blend in ("mean", "linear"), "refine.blend", "must be 'mean' or 'linear'")
    need(cfg.refine.tile is None or (cfg.refine.tile >= 16 and cfg.refine.tile % 4 == 0), "refine.tile",
         "must be a multiple of 4 and >= 16")
    need(cfg.refine.batch_size >= 1, "refine.batch_size", "must be >= 1")
    if cfg.loss.contrastive == "hdce" or cfg.loss.lambda_TS > 0:
        need(cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1")


def read_config_file(path: str | Path) -> dict:
    """The values of a YAML config with its ``_base_`` chain merged in, as ``mmengine.Config.fromfile``
    reads them (the segmenters' configs too): nested sections merged key by key, other values
    (lists included) replaced, ``_delete_: true`` replacing a section. ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"config file {path}: a translator config is a .yaml file")
    import yaml
    from mmengine.config import Config

    try:
        return Config.fromfile(str(path), import_custom_modules=False).to_dict()
    except FileNotFoundError as err:  # a _base_ file (mmengine: 'file "<path>" does not exist')
        raise ConfigError(f"config file {path}: its _base_ {err}") from err
    except RecursionError as err:
        raise ConfigError(f"config file {path}: _base_ cycle") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} (or a _base_ file it names) is not valid YAML: {err}") from err
    except AttributeError as err:  # mmengine looks for _base_ in a top level that is no mapping
        raise ConfigError(f"config file {path} (or a _base_ file it names) must hold a mapping at the top "
                          f"level ({err})") from err
    except (OSError, TypeError, KeyError) as err:  # e.g. a _base_ that names no file, keys repeated among bases
        raise ConfigError(f"config file {path}: its _base_ chain cannot be read: {type(err).__name__}: "
                          f"{err}") from err


def load_config(path: str | Path,
                cfg_options: Iterable[str] | Mapping[str, Any] | None = None) -> TranslatorConfig:
    """Read a YAML config (with ``_base_``), apply ``cfg_options`` (``["key=value", ...]`` as given to
    ``--cfg-options``, or a ``{"dotted.key": value}`` mapping), validate."""
    data = read_config_file(path)
    cfg = TranslatorConfig.from_dict(data, source=str(path))
    apply_cfg_options(cfg, cfg_options)
    return cfg


def apply_cfg_options(cfg: TranslatorConfig,
                      cfg_options: Iterable[str] | Mapping[str, Any] | None) -> TranslatorConfig:
    """Set each ``key=value`` of ``cfg_options`` (typed by domains.cfg_options, then converted to the
    field's type) and validate; ConfigError naming the key."""
    try:
        options = parse_cfg_options(cfg_options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for key, value in options.items():
        _assign(cfg, key, value, CFG_OPTIONS_FLAG)
    validate(cfg, CFG_OPTIONS_FLAG)
    return cfg


def check_arch(expected: dict, found: dict, what: str) -> None:
    """Raise ConfigError naming ``what`` (a file) and every architecture key that differs."""
    if found.get("method") != expected.get("method"):
        raise ConfigError(f"{what} holds a '{found.get('method')}' translator but the config is "
                          f"method '{expected.get('method')}'; use a checkpoint of the same method")
    diffs = [f"{k}: checkpoint {found.get(k)!r} vs config {expected.get(k)!r}"
             for k in expected if _plain(found.get(k)) != _plain(expected.get(k))]
    if diffs:
        raise ConfigError(f"{what} has a different architecture than the config ({'; '.join(diffs)}); "
                          f"use the config it was trained with")
