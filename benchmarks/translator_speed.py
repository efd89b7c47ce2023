"""Translator speed/memory benchmark (not a test): prints tables and ratios.

    python benchmarks/translator_speed.py                 # everything (about 4 minutes on 2 CPU cores)
    python benchmarks/translator_speed.py --skip-big      # crop-64 settings only (about 1 minute)
    python benchmarks/translator_speed.py --threads 1     # torch intra-op threads per job
    python benchmarks/translator_speed.py --cpu-amp off   # our jobs in float32 (default: as training)

Measures, per setting -- the tiny preset, CUT's two reference settings (crop 64 / ngf=ndf 16 /
6 blocks and crop 256 / ngf=ndf 64 / 9 blocks, batch 1, identity NCE on), SemST with
h_l = h_g = the same crop:

* s/iter of one training iteration (translate, D step, G+F step) on synthetic batches, for
  "CUT before", our CUT (and our CUT in float32 when training uses bf16 autocast) and SemST, all
  built in ONE process and stepped in turn (before, CUT, SemST, before, ...): a shared or drifting
  machine then slows every variant alike, so the ratios hold even when the absolute times move
  (on these VMs they drift by +-15 % over minutes). Mean and median per variant;
* "CUT before": CUT computed the way the original code does (a second encoder pass over the input
  for the NCE keys with autograd, separate D passes for real and fake, unfused Adam, float32);
* peak memory (CPU: ru_maxrss; CUDA: torch.cuda.max_memory_allocated) of CUT and SemST, each in a
  fresh subprocess, and the share of a SemST step spent in the TS loss (both branches): ``TS fwd``
  = its forward inside the timed steps, ``TS f+b`` = forward + backward of every TS call of a step
  replayed alone on the same embeddings (the backward runs inside the G backward and cannot be
  timed there), both relative to that subprocess's mean step;
* refine of one 2048x1024 image (seconds, peak RSS).

The original CUT implementation measured 0.105 s/iter (crop 64, ngf 16, 6 blocks) and 8.2 s/iter
(crop 256, ngf 64, 9 blocks) on these 2-core machines; the table prints our speed-up against
those figures and against the interleaved "CUT before".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_CUT = {64: 0.105, 256: 8.2}  # s/iter of the original CUT code on these machines


def _peak_mb(device) -> float:
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _config(method: str, crop: int, ngf: int, blocks: int, idt: bool = True):
    from translators.config import load_config
    nce = "[0,4,8,12,16]" if blocks >= 5 else f"[0,4,8,12,{11 + blocks}]"
    over = [f"model.ngf={ngf}", f"model.ndf={ngf}", f"model.n_blocks={blocks}", f"loss.nce_layers={nce}",
            f"loss.nce_idt={str(idt).lower()}", f"data.crop={crop}", f"data.local_crop={crop}",
            f"data.global_crop={crop}", "train.batch_size=1"]
    if ngf >= 64:
        over.append("model.scale_mid_channels=256")
    return load_config(ROOT / "translators" / "configs" / f"{method}_tiny.yaml", over)


def random_batch(spec) -> dict:
    """One random batch (images in [-1, 1]) for a method's crop spec; SemST also gets global crops and boxes."""
    import torch

    b = {"A_l": torch.rand(1, 3, *spec.local) * 2 - 1, "B_l": torch.rand(1, 3, *spec.local) * 2 - 1}
    if spec.global_ is not None:
        win = spec.global_[0] * spec.ratio
        b.update(A_g=torch.rand(1, 3, *spec.global_) * 2 - 1, B_g=torch.rand(1, 3, *spec.global_) * 2 - 1,
                 A_box=torch.tensor([[win / 4, win / 4, win, win]]), B_box=torch.tensor([[0.0, 0.0, win, win]]))
    return b


