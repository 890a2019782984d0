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
source "$repo/benchmarks/sweep_cost/pipeline.sh"
rc=0
for isolation in process shared; do
  sweep_pipeline "$out_dir/$isolation" "{backends: [${backends}], isolation: ${isolation}}" "" || rc=$?
done
python3 "$repo/benchmarks/sweep_cost/cost.py" "$out_dir/process" "$out_dir/shared" | tee "$out_dir/cost.md"
exit $rc
