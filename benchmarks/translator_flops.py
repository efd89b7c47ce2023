"""Achieved GFLOP/s of one translator training step vs this machine's matmul peak (not a test).

    python benchmarks/translator_flops.py                  # tiny + crop 256 / ngf 64, CUT and SemST, 2 threads
    python benchmarks/translator_flops.py --skip-big       # tiny preset only
    python benchmarks/translator_flops.py --threads 1 --matmul-size 2048
    python benchmarks/translator_flops.py --cpu-amp auto   # steps under bf16 autocast (vs the bf16 peak)

For each setting the step (translate, D step, G+F step; synthetic batch; the same step function
as benchmarks/translator_speed.py) runs once under ``torch.utils.flop_counter.FlopCounterMode``
(also the warm-up), then ``--steps`` timed steps. FLOPs are what the counter registers: matmul,
convolution (and their backward) -- elementwise ops, norms, the optimiser and the rSMI Cholesky
solve are not counted, so the figure is a lower bound of the work done. The peak is the best of
``--repeats`` timings of an n x n matmul (2 n^3 FLOPs; fp32, or bf16 with ``--cpu-amp`` on/auto on a
CPU with native bf16) with the same thread count, measured in the same process just before the
steps. Default ``--cpu-amp off``: the steps run in float32. Prints GFLOP per step, s/step, achieved GFLOP/s and the
fraction of the matmul peak, both per wall second and per CPU second (the CPU-time ratio is the
robust one when other jobs share the cores).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {  # name -> (crop, ngf, residual blocks)
    "tiny": (64, 16, 3),
    "crop256_ngf64": (256, 64, 9),
}


def matmul_peak(n: int, repeats: int, dtype=None) -> tuple[float, float]:
    """Best GFLOP/s of an n x n matmul (2 n^3 FLOPs; fp32 by default): (per wall second, per CPU second)."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return 2.0 * n ** 3 / best / 1e9, 2.0 * n ** 3 / best_cpu / 1e9


def step_flops(method_name: str, crop: int, ngf: int, blocks: int, steps: int, cpu_amp: bool = False) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from translator_speed import _config, random_batch  # the same configs and batches as the speed benchmark
    from translators.methods import build_method
    from translators.train import make_adam

    cfg = _config(method_name, crop, ngf, blocks)
    torch.manual_seed(0)
    method = build_method(cfg)
    method.setup(torch.device("cpu"), cpu_amp=cpu_amp)
    opts = {k: make_adam(p, 2e-4, (0.5, 0.999)) for k, p in method.param_groups().items()}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    spec = method.crop_spec()

    def batch():
        return random_batch(spec)

    with FlopCounterMode(display=False) as counter:
        method.train_step(batch(), 0.1, opts, scaler)       # counted step = warm-up
    flops = counter.get_total_flops()
    by_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        method.train_step(batch(), 0.1, opts, scaler)
    dt, cpu = (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
    return {"gflop": flops / 1e9, "s_per_step": dt, "gflops": flops / 1e9 / dt, "cpu_s_per_step": cpu,
            "gflop_per_cpu_s": flops / 1e9 / cpu,
            "top_ops": sorted(by_op.items(), key=lambda kv: -kv[1])[:3]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--methods", nargs="+", default=["cut", "semst"])
    p.add_argument("--skip-big", action="store_true", help="leave out crop 256 / ngf 64 / 9 blocks")
    p.add_argument("--steps", type=int, default=5, help="timed steps at the tiny preset")
    p.add_argument("--steps-big", type=int, default=1, help="timed steps at crop 256 / ngf 64")
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cpu-amp", default="off", choices=["auto", "on", "off"],
                   help="run the steps under bf16 autocast (train.cpu_amp semantics; default off = float32)")
    args = p.parse_args()

    import torch
    from translators.methods.base import resolve_cpu_amp

    torch.set_num_threads(args.threads)
    amp = resolve_cpu_amp(args.cpu_amp)
    peak, peak_cpu = matmul_peak(args.matmul_size, args.repeats, torch.bfloat16 if amp else torch.float32)
    print(f"steps in {'bf16 autocast' if amp else 'float32'}")
    print(f"matmul peak: {peak:.1f} GFLOP/s wall, {peak_cpu:.1f} GFLOP per CPU-s ({'bf16' if amp else 'fp32'} {args.matmul_size}^2, "
          f"{args.threads} threads, best of {args.repeats}); torch {torch.__version__}")
    rows = []
    for setting, (crop, ngf, blocks) in SETTINGS.items():
        if args.skip_big and setting != "tiny":
            continue
        for m in args.methods:
            steps = args.steps if setting == "tiny" else args.steps_big
            r = step_flops(m, crop, ngf, blocks, steps, cpu_amp=amp)
            rows.append((m, setting, r))
            print(f"  {m:6s} {setting:14s} {r['gflop']:8.2f} GFLOP/step {r['s_per_step']:8.3f} s/step "
                  f"{r['gflops']:7.1f} GFLOP/s = {100 * r['gflops'] / peak:5.1f} % of peak; "
                  f"{r['gflop_per_cpu_s']:.1f} GFLOP/CPU-s = {100 * r['gflop_per_cpu_s'] / peak_cpu:.1f} %", flush=True)
    print()
    print(f"| method | setting | GFLOP/step | s/step | GFLOP/s | % of matmul peak ({peak:.0f} GFLOP/s) "
          f"| CPU-s/step | % of peak per CPU-s ({peak_cpu:.0f}) |")
    print("|---|---|---|---|---|---|---|---|")
    for m, setting, r in rows:
        print(f"| {m} | {setting} | {r['gflop']:.2f} | {r['s_per_step']:.3f} | {r['gflops']:.1f} | "
              f"{100 * r['gflops'] / peak:.1f} | {r['cpu_s_per_step']:.3f} | "
              f"{100 * r['gflop_per_cpu_s'] / peak_cpu:.1f} |")
    by = {(m, s): r for m, s, r in rows}
    for setting in SETTINGS:
        if ("cut", setting) in by and ("semst", setting) in by:
            c, s = by[("cut", setting)], by[("semst", setting)]
            print(f"SemST/CUT at {setting}: {s['gflop'] / c['gflop']:.2f}x FLOPs, "
                  f"{s['s_per_step'] / c['s_per_step']:.2f}x time")
    for m, setting, r in rows:
        ops = ", ".join(f"{k.split('.')[-1]} {v / 1e9:.2f}" for k, v in r["top_ops"])
        print(f"  top ops {m} {setting} (GFLOP): {ops}")


if __name__ == "__main__":
    main()
