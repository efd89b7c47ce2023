"""Segmenter speed and memory benchmark (not a test): prints a table.

1. Training: iter/s and peak RSS for DeepLab-V2 and FCN-8s at the ``tiny`` preset (a few
   ``model.train_step`` calls with the config's OptimWrapper on random data at ``crop_size``),
   and ONE step of each ``paper`` model (ResNet-101 DeepLab-V2 and VGG16 FCN-8s at 1024x512),
   reported as s/iter (``--skip-paper`` leaves those out; they take minutes and GBs on a CPU).
2. Runner: what a workflow job really runs -- ``python -m segmenters train`` (mmengine Runner,
   data loading, hooks, checkpoints) on a small generated minicity for ``--runner-iters``
   iterations per UDA method. Reports the median of the log's ``time:`` column (the Runner's
   step, data loading included) beside the model step of 1., the job's wall time, and the share
   of that wall time spent in train steps (the rest: interpreter start, imports, Runner build,
   dataset indexing, checkpoint writes).
3. Pseudo-labels: images/s and peak RSS of ``python -m segmenters pseudolabel`` (tiny DeepLab-V2,
   random weights) on 100 and 1,000 generated 256x128 images in /tmp; equal peak RSS for both
   counts shows that memory does not grow with the dataset (per-class counts of the float16 confidences).

Every measurement runs in its own subprocess and reads its own ``ru_maxrss``.

    python benchmarks/segmenter_speed.py [--steps 5] [--counts 100 1000] [--parts tiny runner paper pseudo]
        [--runner-iters 200] [--runner-uda oracle bdl sepico] [--skip-paper] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/seg-eval/bench")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def job_train(arch: str, preset: str, steps: int, warmup: int, device: str) -> dict:
    import torch
    from mmengine.optim import build_optim_wrapper
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from segmenters.checkpoint import build_segmentor
    from segmenters.configs import load_config

    cfg = load_config(arch, preset)
    model = build_segmentor(cfg.model).to(device)
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    h, w = cfg.crop_size
    batch = int(cfg.get("batch_size", 1))
    gen = torch.Generator().manual_seed(0)

    def data() -> dict:
        samples = []
        for _ in range(batch):
            s = SegDataSample()
            s.gt_sem_seg = PixelData(data=torch.randint(0, cfg.num_classes, (1, h, w), generator=gen))
            s.set_metainfo({"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w)})
            samples.append(s)
        return {"inputs": [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for _ in range(batch)],
                "data_samples": samples}

    for _ in range(warmup):
        model.train_step(data(), optim)
    times = []
    for _ in range(steps):
        d = data()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.train_step(d, optim)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    s_iter = sum(times) / len(times)
    return {"what": f"train {arch} {preset} {h}x{w} batch {batch}", "steps": steps, "s_per_iter": s_iter,
            "iter_per_s": 1.0 / s_iter, "peak_rss_mb": _peak_rss_mb(),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def minicity_prepared() -> tuple[Path, Path]:
    """Prepared GTA5-style source and Cityscapes-style target of a small generated minicity."""
    from domains.minicity import Options, generate
    from domains.prepare import prepare

    raw, prep = WORK / "minicity_raw", WORK / "minicity_prepared"
    if not (raw / "minicity.json").is_file():
        generate(Options(out=str(raw), n_source=40, n_train=40, n_val=10, seed=0), workers=1, progress=False)
    for name, fmt in (("gta5", "gta5"), ("cityscapes", "cityscapes")):
        if not (prep / name / "meta.json").is_file():
            prepare(fmt, raw / name, prep / name, workers=1)
    return prep / "gta5", prep / "cityscapes"


def job_runner(uda: str, iters: int, threads: int) -> dict:
    """Wall time of one real `python -m segmenters train` job and the Runner's logged step times."""
    import re
    import statistics

    source, target = minicity_prepared()
    work = WORK / f"runner_{uda}"
    cmd = [sys.executable, "-m", "segmenters", "train", "--arch", "deeplabv2", "--preset", "tiny", "--uda", uda,
           "--source", str(source), "--target", str(target), "--work-dir", str(work), "--max-iters", str(iters),
           "--cfg-options", "log_interval=1"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    log = proc.stdout + proc.stderr
    steps = [float(t) for t in re.findall(r"Iter\(train\) \[\s*\d+/\d+\].*?\stime: ([0-9.]+)", log)]
    if len(steps) < iters:
        raise SystemExit(f"found {len(steps)} step times in the log of {cmd}, expected {iters}")
    median = statistics.median(steps[5:])       # the first steps include lazy initialisation
    return {"what": f"runner {uda} ({iters} iterations, {threads} thread(s))", "s_per_iter": median,
            "iter_per_s": 1.0 / median, "wall_s": wall, "train_share": sum(steps) / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0}


def prepare_images(count: int, size=(256, 128)) -> Path:
    """A prepared dataset of ``count`` generated images (split 'train', unlabelled) under /tmp."""
    import numpy as np
    from PIL import Image

    root = WORK / f"target_{count}"
    if (root / "meta.json").is_file():
        return root
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    w, h = size
    stems = []
    for i in range(count):
        stem = f"city{i % 3}/img_{i:05d}"      # sub-folders, like Cityscapes stems
        (img_dir / stem).parent.mkdir(parents=True, exist_ok=True)
        img = np.zeros((h, w, 3), np.uint8)
        horizon = h // 3 + int(rng.integers(-5, 6))
        img[:horizon] = (110, 150, 210)
        img[horizon:2 * h // 3] = (90, 80, 70)
        img[2 * h // 3:] = (70, 70, 75)
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(img_dir / f"{stem}.png")
        stems.append(stem)
    (root / "train.txt").write_text("\n".join(stems) + "\n")
    meta = {"dataset": f"bench_{count}", "raw_root": str(img_dir), "label_suffix": "_labelTrainIds.png",
            "num_classes": 19, "splits": {"train": {"image_dir": str(img_dir), "img_suffix": ".png",
                                                    "count": count, "labelled": False}}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def tiny_checkpoint() -> Path:
    import torch

    from segmenters.checkpoint import build_segmentor, save_final
    from segmenters.configs import load_config

    path = WORK / "tiny_final.pth"
    if path.is_file():
        return path
    cfg = load_config("deeplabv2", "tiny")
    torch.manual_seed(0)
    model = build_segmentor(cfg.model)
    meta = {"arch": "deeplabv2", "preset": "tiny", "num_classes": 19, "uda": "source_only", "iter": 0,
            "test_scale": list(cfg.test_scale), "model_cfg": cfg.model.to_dict()}
    return save_final(model, meta, path)


def job_pseudolabel(count: int, device: str) -> dict:
    from segmenters.pseudolabel import build_parser, run

    target, ckpt = WORK / f"target_{count}", WORK / "tiny_final.pth"
    out = WORK / f"pseudo_{count}"
    t0 = time.perf_counter()
    meta = run(build_parser().parse_args(["--checkpoint", str(ckpt), "--target", str(target), "--split", "train",
                                          "--out", str(out), "--device", device]))
    dt = time.perf_counter() - t0
    return {"what": f"pseudolabel {count} images 256x128 (tiny DeepLab-V2)", "seconds": dt,
            "images_per_s": count / dt, "peak_rss_mb": _peak_rss_mb(),
            "kept": meta["fraction_kept_total"]}


def run_job(args: list[str], timeout: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", *args]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               TQDM_DISABLE="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"what": " ".join(args), "error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"what": " ".join(args), "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--job", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=5, help="timed tiny training steps (after 1 warm-up)")
    p.add_argument("--counts", type=int, nargs="+", default=[100, 1000], help="pseudo-label image counts")
    p.add_argument("--parts", nargs="+", choices=["tiny", "runner", "paper", "pseudo"],
                   default=["tiny", "runner", "paper", "pseudo"], help="which measurements to run (default: all)")
    p.add_argument("--runner-iters", type=int, default=200, help="iterations of each real train job (part runner)")
    p.add_argument("--runner-uda", nargs="+", default=["oracle", "bdl", "sepico"], help="UDA methods of part runner")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the runner jobs (default 2)")
    p.add_argument("--skip-paper", action="store_true", help="leave out the paper-size single steps")
    p.add_argument("--paper-timeout", type=int, default=900, help="seconds allowed per paper-size step")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    if args.job:
        kind, *rest = args.job
        if kind == "train":
            arch, preset, steps, warmup = rest[0], rest[1], int(rest[2]), int(rest[3])
            result = job_train(arch, preset, steps, warmup, args.device)
        elif kind == "runner":
            result = job_runner(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "pseudolabel":
            result = job_pseudolabel(int(rest[0]), args.device)
        else:
            raise SystemExit(f"unknown job {kind}")
        print(json.dumps(result))
        return

    WORK.mkdir(parents=True, exist_ok=True)
    dev = ["--device", args.device]
    rows = []
    if "tiny" in args.parts:
        for arch in ("deeplabv2", "fcn8s"):
            rows.append(run_job(["train", arch, "tiny", str(args.steps), "1", *dev], timeout=600))
    if "runner" in args.parts:
        for uda in args.runner_uda:
            rows.append(run_job(["runner", uda, str(args.runner_iters), str(args.threads)], timeout=1800))
    if "paper" in args.parts and not args.skip_paper:
        for arch in ("deeplabv2", "fcn8s"):
            rows.append(run_job(["train", arch, "paper", "1", "0", *dev], timeout=args.paper_timeout))
    if "pseudo" in args.parts:
        tiny_checkpoint()
        for count in args.counts:
            prepare_images(count)
            rows.append(run_job(["pseudolabel", str(count), *dev], timeout=1800))

    print(f"\n{'measurement':58s} {'speed':>22s} {'peak RSS':>10s}")
    for r in rows:
        if "error" in r:
            print(f"{r['what']:58s} ERROR: {r['error']}")
        elif "iter_per_s" in r:
            speed = f"{r['iter_per_s']:.2f} it/s ({r['s_per_iter']:.3f} s/it)"
            extra = (f"  job {r['wall_s']:.1f} s wall, {100 * r['train_share']:.0f} % in train steps"
                     if "wall_s" in r else "")
            print(f"{r['what']:58s} {speed:>22s} {r['peak_rss_mb']:8.0f} MB{extra}")
        else:
            print(f"{r['what']:58s} {r['images_per_s']:>15.1f} img/s {r['peak_rss_mb']:8.0f} MB")


if __name__ == "__main__":
    main()
