#!/usr/bin/env bash
# One compile per batch size (measure.compile_shapes: static) against one compile with the batch dynamic
# (dynamic_batch): the compiled backend at seq 128 x batch 2-64 (benchmarks/replicates/config.yaml's model and
# settings), shared workers, each setting in a working directory of its own with an empty compile cache. dynamic_batch
# runs 2 replicates (the first compiles, the second starts from its cache), static the first replicate only
# unless STATIC_REPLICATES says otherwise; BATCHES
# (default "2 4 8 16 32 64") sets the batch sizes. Then cost.py's tables. Run from the repository root:
#   bash benchmarks/sweep_cost/compile_shapes.sh [OUT_DIR]
# OUT_DIR (default results/benchmarks/sweep_cost/compile_shapes) receives dynamic_batch/, static/ and cost.md.
set -euo pipefail
out_dir=${1:-results/benchmarks/sweep_cost/compile_shapes}
repo=$(pwd)
batches=${BATCHES:-2 4 8 16 32 64}
source "$repo/benchmarks/sweep_cost/pipeline.sh"
rc=0
for shapes in dynamic_batch static; do
  replicates=2
  [ "$shapes" = static ] && replicates=${STATIC_REPLICATES:-1}
  targets=$(for b in $batches; do echo "results/cells/qwen2.5-3b/fp16/compiled/seq128_batch$b.json"; done)
  sweep_pipeline "$out_dir/$shapes" \
    "{backends: [compiled], isolation: shared, replicates: $replicates, compile_shapes: $shapes}" \
    "{batch_sweep: {seq: [128], batch: [${batches// /, }]}}" $targets || rc=$?
done
python3 "$repo/benchmarks/sweep_cost/cost.py" "$out_dir/dynamic_batch" "$out_dir/static" | tee "$out_dir/cost.md"
exit $rc
