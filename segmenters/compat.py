"""MMSegmentation 1.2.2 on this stack (torch 2.14, mmcv-lite 2.1.0): two small compatibility shims.

1. ``mmcv.ops`` stand-in (docs/design.md §5, docs/reference.md §10.1).
   ``import mmseg.models`` runs ``from mmcv.ops import point_sample`` (and ``sigmoid_focal_loss``) at
   module level; with mmcv-lite, ``import mmcv.ops`` fails because the compiled ``mmcv._ext`` is
   missing. :func:`install_mmcv_ops_stand_in` puts a small module in ``sys.modules['mmcv.ops']``
   that provides

   * ``point_sample`` (and the other names of mmcv's own pure-torch ``mmcv/ops/point_sample.py``,
     loaded by file path so nothing of the compiled package is touched),
   * ``sigmoid_focal_loss`` that raises only when called (mmseg imports it at module level),
   * a module ``__getattr__`` raising ``AttributeError`` for dunder names (``inspect`` and the import
     system probe ``__file__``/``__path__``) and ``ModuleNotFoundError`` for any other name, which
     mmseg's/mmengine's ``try: from mmcv.ops import X / except ImportError`` blocks catch.

   When a compiled mmcv is present (``mmcv._ext`` importable) or ``mmcv.ops`` is already imported,
   the function does nothing, so the optional full-mmcv install is used as is.

2. ``torch.load(weights_only=...)`` policy (docs/design.md §5, docs/reference.md §10.2).
   torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7 calls
   ``torch.load(filename, map_location=...)`` without the argument, so resuming a Runner checkpoint
   (it pickles ``HistoryBuffer`` and numpy objects in ``message_hub``) fails. Choice made here:

   * the project's OWN run checkpoints (files under a run's work dir, written by our Runner) are
     trusted and loaded fully: wrap ``runner.train()`` in :func:`trusted_checkpoints` (work_dir) -
     inside the context ``torch.load`` of a path under one of the given folders defaults to
     ``weights_only=False``; every other path keeps torch's default (True). Scoped by path and by
     the ``with`` block, not a process-wide environment switch such as
     ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, so user-supplied files are never unpickled fully;
   * anything a user supplies (``--init`` weights, ``final.pth`` handed to evaluate/pseudolabel/
     translators) is loaded with :func:`load_untrusted` (``weights_only=True``); ``final.pth`` is
     written to contain tensors and plain containers only, so that always works.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import threading
import types
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

logger = logging.getLogger(__name__)

STAND_IN_FLAG = "__segmenters_stand_in__"
FULL_MMCV_HINT = ("it needs the compiled mmcv ops (mmcv._ext), which mmcv-lite does not ship; "
                  "see docs/cli.md, 'Optional: full mmcv with compiled ops', to build mmcv 2.1.0")


def compiled_mmcv_available() -> bool:
    """True when a compiled mmcv extension (``mmcv._ext``) is importable or already imported."""
    if "mmcv._ext" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("mmcv._ext") is not None
    except (ImportError, ValueError):
        return False


def is_stand_in(module: object) -> bool:
    """True when ``module`` is the ``mmcv.ops`` stand-in installed by this module."""
    return isinstance(module, types.ModuleType) and bool(getattr(module, STAND_IN_FLAG, False))


def _load_point_sample_file(mmcv_dir: Path) -> types.ModuleType:
    """Load mmcv's pure-torch ``mmcv/ops/point_sample.py`` by file path (no package __init__ runs)."""
    path = mmcv_dir / "ops" / "point_sample.py"
    if not path.is_file():
        raise ImportError(f"segmenters.compat: {path} not found; mmcv-lite 2.1.0 ships it - "
                          "reinstall the pinned mmcv-lite (requirements.txt)")
    spec = importlib.util.spec_from_file_location("mmcv.ops.point_sample", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sigmoid_focal_loss(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(f"mmcv.ops.sigmoid_focal_loss is unavailable: {FULL_MMCV_HINT}")


def _make_stand_in(point_sample_module: types.ModuleType) -> types.ModuleType:
    ops = types.ModuleType("mmcv.ops", "Stand-in for mmcv.ops installed by segmenters.compat "
                                       "(mmcv-lite has no compiled ops).")
    setattr(ops, STAND_IN_FLAG, True)
    for name in ("point_sample", "bilinear_grid_sample", "SimpleRoIAlign",
                 "rel_roi_point_to_rel_img_point", "denormalize", "normalize",
                 "generate_grid", "rel_roi_point_to_abs_img_point", "abs_img_point_to_rel_img_point",
                 "get_shape_from_feature_map"):
        if hasattr(point_sample_module, name):
            setattr(ops, name, getattr(point_sample_module, name))
    ops.sigmoid_focal_loss = _sigmoid_focal_loss
    ops.point_sample_module = point_sample_module

    def __getattr__(name: str) -> Any:  # PEP 562 module attribute hook
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module 'mmcv.ops' (stand-in) has no attribute {name!r}")
        raise ModuleNotFoundError(f"mmcv.ops.{name} is unavailable: {FULL_MMCV_HINT}",
                                  name=f"mmcv.ops.{name}")

    ops.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return ops


def install_mmcv_ops_stand_in() -> bool:
    """Install the ``mmcv.ops`` stand-in unless a real/compiled one is available.

    Returns True when the stand-in is (now or already) installed, False when it stepped aside.
    Must run before anything imports ``mmseg.models`` / ``mmseg.utils``; ``import segmenters`` does.
    """
    existing = sys.modules.get("mmcv.ops")
    if existing is not None:
        return is_stand_in(existing)
    if compiled_mmcv_available():
        logger.debug("compiled mmcv found; using the real mmcv.ops")
        return False
    import mmcv  # mmcv-lite: pure python

    ops = _make_stand_in(_load_point_sample_file(Path(mmcv.__file__).parent))
    sys.modules["mmcv.ops"] = ops
    # mmcv.cnn.bricks.transformer warns once that MultiScaleDeformableAttention (a compiled op) is
    # missing; expected with the stand-in and irrelevant to segmentation, so it is filtered.
    warnings.filterwarnings("ignore", message=r".*MultiScaleDeformableAttention.*", category=UserWarning)
    sys.modules["mmcv.ops.point_sample"] = ops.point_sample_module
    mmcv.ops = ops  # type: ignore[attr-defined]
    logger.debug("installed the mmcv.ops stand-in (mmcv-lite)")
    return True


# --------------------------------------------------------------------------------------------------
# torch.load policy
# --------------------------------------------------------------------------------------------------
_patch_lock = threading.RLock()


def _is_under(path: str | os.PathLike, roots: tuple[Path, ...]) -> bool:
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, TypeError, ValueError):
        return False
    return any(resolved == root or root in resolved.parents for root in roots)


@contextlib.contextmanager
def trusted_checkpoints(*roots: str | os.PathLike) -> Iterator[None]:
    """Within the block, ``torch.load`` of a file under ``roots`` defaults to ``weights_only=False``.

    Use around mmengine ``Runner.train()`` / ``resume`` with the run's work dir, whose
    ``iter_<n>.pth`` files our own Runner wrote (they pickle mmengine/numpy objects). Other paths,
    file objects and calls that pass ``weights_only`` explicitly are unchanged. The patch is
    undone on exit (nesting is fine).
    """
    resolved = tuple(Path(r).resolve() for r in roots)
    with _patch_lock:
        original = torch.load

        def load(f: Any, *args: Any, **kwargs: Any) -> Any:
            if "weights_only" not in kwargs and isinstance(f, (str, os.PathLike)) and _is_under(f, resolved):
                kwargs["weights_only"] = False
            return original(f, *args, **kwargs)

        torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        with _patch_lock:
            torch.load = original  # type: ignore[assignment]


def load_trusted(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Fully unpickle one of the project's own run checkpoints (mmengine Runner ``iter_<n>.pth``)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def load_untrusted(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a user-supplied file safely (``weights_only=True``: tensors and plain containers only).

    Raises ``ValueError`` naming the file when it is missing or needs full unpickling.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint file")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name and what to do
        from domains.errors import torch_load_problem

        if "Unsupported global" in str(err):
            raise ValueError(
                f"{p}: cannot be loaded with weights_only=True (it pickles Python objects; e.g. a full "
                "mmengine training checkpoint). Pass a plain state dict or a final.pth; a training "
                "run's own checkpoints are resumed with --resume instead") from err
        # never torch's own text: it advises weights_only=False, which the project never does
        raise ValueError(f"{p}: not a readable torch checkpoint: {torch_load_problem(err)}") from err
