"""The minicity UDA benchmark: every comparison row of a pair over several seeds, one table.

One command runs the workflow once per seed, each in its own working directory
(``<out>/seed<s>``, the same data, training seeds ``s``), then aggregates the seeds with
``workflow/scripts/compare.py`` into ``<out>/<pair>_comparison.{csv,md,png,html}`` (every row as
mean ± std over seeds, per-class IoU, every round, the gap-closed fraction)::

    python benchmarks/minicity_uda.py --seeds 0 1 2 --cores 2            # = make bench
    python benchmarks/minicity_uda.py --seeds 0 --dry-run                 # plan only

The rows and the scale come from ``config/experiments/minibench.yaml`` (pair ``minibench``,
``config/pairs/minibench.yaml``). A seed's DAG that finished is not rerun (Snakemake sees its
outputs), so an interrupted benchmark continues where it stopped. Wall time per seed is printed
and written to ``<out>/<pair>_wall_time.csv``; the machine of each seed's last call (host, CPU
capability, torch) to ``<out>/seed<s>/results/<pair>_machine.json``: a seed's figures are the same
only on one CPU kind and thread count.

``--keep DIR`` copies each finished seed's evaluation files (no checkpoints, images or data) to
``DIR/<pair>_seed<s>/`` with their paths under the working directory, which is how
``docs/bench/minibench_seed<s>/`` is made; ``compare.py --runs`` reads such folders as it reads the
working directories::

    python benchmarks/minicity_uda.py --seeds 2 --keep docs/bench
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # domains, when the package is not installed

from domains.io import atomic_write_text  # noqa: E402
EXPERIMENT = REPO / "config" / "experiments" / "minibench.yaml"


def targets(pair: str) -> list[str]:
    """What one seed builds: the comparison page (every row's rounds) and the two summary tables."""
    return [f"results/{pair}_comparison.html", f"results/{pair}_uda_table.csv",
            f"results/{pair}_translation_table.csv"]


def seed_config(pair: str, seed: int) -> dict:
    """Config that moves a pair's training seeds (translator and segmenter) to ``seed``."""
    return {"pairs": {pair: {"translator": {"seed": seed}, "segmenter": {"seed": seed}}}}


def write_seed_config(pair: str, seed: int, workdir: Path) -> Path:
    """``<workdir>/seed.yaml``: the seed override, merged last (a file keeps the integers typed)."""
    import yaml

    path = workdir / "seed.yaml"
    atomic_write_text(path, yaml.safe_dump(seed_config(pair, seed)))
    return path


def snakemake_command(pair: str, seed: int, workdir: Path, cores: int, experiment: Path,
                      dry_run: bool = False) -> list[str]:
    # targets first: --configfile takes several values
    cmd = [sys.executable, "-m", "snakemake", *targets(pair), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--cores", str(cores),
           "--profile", str(REPO / "workflow" / "profiles" / "default"),
           "--configfile", str(REPO / "config" / "config.yaml"), str(experiment),
           str(write_seed_config(pair, seed, workdir))]
    if dry_run:
        cmd.append("-n")
    return cmd


# What a kept seed holds, as globs under its working directory ({pair} filled in): per-round scores
# and confusions, final and summary tables, translation scores and distortions, job benchmarks, and
# the machine that ran it.
KEEP_GLOBS = ("results/{pair}_*.csv", "results/{pair}/*/r*.csv", "results/{pair}/*/r*.confusion.npy",
              "results/{pair}/translation/**/*.csv", "results/{pair}/translation/**/*.npy",
              "results/benchmarks/**/*.tsv", "results/{pair}_machine.json")


def machine_info(cores: int) -> dict:
    """The machine a seed ran on. A seed's figures are bit-identical only on one CPU kind and thread
    count (docs/bench/README.md, "BDL's own round order, and the same seeds run again"), so figures
    from different machines are different draws and must say so."""
    import torch

    return {"host": platform.node(), "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "python": platform.python_version(), "snakemake_cores": cores}


def write_machine_info(workdir: Path, pair: str, cores: int) -> Path:
    """``<workdir>/results/<pair>_machine.json``: :func:`machine_info` of the machine running this call."""
    path = workdir / "results" / f"{pair}_machine.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(machine_info(cores), indent=1) + "\n")
    return path


def kept_files(workdir: Path, pair: str) -> list[Path]:
    """The evaluation files of one seed's working directory (relative paths, sorted)."""
    found = {f.relative_to(workdir) for g in KEEP_GLOBS for f in workdir.glob(g.format(pair=pair)) if f.is_file()}
    return sorted(found)


def keep_seed(workdir: Path, dest: Path, pair: str) -> int:
    """Copy :func:`kept_files` of ``workdir`` to ``dest`` (same relative paths; each file written to a
    temporary name and renamed). Number of files copied."""
    files = kept_files(workdir, pair)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copy2(workdir / rel, tmp)
        tmp.replace(target)
    return len(files)


def run(cmd: list[str], log: Path | None = None) -> float:
    """Run ``cmd`` (printed); its output goes to ``log`` (or the terminal). Seconds taken; exits on failure."""
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.time()
    if log is None:
        rc = subprocess.call(cmd)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if rc != 0:
        where = f"; log: {log}" if log else ""
        raise SystemExit(f"error: command failed with exit code {rc}{where}")
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/minicity_uda.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    p.add_argument("--pair", default="minibench", help="pair to run (default minibench)")
    p.add_argument("--experiment", default=str(EXPERIMENT), help="experiment config merged over config/config.yaml")
    p.add_argument("--out", default="results/bench", help="benchmark folder: seed<s>/ working dirs and the tables")
    p.add_argument("--keep", metavar="DIR", help="copy each finished seed's evaluation files to DIR/<pair>_seed<s>/ "
                   "(e.g. docs/bench)")
    p.add_argument("--dry-run", action="store_true", help="plan every seed (snakemake -n), run nothing")
    args = p.parse_args(argv)
    experiment = Path(args.experiment)
    if not experiment.is_file():
        print(f"error: --experiment {experiment}: no such file", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    walls = []
    for seed in args.seeds:
        workdir = out / f"seed{seed}"
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = snakemake_command(args.pair, seed, workdir, args.cores, experiment, args.dry_run)
        if not args.dry_run:
            write_machine_info(workdir, args.pair, args.cores)
        seconds = run(cmd, None if args.dry_run else workdir / "snakemake.log")
        walls.append((seed, seconds))
        print(f"seed {seed}: {'planned' if args.dry_run else 'ran'} in {seconds:.0f} s ({seconds / 60:.1f} min)",
              flush=True)
        if args.keep and not args.dry_run:
            dest = Path(args.keep).resolve() / f"{args.pair}_seed{seed}"
            print(f"seed {seed}: kept {keep_seed(workdir, dest, args.pair)} evaluation files in {dest}", flush=True)
    if args.dry_run:
        return 0
    atomic_write_text(out / f"{args.pair}_wall_time.csv",
                      "seed,wall_s\n" + "".join(f"{s},{w:.0f}\n" for s, w in walls))
    compare = [sys.executable, str(REPO / "workflow" / "scripts" / "compare.py"), "--pair", args.pair,
               "--runs", *[str(out / f"seed{s}") for s in args.seeds], "--seeds", *map(str, args.seeds),
               "--out", str(out)]
    run(compare)
    md = out / f"{args.pair}_comparison.md"
    if md.is_file():
        print(md.read_text())
    print(f"benchmark: {len(args.seeds)} seed(s) in {sum(w for _, w in walls) / 60:.1f} min; tables in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
