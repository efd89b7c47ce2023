"""Compare the UDA methods of one pair over seeds (logic in workflow/lib/wflib/compare.py).

    python workflow/scripts/compare.py --pair minicity --runs seed0 seed1 seed2 --out cmp [--seeds 0 1 2]

Each run folder is one seed's working directory (holding results/<pair>_<uda>_<translator>.csv and
results/<pair>/<uda>_<translator>/r<k>.confusion.npy). Writes OUT/<pair>_comparison.csv (summary),
_comparison_per_class.csv, _comparison_rounds.csv (every seed and round), .md, .png and .html (one
self-contained page). IoU is recomputed from the confusion matrices over one class set: the classes
with ground-truth pixels in the val split. Bad or missing input: one line naming the file, exit 2.

Also the Snakemake script of rule `comparison` (workflow/rules/compare.smk): same code, one seed.
"""

# (no `from __future__ import annotations`: Snakemake puts its preamble above a script)
import argparse
import logging
import sys
from pathlib import Path


def _paths(script_dir: Path) -> None:
    sys.path.insert(0, str(script_dir.parent / "lib"))
    sys.path.insert(0, str(script_dir.parents[1]))  # the repository: domains


def _row(value: str) -> tuple[str, str]:
    """'uda:translator' (a combo name like source_only_none cannot be split without the config)."""
    uda, sep, translator = value.partition(":")
    if not sep or not uda or not translator:
        raise argparse.ArgumentTypeError(f"{value!r} is not <uda>:<translator> (e.g. source_only:none)")
    return uda, translator


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--pair", required=True, help="pair name, e.g. minicity")
    p.add_argument("--runs", required=True, nargs="+", metavar="DIR", help="one working directory per seed")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="folder for <pair>_comparison.*")
    p.add_argument("--seeds", nargs="+", metavar="S", help="seed labels, one per DIR (default 0 1 2 ...)")
    p.add_argument("--rows", nargs="+", type=_row, metavar="UDA:TRANSLATOR",
                   help="rows to compare, e.g. source_only:none oracle:none bdl:semst (default: every final table "
                        "results/<pair>_<uda>_<translator>.csv found; source-only and oracle are required)")
    p.add_argument("--class-set", type=int, default=19, choices=(19, 16, 13),
                   help="19: every class with GT pixels; 16/13: only those of the SYNTHIA subset (default 19)")
    return p


def main(argv: list[str] | None = None) -> int:
    _paths(Path(__file__).resolve().parent)
    from wflib import compare as wcmp

    args = parser().parse_args(argv)
    try:
        result = wcmp.compare(args.pair, args.runs, args.seeds, args.rows, args.class_set)
        paths = wcmp.write_comparison(result, wcmp.output_paths(args.pair, args.out))
    except wcmp.CompareError as err:
        print(f"compare.py: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    except OSError as err:   # e.g. an output folder that cannot be written
        print(f"compare.py: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    print(f"{args.pair}: {len(result.summary)} rows, {len(result.seeds)} seed(s), {result.class_note}")
    for key in wcmp.OUTPUT_NAMES:
        print(f"  {paths[key]}")
    return 0


def from_snakemake(sm) -> None:
    """Rule comparison: the working directory's results (one seed), rows and class set from params."""
    _paths(Path(sm.scriptdir))
    from wflib import compare as wcmp

    logging.basicConfig(filename=sm.log[0], level=logging.INFO, format="%(levelname)s %(message)s")
    result = wcmp.compare(sm.wildcards.pair, ["."], [str(sm.params.seed)], [tuple(r) for r in sm.params.rows],
                          int(sm.params.class_set))
    wcmp.write_comparison(result, {key: sm.output[key] for key in wcmp.OUTPUT_NAMES})
    logging.info("%s: %d rows, %s", sm.wildcards.pair, len(result.summary), result.class_note)
    for note in sm.params.notes:
        logging.info("note: %s", note)


if "snakemake" in globals():
    from_snakemake(snakemake)  # noqa: F821
elif __name__ == "__main__":
    sys.exit(main())