def _baseline_cut():
    """CUT computed like the original code: re-encode the input with autograd for the keys,
    separate D passes, PatchNCE keys through F with grad (detached only in the loss)."""
    import torch
    from translators.losses import lsgan_loss
    from translators.methods.cut import CUT

    class CUTBaseline(CUT):
        def forward_translation(self, batch):
            real_a, real_b = batch["A_l"], batch["B_l"]
            real = torch.cat([real_a, real_b]) if self.cfg.loss.nce_idt else real_a
            fake_all = self.G(real)
            n = real_a.shape[0]
            return {"real": real, "fake_all": fake_all, "fake": fake_all[:n], "n": n}

        def discriminator_loss(self, state, batch):
            return 0.5 * (lsgan_loss(self.D(state["fake"].detach()), False) + lsgan_loss(self.D(batch["B_l"]), True)), {}

        def generator_loss(self, state, batch, progress):
            c = self.cfg.loss
            gan = lsgan_loss(self.D(state["fake"]), True)
            n = state["n"]
            nce_terms = []
            for sl in ([slice(0, n)] + ([slice(n, None)] if c.nce_idt else [])):
                feat_k = self.G(state["real"][sl], c.nce_layers, encode_only=True)
                feat_q = self.G(state["fake_all"][sl], c.nce_layers, encode_only=True)
                k, ids = self.F(feat_k, c.num_patches)
                q, _ = self.F(feat_q, c.num_patches, ids)
                nce_terms.append(self.contrastive(q, k, state["real"][sl].shape[0], progress))
            nce = torch.stack(nce_terms).mean()
            return c.lambda_GAN * gan + c.lambda_NCE * nce, {"G_GAN": gan, "NCE": nce}
    return CUTBaseline


def job_train(args) -> dict:
    import torch
    from translators.methods import build_method
    from translators.methods import base as base_mod
    from translators.train import make_adam, resolve_device

    device = resolve_device(args.device)
    cfg = _config(args.method, args.crop, args.ngf, args.blocks)
    torch.manual_seed(0)
    if args.baseline:
        method = _baseline_cut()(cfg)
    else:
        method = build_method(cfg)
    from translators.methods.base import resolve_cpu_amp
    method.setup(device, cpu_amp=resolve_cpu_amp(args.cpu_amp) and not args.baseline)
    if args.baseline:
        opts = {k: torch.optim.Adam(p, lr=2e-4, betas=(0.5, 0.999), foreach=False)
                for k, p in method.param_groups().items()}
    else:
        opts = {k: make_adam(p, 2e-4, (0.5, 0.999)) for k, p in method.param_groups().items()}
    scaler = torch.amp.GradScaler(device.type, enabled=method.amp_enabled and method.amp_dtype == torch.float16)
    spec = method.crop_spec()

    def batch():
        return random_batch(spec)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ts_time = [0.0]
    orig_ts = base_mod.TranslatorMethod.ts

    step_ts_calls: list = []  # every TS call of the current step (SemST: one per branch)

    def timed_ts(self, *a, **k):
        step_ts_calls.append((self, a, k))
        sync()
        t0 = time.perf_counter()
        out = orig_ts(self, *a, **k)
        sync()
        ts_time[0] += time.perf_counter() - t0
        return out
    base_mod.TranslatorMethod.ts = timed_ts
    for _ in range(args.warmup):
        method.train_step(batch(), 0.1, opts, scaler)
    ts_time[0] = 0.0
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    per_step = []
    for _ in range(args.steps):
        b = batch()
        step_ts_calls.clear()
        t_step = time.perf_counter()
        method.train_step(b, 0.1, opts, scaler)
        sync()
        per_step.append(time.perf_counter() - t_step)
    dt = (time.perf_counter() - t0) / args.steps
    cpu = (time.process_time() - c0) / args.steps
    peak = _peak_mb(device)
    ts_fb = 0.0
    if step_ts_calls:  # TS forward + backward of every call of the last step, replayed alone
        calls = [(self_, [t.detach() for t in k_in], [t.detach() for t in q_in], n_img, kw)
                 for self_, (k_in, q_in, n_img), kw in step_ts_calls]
        reps = max(3, args.steps)
        sync()
        t1 = time.perf_counter()
        for _ in range(reps):
            for self_, k_in, q_in, n_img, kw in calls:
                q_rep = [t.requires_grad_(True) if not t.requires_grad else t for t in
                         (q.clone() for q in q_in)]
                orig_ts(self_, k_in, q_rep, n_img, **kw).backward()
        sync()
        ts_fb = (time.perf_counter() - t1) / reps
    return {"s_per_iter": dt, "median_s_per_iter": statistics.median(per_step), "cpu_s_per_iter": cpu,
            "peak_mb": peak, "precision": "bf16 autocast" if method.amp_enabled else "fp32",
            "ts_fraction": ts_time[0] / args.steps / dt, "ts_fb_fraction": ts_fb / dt,
            "device": str(device), "threads": torch.get_num_threads()}


