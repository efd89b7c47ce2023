#!/usr/bin/env bash
# `make demo`: run the minicity demo DAG (SemST translation, then DeepLab-V2 with BDL and with
# SePiCo, in rounds until mIoU stops improving), print the final tables and build the Snakemake
# report (per-round mIoU plot, per-class IoU table, translated samples, pseudo-label examples).
# Run from the repository root; override SNAKEMAKE, PYTHON, TARGETS (space-separated) and CORES.
set -euo pipefail
SNAKEMAKE=${SNAKEMAKE:-snakemake}
PYTHON=${PYTHON:-python}
TARGETS=${TARGETS:-${TARGET:-results/minicity_bdl_semst.csv results/minicity_sepico_semst.csv}}
CORES=${CORES:-2}
start=$(date +%s)
# shellcheck disable=SC2086  # TARGETS is a list
$SNAKEMAKE --cores "$CORES" --profile workflow/profiles/default $TARGETS
for target in $TARGETS; do
  $PYTHON workflow/scripts/show_table.py "$target"
  echo
done
# shellcheck disable=SC2086
$SNAKEMAKE --cores "$CORES" --profile workflow/profiles/default --report results/report.html $TARGETS
echo "demo: $TARGETS and results/report.html in $(( $(date +%s) - start )) s"
