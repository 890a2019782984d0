#!/usr/bin/env bash
# Replicates that land at different device addresses (measure.placement: by_replicate, the default), in shared
# workers and in processes of their own: one backend (graph by default) at seq 128 x batch 1, 8 and 64
# (benchmarks/replicates/config.yaml's model and settings), 3 replicates with isolation: shared, then the same
# cells with isolation: process, then cost.py's tables (per cell: each replicate's decode value, the cells its
# process measured before it and the MiB it held while it was built). Run from the repository root:
#   bash benchmarks/sweep_cost/placement_sweep.sh [OUT_DIR] [BACKEND]
# OUT_DIR (default results/benchmarks/sweep_cost/placement) receives shared/ and process/ (pipeline working
# directories) and cost.md.
set -euo pipefail
out_dir=${1:-results/benchmarks/sweep_cost/placement}
backend=${2:-graph}
repo=$(pwd)
cells=$(for batch in 1 8 64; do echo "results/cells/qwen2.5-3b/fp16/$backend/seq128_batch$batch.json"; done)
source "$repo/benchmarks/sweep_cost/pipeline.sh"
rc=0
for isolation in shared process; do
  sweep_pipeline "$out_dir/$isolation" \
    "{backends: [$backend], isolation: $isolation, replicates: 3, placement: by_replicate}" \
    "{batch_sweep: {seq: [128], batch: [1, 8, 64]}}" $cells || rc=$?
done
python3 "$repo/benchmarks/sweep_cost/cost.py" "$out_dir/shared" "$out_dir/process" | tee "$out_dir/cost.md"
exit $rc