def _build_variant(name: str, args, device):
    """(method, optimisers) of one interleaved variant: before | cut | cut_fp32 | semst."""
    import torch
    from translators.methods import build_method
    from translators.methods.base import resolve_cpu_amp
    from translators.train import make_adam

    method_name = "semst" if name == "semst" else "cut"
    cfg = _config(method_name, args.crop, args.ngf, args.blocks)
    torch.manual_seed(0)
    if name == "before":
        method = _baseline_cut()(cfg).setup(device)
        return method, {k: torch.optim.Adam(p, lr=2e-4, betas=(0.5, 0.999), foreach=False)
                        for k, p in method.param_groups().items()}
    cpu_amp = resolve_cpu_amp(args.cpu_amp) and name != "cut_fp32"
    method = build_method(cfg).setup(device, cpu_amp=cpu_amp)
    return method, {k: make_adam(p, 2e-4, (0.5, 0.999)) for k, p in method.param_groups().items()}


def job_interleave(args) -> dict:
    """Step every variant of ``--variants`` in turn in this one process; per-variant s/iter."""
    import torch
    from translators.train import resolve_device

    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    built = {name: _build_variant(name, args, device) for name in args.variants.split(",")}
    times: dict[str, list[float]] = {name: [] for name in built}
    for i in range(args.warmup + args.steps):
        for name, (method, opts) in built.items():
            scaler = torch.amp.GradScaler(device.type, enabled=method.amp_enabled and method.amp_dtype == torch.float16)
            b = random_batch(method.crop_spec())
            sync()
            t0 = time.perf_counter()
            method.train_step(b, 0.1, opts, scaler)
            sync()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: {"mean": statistics.mean(t), "median": statistics.median(t),
                   "precision": "bf16 autocast" if built[name][0].amp_enabled else "fp32"}
            for name, t in times.items()} | {"device": str(device), "threads": torch.get_num_threads()}


