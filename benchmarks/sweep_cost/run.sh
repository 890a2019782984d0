#!/usr/bin/env bash
# What a sweep costs the GPU beyond its measured reps, with one process per cell and with shared measurement
# workers: the replicate study's sweep (benchmarks/replicates/config.yaml) once per isolation, each in a working
# directory of its own, then cost.py's tables. Run from the repository root:
#   bash benchmarks/sweep_cost/run.sh [OUT_DIR] [BACKENDS]
# OUT_DIR (default results/benchmarks/sweep_cost) receives process/ and shared/ (each a pipeline working
# directory) and cost.md; BACKENDS (default eager,graph,compiled) limits the backends.
set -euo pipefail
out_dir=${1:-results/benchmarks/sweep_cost}
backends=${2:-eager,graph,compiled}
repo=$(pwd)
rc=0
for isolation in process shared; do
  work="$out_dir/$isolation"
  mkdir -p "$work"
  start=$(date +%s)
  snakemake --snakefile "$repo/Snakefile" --directory "$work" --cores 1 all \
    --configfile "$repo/benchmarks/replicates/config.yaml" \
    --config measure="{backends: [${backends}], isolation: ${isolation}}" > "$work/snakemake.log" 2>&1 || rc=$?
  echo "isolation ${isolation}: pipeline wall time $(( $(date +%s) - start )) s" | tee -a "$work/snakemake.log"
done
python3 "$repo/benchmarks/sweep_cost/cost.py" "$out_dir/process" "$out_dir/shared" | tee "$out_dir/cost.md"
exit $rc
