"""Wall time of a finished DAG by rule, from Snakemake's benchmark files (not a test).

    python benchmarks/dag_timing.py                       # results/benchmarks under the working directory
    python benchmarks/dag_timing.py --root /tmp/run/results/benchmarks --png dag_timing.png
    python benchmarks/dag_timing.py --by job              # one line per job instead of per rule

Every rule with a ``benchmark:`` directive writes ``results/benchmarks/<...>.tsv`` (columns
``s``, ``h:m:s``, ``max_rss``, ``max_vms``, ``max_uss``, ``max_pss``, ``io_in``, ``io_out``,
``mean_load``, ``cpu_time``; one row per repeat). The rule of each file is found by matching its
path against the ``benchmark:`` patterns of workflow/rules/*.smk (wildcards -> regex; the most
specific pattern wins). Prints jobs, total / mean / max seconds, share of the summed job time,
peak RSS and CPU seconds per rule, and the ratio of summed job time to the span between the first
job's start and the last job's end (estimated from file modification times minus durations) --
> 1 means jobs ran in parallel. ``--png`` writes a horizontal bar chart (matplotlib).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RULE_RE = re.compile(r"^(?:rule|checkpoint)\s+(\w+):", re.M)
BENCH_RE = re.compile(r"benchmark:\s*\n\s*(?:f?)\"([^\"]+)\"")


def benchmark_patterns(rules_dir: Path = ROOT / "workflow" / "rules") -> list[tuple[str, re.Pattern]]:
    """(rule, compiled path regex) for every ``benchmark:`` in the rule files, most specific first."""
    found = []
    for smk in sorted(rules_dir.glob("*.smk")):
        text = smk.read_text()
        starts = [(m.start(), m.group(1)) for m in RULE_RE.finditer(text)]
        for i, (start, rule) in enumerate(starts):
            end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
            m = BENCH_RE.search(text, start, end)
            if m:
                template = m.group(1)
                parts = re.split(r"\{[^}]+\}", template)
                regex = "[^/]+?".join(re.escape(p) for p in parts)
                literal = sum(len(p) for p in parts)
                found.append((literal, rule, re.compile(rf"(?:^|/){regex}$")))
    found.sort(key=lambda t: -t[0])
    return [(rule, rx) for _, rule, rx in found]


def rule_of(path: str, patterns: list[tuple[str, re.Pattern]]) -> str:
    for rule, rx in patterns:
        if rx.search(path):
            return rule
    return "?"


def read_benchmarks(root: Path, patterns: list[tuple[str, re.Pattern]]) -> pd.DataFrame:
    """One row per benchmark file: path, rule, seconds (mean over repeats), max_rss, cpu_time, end time."""
    rows = []
    for tsv in sorted(root.rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        if frame.empty or "s" not in frame:
            continue
        rel = "results/benchmarks/" + tsv.relative_to(root).as_posix()
        rows.append({"job": tsv.relative_to(root).with_suffix("").as_posix(), "rule": rule_of(rel, patterns),
                     "s": float(frame["s"].mean()),
                     "max_rss_mb": pd.to_numeric(frame.get("max_rss"), errors="coerce").max(),
                     "cpu_s": pd.to_numeric(frame.get("cpu_time"), errors="coerce").mean(),
                     "end": tsv.stat().st_mtime})
    if not rows:
        raise SystemExit(f"no benchmark .tsv files under {root}; run the DAG first (rules write results/benchmarks/)")
    return pd.DataFrame(rows)


def by_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    table = jobs.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"), mean_s=("s", "mean"), max_s=("s", "max"),
                                     peak_rss_mb=("max_rss_mb", "max"), cpu_s=("cpu_s", "sum"))
    table["share_%"] = 100.0 * table["total_s"] / table["total_s"].sum()
    return table.sort_values("total_s", ascending=False)


def markdown(table: pd.DataFrame, index_name: str) -> str:
    cols = list(table.columns)
    lines = [f"| {index_name} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, *values in table.itertuples():
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(table: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.4 * len(table) + 1.2))
    ax.barh(table.index[::-1], table["total_s"][::-1], color="tab:blue")
    for i, (name, row) in enumerate(table[::-1].iterrows()):
        ax.text(row["total_s"], i, f" {row['total_s']:.0f} s ({row['jobs']} jobs)", va="center", fontsize=8)
    ax.set_xlabel("summed job wall time (s)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=Path("results/benchmarks"), help="benchmark folder")
    p.add_argument("--by", choices=("rule", "job"), default="rule")
    p.add_argument("--png", type=Path, help="write a bar chart of the time per rule")
    args = p.parse_args(argv)
    if not args.root.is_dir():
        print(f"{args.root}: no such folder (run from the DAG's working directory or pass --root)", file=sys.stderr)
        return 2
    jobs = read_benchmarks(args.root, benchmark_patterns())
    table = by_rule(jobs)
    start = float((jobs["end"] - jobs["s"]).min())
    span = float(jobs["end"].max()) - start
    total = float(jobs["s"].sum())
    if args.by == "job":
        print(markdown(jobs.sort_values("s", ascending=False).set_index("job")[["rule", "s", "max_rss_mb", "cpu_s"]],
                       "job"))
    else:
        print(markdown(table, "rule"))
    print(f"\n{len(jobs)} jobs, summed job time {total:.0f} s, span {span:.0f} s (first start to last end, from "
          f"file times) -> parallelism {total / span if span > 0 else float('nan'):.2f}x")
    if args.png:
        bar_chart(table, args.png, f"{args.root}: {len(jobs)} jobs, {total:.0f} s summed")
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
