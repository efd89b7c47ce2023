#!/usr/bin/env bash
# `make demo`: run the minicity demo DAG (two-stage UDA with rounds), print the final table and
# build the Snakemake report (per-round mIoU plot, per-class IoU table, translated samples,
# pseudo-label examples). Run from the repository root; override SNAKEMAKE, PYTHON, TARGET, CORES.
set -euo pipefail
SNAKEMAKE=${SNAKEMAKE:-snakemake}
PYTHON=${PYTHON:-python}
TARGET=${TARGET:-results/minicity_bdl_semst.csv}
CORES=${CORES:-2}
start=$(date +%s)
$SNAKEMAKE --cores "$CORES" --profile workflow/profiles/default "$TARGET"
$PYTHON workflow/scripts/show_table.py "$TARGET"
$SNAKEMAKE --cores "$CORES" --profile workflow/profiles/default --report results/report.html "$TARGET"
echo "demo: $TARGET and results/report.html in $(( $(date +%s) - start )) s"
