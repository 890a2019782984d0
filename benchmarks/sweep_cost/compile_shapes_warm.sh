#!/usr/bin/env bash
# The compiled backend over seq 128 x batch 1-64 (benchmarks/replicates/config.yaml's model and settings, shared
# workers, placement by_replicate, the step saved once and loaded: compiled_step saved) with each compile_shapes
# setting, end to end: for each SHAPES a prime run with an empty compile cache (one replicate: the steps compiled
# and saved, the batch-1 kernels tuned), then a warm run in a working directory of its own that starts from a copy
# of the prime's cache (WARM_REPLICATES replicates, default 1). Then cost.py's tables over all runs. ISOLATION sets
# measure.isolation (default shared; forked forks each worker from a fork server).
# Run from the repository root on a CUDA machine with the package installed:
#   bash benchmarks/sweep_cost/compile_shapes_warm.sh OUT_DIR [SHAPES ...]   (default: dynamic_batch static)
# OUT_DIR receives SHAPES/prime/, SHAPES/warm/ (pipeline working directories) and cost.md.
set -euo pipefail
out_dir=$1
shift
[ $# -gt 0 ] || set -- dynamic_batch static
repo=$(pwd)
source "$repo/benchmarks/sweep_cost/pipeline.sh"
batches="1 2 4 8 16 32 64"
targets=$(for b in $batches; do echo "results/cells/qwen2.5-3b/fp16/compiled/seq128_batch$b.json"; done)
rc=0
runs=()
for shapes in "$@"; do
  measure="backends: [compiled], isolation: ${ISOLATION:-shared}, placement: by_replicate"
  measure+=", compile_shapes: $shapes, compiled_step: saved"
  sweeps="{batch_sweep: {seq: [128], batch: [${batches// /, }]}}"
  sweep_pipeline "$out_dir/$shapes/prime" "{$measure, replicates: 1}" "$sweeps" $targets || rc=$?
  mkdir -p "$out_dir/$shapes/warm/results"
  cp -r "$out_dir/$shapes/prime/results/cache" "$out_dir/$shapes/warm/results/"
  sweep_pipeline "$out_dir/$shapes/warm" "{$measure, replicates: ${WARM_REPLICATES:-1}}" "$sweeps" $targets || rc=$?
  runs+=("$out_dir/$shapes/prime" "$out_dir/$shapes/warm")
done
python3 "$repo/benchmarks/sweep_cost/cost.py" "${runs[@]}" | tee "$out_dir/cost.md"
exit $rc
