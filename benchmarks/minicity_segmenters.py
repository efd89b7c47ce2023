"""minicity segmenter benchmark: source-only vs oracle vs BDL (+ pseudo-labels), tiny preset.

Given prepared minicity source (GTA5 layout) and target (Cityscapes layout) folders, runs the
package CLIs exactly as a user would::

    1. python -m segmenters train --uda source_only ...        -> <out>/source_only/final.pth
    2. python -m segmenters train --uda oracle ...             -> <out>/oracle/final.pth
    3. python -m segmenters pseudolabel --checkpoint <1> ...   -> <out>/pseudo/source_only (BDL rule)
    4. python -m segmenters train --uda bdl --pseudo <3> ...   -> <out>/bdl_ssl/final.pth
       (optional, --adv-only: python -m segmenters train --uda bdl  -> <out>/bdl_adv/final.pth)
    5. python -m segmenters evaluate ... for each run          -> <out>/<run>.csv

and prints one table (mIoU + per-class IoU on target val) plus the two checks: the domain gap is
real (source-only mIoU <= 0.7 x oracle) and BDL with pseudo-labels beats source-only.

Example (deeplabv2 tiny, 300 iterations per run: roughly 15-40 minutes on 2 CPU cores, depending on load)::

    python -m domains.minicity --out /tmp/minicity/raw
    python -m domains prepare --dataset gta5 --raw /tmp/minicity/raw/gta5 --out /tmp/minicity/prepared/gta5
    python -m domains prepare --dataset cityscapes --raw /tmp/minicity/raw/cityscapes --out /tmp/minicity/prepared/cityscapes
    python benchmarks/minicity_segmenters.py --source /tmp/minicity/prepared/gta5 \\
        --target /tmp/minicity/prepared/cityscapes --out /tmp/minicity/segmenters

Finished steps (``final.pth`` / CSV / pseudo ``meta.json`` present) are skipped on a rerun unless
``--force``.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from domains.labels import CLASSES


def sh(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (printed), output to ``log``; raise with the log's tail on failure. Returns seconds."""
    print("$ " + shlex.join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with log.open("w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"command failed (exit {rc}); log {log}:\n{tail}")
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="prepared minicity GTA5 folder")
    p.add_argument("--target", required=True, help="prepared minicity Cityscapes folder")
    p.add_argument("--out", required=True, help="output folder (runs, pseudo-labels, CSVs)")
    p.add_argument("--arch", default="deeplabv2", choices=["deeplabv2", "fcn8s"])
    p.add_argument("--max-iters", type=int, default=None, help="iterations of every training (default: preset's)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adv-only", action="store_true", help="also train BDL without pseudo-labels")
    p.add_argument("--bdl-iters", type=int, default=None, help="iterations of the BDL runs (default: --max-iters)")
    p.add_argument("--bdl-init", choices=["scratch", "source_only"], default="scratch",
                   help="BDL starts from the init weights like BDL.py (scratch) or fine-tunes the source-only model")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="passed to every training")
    p.add_argument("--force", action="store_true", help="rerun finished steps")
    args = p.parse_args(argv)

    out = Path(args.out)
    py = [sys.executable, "-m", "segmenters"]
    common = ["--arch", args.arch, "--preset", "tiny", "--source", args.source, "--target", args.target,
              "--seed", str(args.seed), "--workers", str(args.workers),
              "--val-interval", "1000000"]  # validate once, at the end (evaluate scores the final model)
    options = ["--cfg-options", *args.cfg_options] if args.cfg_options else []
    seconds: dict[str, float] = {}

    def train(name: str, uda: str, *extra: str, iters: int | None = args.max_iters) -> Path:
        final = out / name / "final.pth"
        if args.force or not final.is_file():
            its = ["--max-iters", str(iters)] if iters else []
            seconds[name] = sh([*py, "train", "--uda", uda, *common, *its, "--work-dir", str(out / name), *extra, *options],
                               out / "logs" / f"train_{name}.log")
        return final

    def evaluate(name: str, final: Path) -> pd.Series:
        csv = out / f"{name}.csv"
        if args.force or not csv.is_file():
            sh([*py, "evaluate", "--checkpoint", str(final), "--target", args.target, "--split", "val",
                "--out", str(csv), "--workers", str(args.workers)], out / "logs" / f"evaluate_{name}.log")
        return pd.read_csv(csv).iloc[0]

    finals = {"source_only": train("source_only", "source_only"), "oracle": train("oracle", "oracle")}
    pseudo = out / "pseudo" / "source_only"
    if args.force or not (pseudo / "meta.json").is_file():
        seconds["pseudolabel"] = sh([*py, "pseudolabel", "--checkpoint", str(finals["source_only"]),
                                     "--target", args.target, "--split", "train", "--out", str(pseudo), "--rule", "bdl"],
                                    out / "logs" / "pseudolabel.log")
    bdl_iters = args.bdl_iters or args.max_iters
    init = ["--init", str(finals["source_only"])] if args.bdl_init == "source_only" else []
    if args.adv_only:
        finals["bdl_adv"] = train("bdl_adv", "bdl", *init, iters=bdl_iters)
    finals["bdl_ssl"] = train("bdl_ssl", "bdl", "--pseudo", str(pseudo), *init, iters=bdl_iters)

    rows = {name: evaluate(name, final) for name, final in finals.items()}
    table = pd.DataFrame({name: [row["mIoU"], *[row.get(c, float("nan")) for c in CLASSES]]
                          for name, row in rows.items()}, index=["mIoU", *CLASSES]).T
    present = [c for c in CLASSES if table[c].notna().any()]
    pd.set_option("display.width", 250)
    print(f"\nminicity, {args.arch} tiny, target val IoU (%):")
    print(table[["mIoU", *present]].round(1).to_string())
    if seconds:
        print("\nwall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    so, orc, ssl = (float(table.loc[k, "mIoU"]) for k in ("source_only", "oracle", "bdl_ssl"))
    gap_ok, bdl_ok = so <= 0.7 * orc, ssl > so
    print(f"\ndomain gap: source-only / oracle = {so / orc:.2f} ({'OK' if gap_ok else 'NOT'} <= 0.7)")
    print(f"BDL + pseudo-labels - source-only = {ssl - so:+.1f} mIoU ({'OK' if bdl_ok else 'NOT'} > 0)")
    return 0 if gap_ok and bdl_ok else 1


if __name__ == "__main__":
    sys.exit(main())
