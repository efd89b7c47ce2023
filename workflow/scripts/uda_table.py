"""Snakemake script of rule uda_table: best round of each results/<pair>_<uda>_<translator>.csv
(SemST Table 2 layout: per-class IoU + mIoU), and the published numbers in a separate CSV."""
import logging
import sys
from pathlib import Path

if "snakemake" not in globals():  # run by hand: --help only (Snakemake runs it with a `snakemake` object)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
    from wflib.scripthelp import snakemake_only

    sys.exit(snakemake_only(__doc__, "uda_table.py", "uda_table", "results/minicity_uda_table.csv"))

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "lib"))  # noqa: F821
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821  (the repository: domains)


from domains.labels import CLASSES  # noqa: E402
from wflib import tables as wft  # noqa: E402

sm = snakemake  # noqa: F821
logging.basicConfig(filename=sm.log[0], level=logging.INFO, format="%(levelname)s %(message)s")
log = logging.getLogger("uda_table")

entries = [(uda, translator, path) for (uda, translator), path in zip(sm.params.combos, sm.input.finals)]
table = wft.uda_table(entries, CLASSES)
if int(sm.params.class_set) == 19:
    table = table.drop(columns=[c for c in ("mIoU16", "mIoU13") if c in table])
wft.write_csv_atomic(table, sm.output.table)
for note in sm.params.notes:
    log.info("note: %s", note)
wft.write_published(sm.params.published, sm.wildcards.pair, sm.output.published, Path(sm.scriptdir).resolve().parents[1])
log.info("wrote %s (%d rows) and %s", sm.output.table, len(table), sm.output.published)
