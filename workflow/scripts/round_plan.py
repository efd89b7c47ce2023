"""Snakemake script of rule round_plan: the rounds settings a run's final table is planned with (JSON).

The file exists so that a change of those settings reruns the final table. Snakemake skips every
params check of a job whose input still names an unfinished checkpoint round, so a config that
gives a finished run more rounds (``rounds.max``, ``rounds.min_delta``, ``multi_round``) was
answered with "Nothing to be done"; this rule has no checkpoint input, its params are checked, and
when it reruns, the final table that reads it reruns and asks for the new rounds.
"""
import json
import sys
from pathlib import Path

if "snakemake" not in globals():  # run by hand: --help only (Snakemake runs it with a `snakemake` object)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
    from wflib.scripthelp import snakemake_only

    sys.exit(snakemake_only(__doc__, "round_plan.py", "round_plan", "results/minicity/bdl_semst/rounds.json"))

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821  (the repository: domains)

from domains.io import atomic_write_text  # noqa: E402

atomic_write_text(snakemake.output[0], json.dumps(dict(snakemake.params.rounds), indent=1, sort_keys=True) + "\n")  # noqa: F821