def job_refine(args) -> dict:
    import numpy as np
    import torch
    from translators.methods import build_method
    from translators.refine import translate_image
    from translators.train import resolve_device

    device = resolve_device(args.device)
    cfg = _config(args.method, args.crop, args.ngf, args.blocks)
    torch.manual_seed(0)
    method = build_method(cfg).setup(device).eval()
    w, h = (int(v) for v in args.size.split("x"))
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    base_rss = _peak_mb(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = translate_image(method, img, tile=args.crop, overlap=0.25, batch_size=4, blend="mean")
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert out.shape == img.shape
    return {"seconds": dt, "cpu_seconds": time.process_time() - c0, "peak_mb": _peak_mb(device), "peak_before_mb": base_rss, "device": str(device),
            "threads": torch.get_num_threads()}


def run_job(argv: list[str], threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, __file__, "--job", *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"job {argv} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", choices=["train", "interleave", "refine"])
    p.add_argument("--variants", default="before,cut,semst", help="--job interleave: variants stepped in turn")
    p.add_argument("--method", default="cut")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--size", default="2048x1024")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="OMP/torch threads per job (default: torch's default)")
    p.add_argument("--skip-big", action="store_true", help="skip the crop-256 / ngf-64 settings")
    p.add_argument("--refine-paper", action="store_true", help="also refine 2048x1024 with the paper-size SemST")
    p.add_argument("--steps-big", type=int, default=2)
    p.add_argument("--cpu-amp", default="auto", choices=["auto", "on", "off"],
                   help="train.cpu_amp of our jobs (default auto: bf16 autocast where the CPU has native "
                        "bf16, as training does); the CUT reference settings are also run in fp32")
    args = p.parse_args()
    if args.job:
        sys.path.insert(0, str(ROOT))
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        jobs = {"train": job_train, "interleave": job_interleave, "refine": job_refine}
        print(json.dumps(jobs[args.job](args)))
        return

    common = ["--device", args.device, "--cpu-amp", args.cpu_amp]
    settings = [("tiny preset", 64, 16, 3, args.steps, 2), ("CUT ref. small", 64, 16, 6, args.steps, 2)]
    if not args.skip_big:
        settings.append(("CUT ref. big", 256, 64, 9, args.steps_big, 1))
    rows = []
    for label, crop, ngf, blocks, steps, warm in settings:
        geo = ["--crop", str(crop), "--ngf", str(ngf), "--blocks", str(blocks), *common]
        variants = "before,cut,semst" + (",cut_fp32" if label.startswith("CUT ref.") else "")
        res = {"label": label, "crop": crop, "ngf": ngf, "blocks": blocks}
        res["time"] = run_job(["interleave", "--variants", variants, "--steps", str(steps), "--warmup", str(warm),
                               *geo], args.threads)
        # memory and TS share: one subprocess per method (peak RSS is per process)
        mem_steps = ["--steps", str(max(1, steps // 4)), "--warmup", "1" if crop <= 64 else "0"]
        res["cut"] = run_job(["train", "--method", "cut", *mem_steps, *geo], args.threads)
        res["semst"] = run_job(["train", "--method", "semst", *mem_steps, *geo], args.threads)
        rows.append(res)
        print(f"done: {label}", file=sys.stderr, flush=True)

    t0 = rows[0]["time"]
    print(f"\nTranslator training step (device {t0['device']}, threads {t0['threads']}, batch 1, identity NCE on; "
          f"SemST with h_l = h_g = crop, global ratio 2)")
    print(f"precision: CUT before = fp32; our CUT and SemST = {t0['cut']['precision']} (--cpu-amp {args.cpu_amp})")
    print("s/iter = median step of the variants stepped in turn in one process (mean in brackets)")
    print(f"{'setting':<16}{'crop':>5}{'ngf':>5}{'blk':>4} | {'CUT before':>18}{'CUT':>18}{'speed-up':>9}"
          f"{'SemST':>18}{'SemST/CUT':>10}{'TS fwd':>8}{'TS f+b':>8} | {'CUT MB':>8}{'SemST MB':>9}")
    for r in rows:
        t = r["time"]
        cb, c, s_ = t["before"], t["cut"], t["semst"]

        def cell(v):
            return f"{v['median']:.3f} ({v['mean']:.3f})"
        print(f"{r['label']:<16}{r['crop']:>5}{r['ngf']:>5}{r['blocks']:>4} | {cell(cb):>18}{cell(c):>18}"
              f"{cb['median'] / c['median']:>8.2f}x{cell(s_):>18}{s_['median'] / c['median']:>9.2f}x"
              f"{r['semst']['ts_fraction']:>8.1%}{r['semst']['ts_fb_fraction']:>8.1%} | "
              f"{r['cut']['peak_mb']:>8.0f}{r['semst']['peak_mb']:>9.0f}")
    print("\nOur CUT vs the original CUT implementation (fp32; its s/iter on these 2-core machines) and vs "
          "'CUT before' stepped alongside")
    for r in rows:
        if not r["label"].startswith("CUT ref."):
            continue
        ref = REFERENCE_CUT[r["crop"]]
        before = r["time"]["before"]["median"]
        for key in ("cut", "cut_fp32"):
            job = r["time"].get(key)
            if job is None or (key == "cut_fp32" and r["time"]["cut"]["precision"] == "fp32"):
                continue
            med = job["median"]
            print(f"  crop {r['crop']}, ngf/ndf {r['ngf']}, {r['blocks']} blocks, {job['precision']:<13}: "
                  f"{med:.3f} s/iter (mean {job['mean']:.3f}) -> {ref / med:.2f}x the original's {ref} s/iter, "
                  f"{before / med:.2f}x 'CUT before' ({before:.3f}) (target >= 1.5x)")

    print("\nRefine one 2048x1024 image (random weights; speed does not depend on them)")
    refine_settings = [("semst tiny (tile 64)", "semst", 64, 16, 3), ("cut tiny (tile 64)", "cut", 64, 16, 3)]
    if args.refine_paper:
        refine_settings.append(("semst paper (tile 256)", "semst", 256, 64, 9))
    for label, method, crop, ngf, blocks in refine_settings:
        res = run_job(["refine", "--method", method, "--crop", str(crop), "--ngf", str(ngf),
                       "--blocks", str(blocks), "--size", "2048x1024", *common], args.threads)
        print(f"  {label:<24} {res['seconds']:8.2f} s wall, {res['cpu_seconds']:8.2f} CPU-s, peak RSS {res['peak_mb']:7.0f} MB "
              f"(after model build {res['peak_before_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
