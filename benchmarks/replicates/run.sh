#!/usr/bin/env bash
# The replicate study on this machine's GPU: the pipeline with benchmarks/replicates/config.yaml, then the
# between-replicate spread per backend and cell. Run from the repository root:
#   bash benchmarks/replicates/run.sh [OUT_DIR] [BACKENDS]
# OUT_DIR (default results/benchmarks/replicates) receives the spread table and a copy of the sweep and report;
# BACKENDS (default eager,graph,compiled) limits the backends measured in this call (run again for the others:
# cells already measured are kept).
set -euo pipefail
out_dir=${1:-results/benchmarks/replicates}
backends=${2:-eager,graph,compiled}
mkdir -p "$out_dir"
start=$(date +%s)
rc=0
snakemake --cores 1 all --configfile benchmarks/replicates/config.yaml \
  --config measure="{backends: [${backends}]}" > "$out_dir/snakemake.log" 2>&1 || rc=$?
grep -E "cells:|^  (error|oom) " "$out_dir/snakemake.log" || true
echo "pipeline wall time: $(( $(date +%s) - start )) s, exit status $rc" | tee -a "$out_dir/snakemake.log"
if [ -f results/batch_sweep/sweep.csv ]; then
  python3 benchmarks/replicates/spread.py results/batch_sweep/sweep.csv | tee "$out_dir/spread.md"
  cp results/batch_sweep/sweep.csv results/report.md "$out_dir/"
fi
exit $rc
