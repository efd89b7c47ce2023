"""Per-stage throughput in one table (not a test): refine images/s at 2048x1024 with peak RSS,
segmenter training iter/s, pseudo-label images/s.

    python benchmarks/stage_throughput.py                    # tiny models, CPU, 2 threads
    python benchmarks/stage_throughput.py --threads 1 --pseudo-count 200 --device cuda

The measurements themselves are the job modes of the two existing benchmarks, each run in its own
subprocess (so every peak RSS is that job's own ``ru_maxrss``):

* ``translator_speed.py --job refine``: one 2048x1024 image through tiny CUT / SemST (tiles of the
  training crop, 25 % overlap, mean blending) -> images/s = 1 / seconds;
* ``segmenter_speed.py --job train <arch> tiny``: a few ``train_step`` calls of the tiny DeepLab-V2 /
  FCN-8s at their crop size -> iter/s;
* ``segmenter_speed.py --job pseudolabel N``: ``segmenters pseudolabel`` over N generated 256x128
  images -> images/s.

Those two scripts print more (paper-size steps, before/after optimisation ratios); this one only
gathers the stage rates into one table with the ratios between them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def job(script: str, args: list[str], threads: int, timeout: int = 1800) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, str(HERE / script), "--job", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="OMP/torch threads per job (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="2048x1024", help="refine image size WxH")
    p.add_argument("--seg-steps", type=int, default=3)
    p.add_argument("--pseudo-count", type=int, default=100)
    args = p.parse_args()

    rows = []
    for method in ("cut", "semst"):
        r = job("translator_speed.py", ["refine", "--method", method, "--crop", "64", "--ngf", "16", "--blocks", "3",
                                        "--size", args.size, "--device", args.device], args.threads)
        rows.append((f"refine {args.size}, tiny {method} (tile 64)", r,
                     None if "error" in r else f"{1.0 / r['seconds']:.3f} img/s ({r['seconds']:.1f} s/img)",
                     r.get("peak_mb")))
    for arch in ("deeplabv2", "fcn8s"):
        r = job("segmenter_speed.py", ["train", arch, "tiny", str(args.seg_steps), "1", "--device", args.device],
                args.threads)
        rows.append((f"segmenter train, tiny {arch}", r,
                     None if "error" in r else f"{r['iter_per_s']:.2f} it/s ({r['s_per_iter']:.2f} s/it)",
                     r.get("peak_rss_mb")))
    if args.pseudo_count:
        sys.path.insert(0, str(HERE))
        import segmenter_speed  # its data/checkpoint helpers (read-only use)

        segmenter_speed.WORK.mkdir(parents=True, exist_ok=True)
        segmenter_speed.tiny_checkpoint()
        segmenter_speed.prepare_images(args.pseudo_count)
        r = job("segmenter_speed.py", ["pseudolabel", str(args.pseudo_count), "--device", args.device], args.threads)
        rows.append((f"pseudo-labels, {args.pseudo_count} images 256x128 (tiny DeepLab-V2)", r,
                     None if "error" in r else f"{r['images_per_s']:.1f} img/s", r.get("peak_rss_mb")))

    print(f"\n| stage ({args.device}, {args.threads} threads) | rate | peak RSS (MB) |")
    print("|---|---|---|")
    for what, r, rate, rss in rows:
        cell = rate if rate is not None else f"ERROR: {r['error']}"
        print(f"| {what} | {cell} | {rss:.0f} |" if rss is not None else f"| {what} | {cell} | - |")
    cut = next((r for w, r, rate, _ in rows if "tiny cut" in w and rate), None)
    semst = next((r for w, r, rate, _ in rows if "tiny semst" in w and rate), None)
    if cut and semst:
        print(f"refine SemST / CUT time per image: {semst['seconds'] / cut['seconds']:.2f}x")


if __name__ == "__main__":
    main()
