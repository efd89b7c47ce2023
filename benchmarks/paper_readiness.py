"""Paper-scale readiness check (a benchmark, not a test): runs without the datasets or a GPU.

Three parts (``--parts plan cli memory``), one table each, printed and written to ``--out``
(``paper_readiness_<part>.csv`` and one ``paper_readiness.md``):

1. **plan** -- ``snakemake -n`` of every paper target (pairs gta2cs and syn2cs; each UDA method x
   translator of the config's UDA table, the table's extra rows and LDR with its own translator,
   plus each pair's ``<pair>_uda_table.csv`` / ``<pair>_translation_table.csv``) on a fake tree in
   the real datasets' layout and sizes (``benchmarks/paper_plan.py``): whether it plans, the jobs
   of round 0 and the jobs up to the method's last round (``results/<pair>/<combo>/r<max>.csv``).
2. **cli** -- the real CLIs, 2 iterations each on CPU at a reduced resolution, starting from
   pretrained-weight files built locally into a temporary ``$SEMST_WEIGHTS_DIR`` under the
   registry's file names (``domains/weights.py``: a random mmseg ``ResNetV1c(depth=101)`` state
   dict, torchvision ``vgg16`` / ``vgg19(weights=None)`` state dicts): ``python -m segmenters train
   --preset paper --max-iters 2`` for DeepLab-V2 R101 and FCN-8s VGG16 with source-only, BDL and
   SePiCo (``--cfg-options`` shrink crop and scales); DeepLab-V2 with LDR (round 0) and the ProDA
   chain as the workflow runs it (warm-up -> ``segmenters prototypes`` -> stage 1 -> ``segmenters
   pseudolabel --rule fixed`` -> distillation, each from the previous step's files); ``python -m
   translators train --iters 2`` for SemST, CUT, LDR's CycleGAN (target -> source) and SPADE (guided
   by the source-only DeepLab-V2 just trained) at paper width (reduced crops), and SemST's round-1
   fine-tune (``--init`` + ``--feedback-segmenter``). Reports exit status and wall time; a step whose
   prerequisite failed is "skipped".
3. **memory** -- the peak GPU memory each training stage needs at FULL paper size, estimated from
   CPU steps of the same models (``model.train_step`` / ``TranslatorMethod.train_step``, fp32,
   random weights and data). Stages: DeepLab-V2 R101 and FCN-8s VGG16 with source-only, BDL
   (with pseudo-labels, as in rounds >= 1) and SePiCo (contrastive terms on, as after
   ``start_distribution_iter``); DeepLab-V2 with LDR (pseudo-labels, VGG19 perceptual loss) and
   ProDA's warm-up, stage 1 (EMA teacher, prototypes, soft labels) and stages 2/3 (frozen teacher);
   SemST, CUT, CycleGAN and SPADE at the paper configs; SemST and LDR's CycleGAN with the round >= 1
   feedback loss through a frozen paper DeepLab-V2 (SPADE always has one: its guide).

   * static bytes, measured: parameters and buffers of every network of the stage (EMA teacher,
     discriminators, frozen feedback segmenter included), gradients (every parameter an
     optimiser steps), optimiser state after one step (SGD momentum, Adam moments);
   * activation bytes, measured: the peak of the bytes of tensors autograd keeps for backward
     (``torch.autograd.graph.saved_tensors_hooks``; counted once per storage, parameters and
     buffers left out, released when autograd frees them) during one whole training step, at
     two reduced resolutions, extrapolated linearly in pixel count to the paper's (segmenters:
     512x1024 crops, batch 1 source + 1 target for UDA methods; SemST: local 256 + global 512
     crops; CUT: 256 crops; CycleGAN: 452 crops at batch 4; SPADE: 512 crops); translators are
     measured at batch 1 and extrapolated in batch x pixels;
   * fp32 estimate = static + activations; AMP estimate = static + activations / 2 + an fp16
     copy of the weights (autocast's cast cache);
   * ``fits 24GB``: the estimate leaves at least ``--reserve-gib`` (default 2 GiB) of a 24 GiB
     GPU free;
   * linearity check (``--check-size``, default 256x512): the first segmenter stage (DeepLab-V2
     source-only) is measured once more at a larger crop and compared with the extrapolated line.

   Limits: the estimate is meant as a lower bound of what ``torch.cuda.max_memory_allocated`` reports, and
   below ``nvidia-smi``. Not counted: the CUDA context (~0.3-0.5 GiB), cuDNN workspaces (with
   ``cudnn.benchmark`` they can reach GBs for a moment), caching-allocator rounding and
   fragmentation, tensors alive at the peak without being saved for backward (the loss, logits a
   method keeps, no-grad teacher passes, the gradients of activations during backward: about the
   largest layer's activation, twice), and CPU-vs-cuDNN differences in what a kernel saves. AMP
   halves only what autocast runs in fp16 (BatchNorm statistics, softmax / cross-entropy and our
   fp32 loss regions stay fp32), so the AMP column is optimistic. The reserve is a rule of thumb.

::

    python benchmarks/paper_readiness.py [--out results/paper_readiness] [--parts plan cli memory]
        [--threads 1] [--work DIR] [--seg-sizes 64x128 128x256] [--tr-scales 0.25 0.5]
        [--check-size 256x512|none] [--targets gta2cs_sepico_semst ...] [--reserve-gib 2] [--no-chains]

About 18 minutes with the defaults on one core of this project's 2-core CPU machines, shared with
other jobs (8 with ``--no-chains``; docs/bench/README.md; numbers in docs/paper_scale.md).
``--threads`` sets OpenMP / torch threads (1 by default: on a shared 2-core machine two spinning
OpenMP threads slow a step many times).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import paper_plan  # noqa: E402
from domains.io import atomic_path, atomic_write_text  # noqa: E402

log = logging.getLogger("paper_readiness")
GIB = 2 ** 30
GPU_GIB = 24.0
#: paper sizes: segmenter crop (h, w); translator crops from the paper configs
SEG_FULL = (512, 1024)
SEG_ARCHS = ("deeplabv2", "fcn8s")
SEG_UDAS = ("source_only", "bdl", "sepico")
TRANSLATORS = ("semst", "cut")


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """``"64x128"`` -> (64, 128) (height x width)."""
    h, w = text.lower().split("x")
    return int(h), int(w)


def gib(n: float) -> float:
    """Bytes -> GiB."""
    return n / GIB


def table_text(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A markdown table of ``rows`` (floats with 2 decimals)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """``rows`` as CSV, written atomically."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# weight files
# ---------------------------------------------------------------------------------------------
def build_weight_files(folder: Path, names: Iterable[str] = ("resnet101_v1c", "vgg16", "vgg19")) -> Path:
    """Random weight files under the registry's file names (``domains.weights.REGISTRY``) in
    ``folder``, as the downloads are laid out; existing files are kept. Returns ``folder``."""
    import torchvision

    import segmenters  # noqa: F401  (mmcv.ops stand-in before mmseg)
    from domains.weights import REGISTRY
    from mmseg.models.backbones import ResNetV1c

    builders: dict[str, Callable[[], dict]] = {
        "resnet101_v1c": lambda: ResNetV1c(depth=101).state_dict(),
        "vgg16": lambda: torchvision.models.vgg16(weights=None).state_dict(),
        "vgg19": lambda: torchvision.models.vgg19(weights=None).state_dict(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / REGISTRY[name].filename
        if not path.is_file():
            torch.manual_seed(0)
            with atomic_path(path) as tmp:
                torch.save(builders[name](), tmp)
    return folder


# ---------------------------------------------------------------------------------------------
# 1. plan
# ---------------------------------------------------------------------------------------------
def plan_rows(work: Path, targets: Sequence[paper_plan.PaperTarget], pairs: Sequence[str],
              only: Sequence[str] | None = None) -> list[dict]:
    """One row per paper target (and per pair's UDA / translation table): plans?, round-0 jobs,
    jobs up to the last round's evaluation, seconds. ``only``: names such as ``gta2cs_sepico_semst``
    or ``gta2cs_uda_table`` (default: all)."""
    def wanted(name: str) -> bool:
        return only is None or name in only

    rows = []
    for t in (t for t in targets if wanted(f"{t.pair}_{t.combo}")):
        t0 = time.perf_counter()
        ok, counts, _ = paper_plan.plan(work, t.target)
        row = {"pair": t.pair, "target": t.target, "plans": "yes" if ok else "NO",
               "jobs_r0": sum(counts.values()), "last_round": t.max_round, "jobs_to_last_round": "-"}
        if ok and t.last_round_target:
            ok_last, counts_last, _ = paper_plan.plan(work, t.last_round_target)
            row["jobs_to_last_round"] = sum(counts_last.values()) if ok_last else "NO"
            row["plans"] = "yes" if ok_last else "NO (last round)"
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        log.info("plan %s: %s, %s jobs", t.target, row["plans"], row["jobs_r0"])
    for pair in pairs:
        for table in (t for t in ("uda_table", "translation_table") if wanted(f"{pair}_{t}")):
            t0 = time.perf_counter()
            target = f"results/{pair}_{table}.csv"
            ok, counts, _ = paper_plan.plan(work, target)
            rows.append({"pair": pair, "target": target, "plans": "yes" if ok else "NO",
                         "jobs_r0": sum(counts.values()), "last_round": "-", "jobs_to_last_round": "-",
                         "seconds": time.perf_counter() - t0})
    return rows


# ---------------------------------------------------------------------------------------------
# 2. the real CLIs, 2 iterations
# ---------------------------------------------------------------------------------------------
def segmenter_cli_args(arch: str, uda: str, prepared: Path, work_dir: Path, size: tuple[int, int],
                       extra: Sequence[str] = (), cfg_options: Sequence[str] = ()) -> list[str]:
    """``python -m segmenters train`` arguments: paper preset, 2 iterations, crops and scales shrunk
    to ``size`` (h, w) (source resized to keep GTA5's aspect, target and test to the crop);
    ``extra``: more arguments (``--pseudo``, ``--init``), ``cfg_options``: more ``--cfg-options``."""
    h, w = size
    return ["-m", "segmenters", "train", "--arch", arch, "--preset", "paper", "--uda", uda,
            "--source", str(prepared / "gta5"), "--target", str(prepared / "cityscapes"),
            "--work-dir", str(work_dir), "--max-iters", "2", *extra, "--cfg-options",
            f"crop_size=({h},{w})", f"model.data_preprocessor.size=({h},{w})",
            f"train_scale=({round(2 * h * 1280 / 720)},{2 * h})", f"target_scale=({w},{h})",
            f"test_scale=({w},{h})", "log_interval=1", *cfg_options]


#: paper translator configs: (crop keys scaled by the CLI runs, source, target); LDR's CycleGAN
#: translates target -> source as in the workflow
TRANSLATOR_CLI = {
    "semst": (("local_crop", 256), ("global_crop", 512)),
    "cut": (("crop", 256),),
    "cyclegan": (("crop", 452), ("resize_short", 512)),
    "spade": (("crop", 512), ("resize_short", 512)),
}


def scaled_crop(size: int, scale: float) -> int:
    """``size`` x ``scale`` rounded to a multiple of 4 (what the translators' crops must be)."""
    return max(16, 4 * round(size * scale / 4))


def translator_cli_args(method: str, prepared: Path, out: Path, scale: float,
                        extra: Sequence[str] = ()) -> list[str]:
    """``python -m translators train`` arguments: the paper config, 2 iterations, crops x ``scale``;
    ``extra``: more arguments (``--init``, ``--feedback-segmenter``)."""
    crops = ["--cfg-options", *(f"data.{key}={scaled_crop(size, scale)}" for key, size in TRANSLATOR_CLI[method])]
    source, target = ("cityscapes", "gta5") if method == "cyclegan" else ("gta5", "cityscapes")
    return ["-m", "translators", "train", "--config", str(ROOT / "translators/configs" / f"{method}_paper.yaml"),
            "--source", str(prepared / source), "--target", str(prepared / target), "--out", str(out),
            "--iters", "2", "--device", "cpu", "--no-progress", *crops, *extra]


def run_cli(stage: str, args: list[str], env: dict[str, str], done: Path, timeout: float = 900) -> dict:
    """Run one CLI (``sys.executable`` + ``args``) and check that it wrote ``done``."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    ok = proc.returncode == 0 and done.is_file()
    note = "" if ok else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:200]
    log.info("cli %s: %s in %.1f s %s", stage, "ok" if ok else "FAILED", wall, note)
    return {"stage": stage, "ok": "yes" if ok else "NO", "exit": proc.returncode, "wall_s": wall, "note": note}


@dataclass
class CliStep:
    """One CLI run of part 2: its table name, arguments, the file it must write, the steps it needs."""

    stage: str
    args: list[str]
    done: Path
    size: str
    needs: tuple[str, ...] = ()


def cli_steps(work: Path, seg_size: tuple[int, int], tr_scale: float, archs: Sequence[str] = SEG_ARCHS,
              udas: Sequence[str] = SEG_UDAS, translators: Sequence[str] = TRANSLATORS,
              chains: bool = True) -> list[CliStep]:
    """The CLI runs of part 2 in order: each arch x UDA method; with ``chains`` (DeepLab-V2 only) LDR
    (round 0), the ProDA chain as the workflow runs it (warm-up -> ``segmenters prototypes`` -> stage 1
    -> ``segmenters pseudolabel --rule fixed`` -> distillation, each from the previous one's files);
    each translator, and with ``chains`` LDR's CycleGAN (target -> source), SPADE guided by the
    source-only DeepLab-V2 and the round >= 1 SemST fine-tune with the semantic feedback loss."""
    prepared, cli = work / "data" / "prepared", work / "cli"
    size = f"{seg_size[0]}x{seg_size[1]}"
    steps = [CliStep(f"segmenters train {a} paper {u}", segmenter_cli_args(a, u, prepared, cli / f"{a}_{u}", seg_size),
                     cli / f"{a}_{u}" / "final.pth", size) for a in archs for u in udas]
    seg = cli / "deeplabv2_source_only" / "final.pth"
    seg_step = "segmenters train deeplabv2 paper source_only"
    if chains and "deeplabv2" in archs:
        target = ["--target", str(prepared / "cityscapes"), "--split", "train"]
        warm, stage1, pseudo0, pseudo1 = (cli / "proda_r0", cli / "proda_r1", cli / "proda_pseudo_r0",
                                          cli / "proda_pseudo_r1")
        steps += [
            CliStep("segmenters train deeplabv2 paper ldr (round 0)",
                    segmenter_cli_args("deeplabv2", "ldr", prepared, cli / "deeplabv2_ldr", seg_size),
                    cli / "deeplabv2_ldr" / "final.pth", size),
            CliStep("segmenters train deeplabv2 paper proda_warmup",
                    segmenter_cli_args("deeplabv2", "proda_warmup", prepared, warm, seg_size), warm / "final.pth", size),
            CliStep("segmenters prototypes (ProDA)", ["-m", "segmenters", "prototypes", "--checkpoint",
                                                      str(warm / "final.pth"), *target, "--out", str(pseudo0),
                                                      "--device", "cpu"],
                    pseudo0 / "meta.json", "test_scale " + size, ("segmenters train deeplabv2 paper proda_warmup",)),
            CliStep("segmenters train deeplabv2 paper proda_stage1",
                    segmenter_cli_args("deeplabv2", "proda_stage1", prepared, stage1, seg_size,
                                       ["--pseudo", str(pseudo0), "--init", str(warm / "final.pth")],
                                       [f"uda.proda.teacher={warm / 'final.pth'}"]),
                    stage1 / "final.pth", size, ("segmenters prototypes (ProDA)",)),
            CliStep("segmenters pseudolabel --rule fixed (ProDA)",
                    ["-m", "segmenters", "pseudolabel", "--checkpoint", str(stage1 / "final.pth"), *target,
                     "--rule", "fixed", "--threshold", "0.95", "--out", str(pseudo1), "--device", "cpu"],
                    pseudo1 / "meta.json", "test_scale " + size, ("segmenters train deeplabv2 paper proda_stage1",)),
            CliStep("segmenters train deeplabv2 paper proda_distill",
                    segmenter_cli_args("deeplabv2", "proda_distill", prepared, cli / "proda_r2", seg_size,
                                       ["--pseudo", str(pseudo1), "--init", str(stage1 / "final.pth")],
                                       [f"uda.proda.teacher={stage1 / 'final.pth'}"]),
                    cli / "proda_r2" / "final.pth", size, ("segmenters pseudolabel --rule fixed (ProDA)",)),
        ]

    def tr_size(method: str) -> str:
        return ", ".join(f"{k} {scaled_crop(v, tr_scale)}" for k, v in TRANSLATOR_CLI[method])

    methods = list(translators) + ([m for m in ("cyclegan", "spade") if m not in translators] if chains else [])
    for method in methods:
        out = cli / f"translator_{method}"
        extra, needs, name = [], (), f"translators train {method}_paper"
        if method == "spade":  # guided by a segmenter's logits from round 0 on
            extra, needs, name = ["--feedback-segmenter", str(seg)], (seg_step,), name + " (guide: DeepLab-V2)"
        elif method == "cyclegan":
            name += " (LDR: target -> source)"
        steps.append(CliStep(name, translator_cli_args(method, prepared, out, tr_scale, extra), out / "final.pt",
                             tr_size(method), needs))
    if chains and "semst" in translators and "deeplabv2" in archs:
        first = "translators train semst_paper"
        out = cli / "translator_semst_r1"
        steps.append(CliStep("translators train semst_paper round 1 (--init, feedback DeepLab-V2)",
                             translator_cli_args("semst", prepared, out, tr_scale,
                                                 ["--init", str(cli / "translator_semst" / "final.pt"),
                                                  "--feedback-segmenter", str(seg), "--feedback-weight", "0.1"]),
                             out / "final.pt", tr_size("semst"), (first, seg_step)))
    return steps


def cli_rows(work: Path, weights: Path, threads: int, seg_size: tuple[int, int], tr_scale: float,
             archs: Sequence[str] = SEG_ARCHS, udas: Sequence[str] = SEG_UDAS,
             translators: Sequence[str] = TRANSLATORS, chains: bool = True) -> list[dict]:
    """2-iteration runs of the paper models through the real CLIs (module docstring, part 2); a step
    whose prerequisite failed is reported as skipped."""
    env = dict(os.environ, SEMST_WEIGHTS_DIR=str(weights), OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    rows, ok = [], set()
    for step in cli_steps(work, seg_size, tr_scale, archs, udas, translators, chains):
        missing = [n for n in step.needs if n not in ok]
        if missing:
            row = {"stage": step.stage, "ok": "skipped", "exit": "-", "wall_s": 0.0, "note": f"needs {missing[0]}"}
        else:
            row = run_cli(step.stage, step.args, env, step.done)
        if row["ok"] == "yes":
            ok.add(step.stage)
        rows.append({**row, "size": step.size})
    return rows


# ---------------------------------------------------------------------------------------------
# 3. memory
# ---------------------------------------------------------------------------------------------
def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    """(key, bytes) of a tensor's storage; None for tensors without one."""
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return s.data_ptr(), s.nbytes()


class _Saved:
    """What autograd holds instead of a saved tensor while a :class:`SavedTensorTracker` is active."""

    __slots__ = ("tracker", "tensor", "key")

    def __init__(self, tracker: "SavedTensorTracker", tensor: torch.Tensor, key: int) -> None:
        self.tracker, self.tensor, self.key = tracker, tensor, key

    def __del__(self) -> None:
        self.tracker._release(self.key)


class SavedTensorTracker:
    """Live and peak bytes of the tensors autograd saves for backward, once per storage.

    ``with SavedTensorTracker(exclude=model.parameters()) as tr: loss.backward()`` -> ``tr.peak``.
    Tensors sharing storage with ``exclude`` (parameters, buffers) are not counted; a storage is
    released when the last graph node holding it is freed (after its backward, or with the graph).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.exclude = {k[0] for k in map(_storage, exclude) if k is not None}
        self.live: dict[int, list[int]] = {}       # storage key -> [references, bytes]
        self.current = 0
        self.peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> "SavedTensorTracker":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, t: torch.Tensor) -> Any:
        info = _storage(t)
        if info is None or info[0] in self.exclude or info[1] == 0:
            return t
        key, nbytes = info
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [1, nbytes]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        else:
            entry[0] += 1
        # detached: same storage, no grad_fn -- keeping ``t`` itself would make a saved output and
        # the node saving it a reference cycle (never freed if that graph is dropped unused)
        return _Saved(self, t.detach(), key)

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[key]


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct tensors (by identity)."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def optimizer_params(optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """Every parameter the optimisers step (each has a gradient)."""
    return [p for opt in optimizers for g in opt.param_groups for p in g["params"]]


def optimizer_state_bytes(optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Bytes of the optimisers' state tensors (momentum, Adam moments)."""
    return tensor_bytes(v for opt in optimizers for state in opt.state.values()
                        for v in state.values() if isinstance(v, torch.Tensor))


def extrapolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """Value at ``x`` of the line through the last two ``(x, y)`` points (least squares for more)."""
    if len(points) < 2:
        raise ValueError("extrapolate needs two points")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    n = len(points)
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
    return my + slope * (x - mx)


@dataclass
class Stage:
    """A training stage to measure: its networks, its optimisers, and a step at a given size.

    ``step(size)`` runs one full training step at ``size``; ``pixels(size)`` is what activations
    scale with (for translators: batch x pixels); ``full`` is the paper's size; ``keep``: objects
    that must live as long as the stage (temporary folders its step reads).
    """

    name: str
    modules: list[torch.nn.Module]
    optimizers: Callable[[], list[torch.optim.Optimizer]]
    step: Callable[[Any], None]
    pixels: Callable[[Any], float]
    sizes: list[Any]
    full: Any
    full_label: str
    keep: list[Any] = field(default_factory=list)   # kept alive with the stage (temporary folders)


@dataclass
class MemoryEstimate:
    """Static parts and extrapolated activations of one stage (GiB), with the fit points."""

    stage: str
    full_size: str
    params_gib: float
    grads_gib: float
    optim_gib: float
    act_points: list[tuple[str, float, float]] = field(default_factory=list)   # (size, GiB, s)
    act_full_gib: float = 0.0

    @property
    def static_gib(self) -> float:
        return self.params_gib + self.grads_gib + self.optim_gib

    @property
    def fp32_gib(self) -> float:
        return self.static_gib + self.act_full_gib

    @property
    def amp_gib(self) -> float:
        return self.static_gib + self.act_full_gib / 2 + self.params_gib / 2

    def row(self, reserve_gib: float = 2.0) -> dict:
        """The table row: static parts, the two fitted activation points, the estimates, the verdicts."""
        (small, act_s, sec_s), (large, act_l, sec_l) = self.act_points[0], self.act_points[-1]
        budget = GPU_GIB - reserve_gib
        return {"stage": self.stage, "full size": self.full_size, "params GiB": self.params_gib,
                "grads GiB": self.grads_gib, "optim GiB": self.optim_gib, "fit sizes": f"{small}, {large}",
                "act small GiB": act_s, "act large GiB": act_l, "step small s": sec_s, "step large s": sec_l,
                "act full GiB": self.act_full_gib, "fp32 GiB": self.fp32_gib, "AMP GiB": self.amp_gib,
                "fits 24GB fp32": "yes" if self.fp32_gib <= budget else "no",
                "fits 24GB AMP": "yes" if self.amp_gib <= budget else "no"}


def estimate_stage(stage: Stage) -> MemoryEstimate:
    """Measure ``stage`` at each of its sizes and extrapolate (module docstring, part 3)."""
    params = [t for m in stage.modules for t in (*m.parameters(), *m.buffers())]
    points, labels = [], []
    for size in stage.sizes:
        t0 = time.perf_counter()
        with SavedTensorTracker(exclude=params) as tracker:
            stage.step(size)
        secs = time.perf_counter() - t0
        points.append((stage.pixels(size), float(tracker.peak)))
        labels.append((size_label(size), gib(tracker.peak), secs))
        log.info("memory %s @ %s: %.3f GiB saved for backward, %.1f s", stage.name, size_label(size),
                 gib(tracker.peak), secs)
    optimizers = stage.optimizers()
    return MemoryEstimate(
        stage=stage.name, full_size=stage.full_label,
        params_gib=gib(tensor_bytes(params)),
        grads_gib=gib(tensor_bytes(optimizer_params(optimizers))),
        optim_gib=gib(optimizer_state_bytes(optimizers)),
        act_points=labels, act_full_gib=gib(max(0.0, extrapolate(points, stage.pixels(stage.full)))))


def linearity_check(stage: Stage, size: Any) -> dict:
    """Measure ``stage`` once more at ``size`` and compare with the line through its fit sizes."""
    params = [t for m in stage.modules for t in (*m.parameters(), *m.buffers())]
    points = []
    for s in [*stage.sizes, size]:
        with SavedTensorTracker(exclude=params) as tracker:
            stage.step(s)
        points.append((stage.pixels(s), float(tracker.peak)))
    predicted = extrapolate(points[:-1], points[-1][0])
    return {"stage": stage.name, "fit sizes": ", ".join(map(size_label, stage.sizes)), "check size": size_label(size),
            "measured GiB": gib(points[-1][1]), "extrapolated GiB": gib(predicted),
            "relative error": predicted / points[-1][1] - 1.0}


def size_label(size: Any) -> str:
    """``64x128`` for a segmenter crop, ``crops x0.25`` for a translator's (scale, batch 1),
    ``crops x0.25 batch 4`` for another batch."""
    if isinstance(size, tuple) and isinstance(size[0], float):
        return f"crops x{size[0]:g}" + (f" batch {size[1]}" if size[1] != 1 else "")
    if isinstance(size, tuple):
        return "x".join(map(str, size))
    return f"crops x{size:g}"


def _seg_batch(size: tuple[int, int], gen: torch.Generator, num_classes: int = 19, soft: bool = False) -> dict:
    """One random image with labels (and, with ``soft``, ProDA's soft pseudo-label) at ``size``."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    h, w = size
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, h, w), generator=gen))
    if soft:
        sample.set_data(dict(soft_label=PixelData(data=torch.rand(num_classes, h, w, generator=gen)
                                                  .softmax(0).half())))
    sample.set_metainfo({"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w)})
    return {"inputs": [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)], "data_samples": [sample]}


def _stage_files(arch: str, uda: str, cfg: Any, aux: Path) -> Path | None:
    """The files a UDA method's model reads, built in ``aux`` with random contents: LDR's VGG19
    weights, ProDA stage 1's prototypes (dimension of the teacher's feature), ProDA's teacher
    ``final.pth``. Sets the config keys; returns the ``--pseudo`` folder (None: not needed)."""
    from segmenters.checkpoint import build_segmentor

    aux.mkdir(parents=True, exist_ok=True)
    if uda == "ldr":
        from domains.weights import REGISTRY

        build_weight_files(aux, ("vgg19",))
        cfg.uda["vgg19_weights"] = str(aux / REGISTRY["vgg19"].filename)
    if uda in ("proda_stage1", "proda_distill"):
        torch.manual_seed(1)
        teacher = build_segmentor(cfg.model)
        path = aux / f"teacher_{arch}.pth"
        torch.save({"state_dict": teacher.state_dict()}, path)
        cfg.uda["proda"] = {**dict(cfg.uda.get("proda") or {}), "teacher": str(path)}
        if uda == "proda_stage1":
            from segmenters.uda.proda import PROTO_FILE
            from segmenters.uda.proda_parts import save_prototypes

            with torch.no_grad():
                dim = teacher.extract_feat(torch.zeros(1, 3, 64, 64))[-1].shape[1]
            save_prototypes(aux / PROTO_FILE, torch.randn(19, dim), torch.ones(19))
        return aux
    return aux if uda == "ldr" else None


def segmenter_stage(arch: str, uda: str, sizes: Sequence[tuple[int, int]], aux: Path | None = None) -> Stage:
    """Paper DeepLab-V2 / FCN-8s with a UDA method's model and optimisers (random init; BDL and LDR
    with pseudo-labels as in rounds >= 1; SePiCo with its contrastive terms on; ProDA stage 1 with
    prototypes and soft labels, stages 2/3 with a frozen teacher). ``aux``: folder for the files
    LDR / ProDA read (default: a temporary one)."""
    import segmenters  # noqa: F401
    from mmengine.config import ConfigDict
    from mmengine.logging import MessageHub
    from mmengine.optim import OptimWrapperDict, build_optim_wrapper
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    from segmenters.configs import load_config
    from segmenters.uda import TrainInputs, get_method

    cfg = load_config(arch, "paper", ["init_from=None"])
    if uda == "sepico":
        cfg.uda["sepico"] = dict(start_distribution_iter=0)
    method = get_method(uda)
    tmp = None
    if aux is None:
        tmp = tempfile.TemporaryDirectory(prefix="paper_readiness_aux_")
        aux = Path(tmp.name)
    pseudo = _stage_files(arch, uda, cfg, aux)
    inputs = TrainInputs(source=Path("unused"), target=Path("unused"),
                         pseudo=(pseudo or Path("unused")) if method.accepts_pseudo else None)
    with DefaultScope.overwrite_default_scope("mmseg"):
        torch.manual_seed(0)
        model = MODELS.build(method.model(cfg, inputs))
        model.init_weights()
        if hasattr(model, "load_teachers"):
            model.load_teachers()  # ProDA: the teacher file again after init_weights, as the train CLI does
        optim = build_optim_wrapper(model, ConfigDict(method.optim_wrapper(cfg)))
    if tmp is not None:
        tmp.cleanup()
    model.train()
    hub = MessageHub.get_instance(f"paper_readiness_{arch}_{uda}")
    gen = torch.Generator().manual_seed(0)
    state = {"iter": 0}

    def step(size: tuple[int, int]) -> None:
        model.data_preprocessor.size = size
        batch = _seg_batch(size, gen)
        if method.paired:
            batch = {"src": batch, "trg": _seg_batch(size, gen, soft=uda == "proda_stage1")}
        hub.update_info("iter", state["iter"])
        state["iter"] += 1
        model.train_step(batch, optim)

    def optimizers() -> list[torch.optim.Optimizer]:
        wrappers = optim.optim_wrappers.values() if isinstance(optim, OptimWrapperDict) else [optim]
        return [w.optimizer for w in wrappers]

    images = "source + target" if method.paired else "source"
    backbone = "R101" if arch == "deeplabv2" else "VGG16"
    return Stage(name=f"{arch} {backbone} {uda}", modules=[model],
                 optimizers=optimizers, step=step, pixels=lambda s: float(s[0] * s[1]), sizes=list(sizes),
                 full=SEG_FULL, full_label=f"512x1024, batch 1 {images}")


def _feedback_segmenter(path: Path = Path("random")) -> Any:
    """A frozen paper DeepLab-V2 (random weights) as the round >= 1 feedback segmenter (and SPADE's
    guide, which records the sha256 of ``path``: give an existing file then)."""
    import segmenters  # noqa: F401
    from segmenters.checkpoint import build_segmentor
    from segmenters.configs import load_config
    from segmenters.loader import Segmenter
    from translators.feedback import SemanticFeedback

    cfg = load_config("deeplabv2", "paper", ["init_from=None"])
    model = build_segmentor(cfg.model).eval()
    seg = Segmenter(model=model, meta={"num_classes": 19, "test_scale": [1024, 512]}, device=torch.device("cpu"),
                    path=path, amp=False)
    return SemanticFeedback(seg.predict_logits, model, weight=0.1)


def translator_stage(method_name: str, scales: Sequence[float], feedback: bool = False,
                     aux: Path | None = None) -> Stage:
    """The paper translator config of ``method_name`` (fp32 on CPU), one training step at batch 1 and
    crops x ``scale`` (multiples of 4), extrapolated to the config's ``train.batch_size`` at full
    crops (activations are linear in batch x pixels); with ``feedback`` also BDL's semantic loss
    through a frozen paper DeepLab-V2 (rounds >= 1; SPADE always has it: its guide). ``aux``: folder
    for the file standing for the guide (default: a temporary one)."""
    from translators.config import load_config
    from translators.methods import build_method
    from translators.train import make_adam

    cfg = load_config(ROOT / "translators/configs" / f"{method_name}_paper.yaml", ["train.cpu_amp=off"])
    torch.manual_seed(0)
    method = build_method(cfg).setup(torch.device("cpu"), cpu_amp=False)
    t = cfg.train
    opts = {k: make_adam(p, t.lr, (t.beta1, t.beta2)) for k, p in method.param_groups().items()}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    feedback = feedback or method_name == "spade"
    tmp = None
    if feedback and aux is None:
        tmp = tempfile.TemporaryDirectory(prefix="paper_readiness_aux_")  # lives as long as the stage
        aux = Path(tmp.name)
    if feedback:
        guide = aux / "feedback_segmenter.txt"      # SPADE fingerprints its guide's file
        guide.parent.mkdir(parents=True, exist_ok=True)
        guide.write_text("random paper DeepLab-V2 (benchmarks/paper_readiness.py)\n")
    fb = _feedback_segmenter(guide) if feedback else None
    spec = method.crop_spec()
    n = int(t.batch_size)
    gen = torch.Generator().manual_seed(0)

    def crops(scale: float) -> tuple[int, int | None]:
        return (scaled_crop(spec.local[0], scale),
                scaled_crop(spec.global_[0], scale) if spec.global_ is not None else None)

    def image(side: int) -> torch.Tensor:
        return torch.rand(1, 3, side, side, generator=gen) * 2 - 1

    def batch(scale: float) -> dict:
        lh, gh = crops(scale)
        out = {"A_l": image(lh), "B_l": image(lh)}
        if gh is not None:
            win = float(round(gh * spec.ratio))
            out.update(A_g=image(gh), B_g=image(gh), A_box=torch.tensor([[0.0, 0.0, win, win]]),
                       B_box=torch.tensor([[0.0, 0.0, win, win]]))
        return out

    def step(size: tuple[float, int]) -> None:
        method.train_step(batch(size[0]), 0.1, opts, scaler, feedback=fb)

    def pixels(size: tuple[float, int]) -> float:
        lh, gh = crops(size[0])
        return float(size[1] * (lh * lh + (gh * gh if gh is not None else 0)))

    if spec.global_ is not None:
        label = f"local {spec.local[0]} + global {spec.global_[0]}, batch {n}"
    else:
        label = f"{spec.local[0]}x{spec.local[1]}, batch {n}"
    if fb is not None:
        label += ", frozen DeepLab-V2 " + ("guide" if method_name == "spade" else "on the output")
    modules = [method] + ([fb.model] if fb is not None else [])
    name = f"{method_name} paper"
    if method_name == "spade":
        name += " (guide R101)"
    elif feedback:
        name += " + feedback R101 (rounds >= 1)"
    return Stage(name=name, modules=modules, optimizers=lambda: list(opts.values()), step=step, pixels=pixels,
                 sizes=[(float(sc), 1) for sc in scales], full=(1.0, n), full_label=label,
                 keep=[tmp] if tmp is not None else [])


#: memory stages beyond arch x UDA method (``--no-chains`` leaves them out): DeepLab-V2 with LDR and
#: the three ProDA stages; LDR's CycleGAN (also with BDL's feedback loss, as LDR fine-tunes it) and SPADE
EXTRA_SEG_UDAS = ("ldr", "proda_warmup", "proda_stage1", "proda_distill")
EXTRA_TRANSLATORS = (("cyclegan", False), ("cyclegan", True), ("spade", False))


def memory_rows(seg_sizes: Sequence[tuple[int, int]], tr_scales: Sequence[float], reserve_gib: float,
                archs: Sequence[str] = SEG_ARCHS, udas: Sequence[str] = SEG_UDAS,
                translators: Sequence[str] = TRANSLATORS, feedback: bool = True,
                check_size: tuple[int, int] | None = None, chains: bool = True,
                aux: Path | None = None) -> tuple[list[dict], list[dict]]:
    """One row per training stage (module docstring, part 3), each stage freed before the next; and,
    with ``check_size``, the linearity check of the first segmenter stage at that crop."""
    from mmengine.logging import MMLogger

    MMLogger.get_instance("paper_readiness", log_level="ERROR")  # the current logger: no init-weight listing
    tmp = None
    if aux is None:
        tmp = tempfile.TemporaryDirectory(prefix="paper_readiness_aux_")
        aux = Path(tmp.name)
    builders: list[Callable[[], Stage]] = [
        (lambda a=a, u=u: segmenter_stage(a, u, seg_sizes, aux)) for a in archs for u in udas]
    if chains and "deeplabv2" in archs:
        builders += [(lambda u=u: segmenter_stage("deeplabv2", u, seg_sizes, aux)) for u in EXTRA_SEG_UDAS]
    builders += [(lambda m=m: translator_stage(m, tr_scales, aux=aux)) for m in translators]
    if feedback and "semst" in translators:
        builders.append(lambda: translator_stage("semst", tr_scales, feedback=True, aux=aux))
    if chains:
        builders += [(lambda m=m, f=f: translator_stage(m, tr_scales, feedback=f, aux=aux))
                     for m, f in EXTRA_TRANSLATORS if feedback or not f]
    rows, checks = [], []
    try:
        for i, build in enumerate(builders):
            stage = build()
            rows.append(estimate_stage(stage).row(reserve_gib))
            if check_size is not None and i == 0 and archs:
                checks.append(linearity_check(stage, check_size))
                log.info("linearity %s", checks[-1])
            del stage
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows, checks


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/paper_readiness", help="folder for the CSV and markdown tables")
    p.add_argument("--parts", nargs="+", default=["plan", "cli", "memory"], choices=("plan", "cli", "memory"))
    p.add_argument("--work", help="working folder (fake tree, weights, runs); default: a temporary folder")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads (default 1)")
    p.add_argument("--seg-sizes", nargs="+", default=["64x128", "128x256"],
                   help="segmenter crops (HxW) of the memory fit; the first is also the CLI runs' crop")
    p.add_argument("--tr-scales", nargs="+", type=float, default=[0.25, 0.5],
                   help="translator crop scales of the memory fit; the first is also the CLI runs' scale")
    p.add_argument("--reserve-gib", type=float, default=2.0,
                   help="GiB of a 24 GiB GPU kept free for context, workspaces and fragmentation")
    p.add_argument("--pairs", nargs="+", default=list(paper_plan.PAPER_PAIRS))
    p.add_argument("--no-feedback", action="store_true", help="skip the memory stages with the feedback loss")
    p.add_argument("--no-chains", action="store_true",
                   help="leave out LDR, the ProDA chain, CycleGAN, SPADE and the SemST round-1 fine-tune "
                        "(CLI and memory parts)")
    p.add_argument("--check-size", default="256x512",
                   help="crop (HxW) at which the first segmenter stage is measured again to check the linear "
                        "extrapolation; 'none' skips it")
    p.add_argument("--targets", nargs="+", help="plan only these, e.g. gta2cs_sepico_semst gta2cs_uda_table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the requested parts, write the tables to ``--out`` and print them."""
    args = _parser().parse_args(argv)
    with _process_settings(args.threads):
        return _run(args, argv)


@contextlib.contextmanager
def _process_settings(threads: int) -> Iterator[None]:
    """Logging, torch and OpenMP threads for the run, restored afterwards (tests call main() in-process:
    left changed, later tests would log nothing and their subprocesses run on one thread)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("mmengine", "segmenters", "translators")}
    threads_before, omp_before = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    if not handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, before in quiet.items():
            logging.getLogger(name).setLevel(before)
        torch.set_num_threads(threads_before)
        if omp_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp_before


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """The parts of :func:`main` (see the module docstring)."""
    seg_sizes = [parse_size(s) for s in args.seg_sizes]
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="paper_readiness_")
    work = Path(args.work or tmp.name)
    out = Path(args.out)
    sections: list[str] = []
    timings: dict[str, float] = {}
    try:
        if {"plan", "cli"} & set(args.parts):
            t0 = time.perf_counter()
            paper_plan.build_fake_tree(work / "tree", workers=max(1, args.threads))
            timings["fake tree"] = time.perf_counter() - t0
        if "plan" in args.parts:
            t0 = time.perf_counter()
            rows = plan_rows(work / "tree", paper_plan.paper_targets(pairs=args.pairs), args.pairs, args.targets)
            timings["plan"] = time.perf_counter() - t0
            write_csv(out / "paper_readiness_plan.csv", rows)
            sections.append("## snakemake -n of the paper targets (fake tree in the real layout)\n\n" + table_text(rows))
        if "cli" in args.parts:
            t0 = time.perf_counter()
            weights = build_weight_files(work / "weights")
            rows = cli_rows(work / "tree", weights, args.threads, seg_sizes[0], args.tr_scales[0],
                            chains=not args.no_chains)
            timings["cli"] = time.perf_counter() - t0
            write_csv(out / "paper_readiness_cli.csv", rows)
            sections.append("## 2-iteration CLI runs (paper models, reduced crops, locally built weight files)\n\n"
                            + table_text(rows))
        if "memory" in args.parts:
            t0 = time.perf_counter()
            check = None if args.check_size.lower() == "none" else parse_size(args.check_size)
            rows, checks = memory_rows(seg_sizes, args.tr_scales, args.reserve_gib, feedback=not args.no_feedback,
                                       check_size=check, chains=not args.no_chains, aux=work / "aux")
            timings["memory"] = time.perf_counter() - t0
            write_csv(out / "paper_readiness_memory.csv", rows)
            sections.append("## Estimated peak GPU memory at paper size (GiB; method and limits: "
                            "benchmarks/paper_readiness.py)\n\n" + table_text(rows))
            if checks:
                write_csv(out / "paper_readiness_linearity.csv", checks)
                sections.append("## Linearity check of the activation extrapolation\n\n" + table_text(checks))
    finally:
        if tmp is not None:
            tmp.cleanup()
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    cmd = "python benchmarks/paper_readiness.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"# Paper-scale readiness\n\n`{cmd.strip()}` ({args.threads} thread(s); {timing})\n\n" + "\n".join(sections)
    atomic_write_text(out / "paper_readiness.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
