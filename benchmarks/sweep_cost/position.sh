#!/usr/bin/env bash
# Does a cell's value depend on its position in a shared measurement worker? The given backends (default: graph
# and compiled) at seq 128 x batch 1, 8 and 64 (benchmarks/replicates/config.yaml's model and settings), 3 replicates in
# measurement workers -- each replicate's worker measures batch 1 first in replicates 1 and 3 and last, after
# batch 64 and 8, in replicate 2 -- then the same batch-1 cells with isolation: process (2 replicates, one
# process each) on the shared run's compile cache, then cost.py's tables. Run from the repository root:
#   bash benchmarks/sweep_cost/position.sh [OUT_DIR] [BACKENDS] [ISOLATION]
# OUT_DIR (default results/benchmarks/sweep_cost/position) receives shared/ and process/ (pipeline working
# directories) and cost.md. BACKENDS: a comma-separated list (e.g. "eager"). ISOLATION: the workers' kind,
# shared (default) or forked.
set -euo pipefail
out_dir=${1:-results/benchmarks/sweep_cost/position}
backends=${2:-graph,compiled}
isolation=${3:-shared}
repo=$(pwd)
cells() {  # the combined cell files of the given batch sizes, each backend
  for backend in ${backends//,/ }; do for batch in "$@"; do
    echo "results/cells/qwen2.5-3b/fp16/$backend/seq128_batch$batch.json"; done; done
}
source "$repo/benchmarks/sweep_cost/pipeline.sh"
rc=0
mkdir -p "$out_dir/process/results"
sweep_pipeline "$out_dir/shared" "{backends: [$backends], isolation: $isolation, replicates: 3}" \
  "{batch_sweep: {seq: [128], batch: [1, 8, 64]}}" $(cells 1 8 64) || rc=$?
# the process run compiles nothing new: it reads the kernels and graphs the shared run cached
ln -sfn "$(cd "$out_dir/shared/results" && pwd)/cache" "$out_dir/process/results/cache"
sweep_pipeline "$out_dir/process" "{backends: [$backends], isolation: process, replicates: 2}" \
  "{batch_sweep: {seq: [128], batch: [1]}}" $(cells 1) || rc=$?
python3 "$repo/benchmarks/sweep_cost/cost.py" "$out_dir/shared" "$out_dir/process" | tee "$out_dir/cost.md"
exit $rc
