"""Snakemake script of rule pseudo_grid: target image, pseudo-label, ground truth (wflib.figures.pseudo_grid)."""
import logging
import os
import sys
from pathlib import Path

if "snakemake" not in globals():  # run by hand: --help only (Snakemake runs it with a `snakemake` object)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
    from wflib.scripthelp import snakemake_only

    sys.exit(snakemake_only(__doc__, "pseudo_grid.py", "pseudo_grid", "results/minicity_bdl_semst.csv"))

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821  (the repository: domains)

from wflib.figures import pseudo_grid  # noqa: E402

sm = snakemake  # noqa: F821
logging.basicConfig(filename=sm.log[0], level=logging.INFO)
pseudo_grid(sm.input.tgt, os.path.dirname(sm.input.meta), sm.output[0], split=sm.params.split, n=sm.params.n)
logging.info("wrote %s", sm.output[0])
