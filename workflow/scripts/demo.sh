#!/usr/bin/env bash
# `make demo`: run the minicity demo DAG -- SemST translation, then DeepLab-V2 with BDL self-training
# in rounds until target mIoU stops improving, beside the source-only and oracle references -- print
# the per-round table and the comparison (BDL + SemST beside source-only and oracle, with the fraction of the gap it closes),
# and build the Snakemake report (comparison page, per-round plot and table, translated samples,
# pseudo-label examples). Run from the repository root; override SNAKEMAKE, PYTHON, TARGETS
# (space-separated final tables) and CORES.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then   # the comment above, without running anything
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
  exit 0
fi
SNAKEMAKE=${SNAKEMAKE:-snakemake}
PYTHON=${PYTHON:-python}
TARGETS=${TARGETS:-${TARGET:-results/minicity_bdl_semst.csv}}
PAIR=${PAIR:-minicity}
CORES=${CORES:-2}
CONFIG=(--configfile config/config.yaml config/experiments/demo.yaml)
start=$(date +%s)
# shellcheck disable=SC2086  # TARGETS is a list
$SNAKEMAKE $TARGETS "results/${PAIR}_comparison.html" --cores "$CORES" --profile workflow/profiles/default "${CONFIG[@]}"
for target in $TARGETS; do
  $PYTHON workflow/scripts/show_table.py "$target"
  echo
done
cat "results/${PAIR}_comparison.md"
echo
# shellcheck disable=SC2086
$SNAKEMAKE $TARGETS "results/${PAIR}_comparison.html" --cores "$CORES" --profile workflow/profiles/default \
  --report results/report.html "${CONFIG[@]}"
echo "demo: $TARGETS, results/${PAIR}_comparison.html and results/report.html in $(( $(date +%s) - start )) s"
