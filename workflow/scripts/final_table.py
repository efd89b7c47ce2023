"""Snakemake script of rule final_table: per-round table (CSV) and mIoU plot (wflib.table, wflib.figures)."""
import logging
import sys
from pathlib import Path

if "snakemake" not in globals():  # run by hand: --help only (Snakemake runs it with a `snakemake` object)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
    from wflib.scripthelp import snakemake_only

    sys.exit(snakemake_only(__doc__, "final_table.py", "final_table", "results/minicity_bdl_semst.csv"))

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821  (the repository: domains)

from wflib.figures import miou_plot  # noqa: E402
from wflib.pipeline_config import parse_combo  # noqa: E402
from wflib.table import final_table, write_csv_atomic  # noqa: E402

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)  # noqa: F821
sm = snakemake  # noqa: F821
uda, translator = parse_combo(sm.wildcards.combo, sm.config)
table = final_table(sm.input.rounds, sm.params.stages, sm.params.rounds, sm.wildcards.pair, uda, translator)
write_csv_atomic(table, sm.output.table)
miou_plot(table, sm.output.plot, f"{sm.wildcards.pair}: {uda} + {translator}")
logging.info("wrote %s (%d rounds, best round %s)", sm.output.table, len(table), int(table.loc[table.best, "round"].iloc[0]))
