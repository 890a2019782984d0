#!/usr/bin/env bash
# The sweep this study started from (fifteen_cells.yaml), run twice, each in a working directory of its own:
# prime, with an empty compile cache (what a machine pays once per versions), then warm, with a copy of the prime
# run's cache and no cell files (what each later sweep pays). Prints cost.py's tables, each job's row included.
# Run from the repository root, on a CUDA machine with the package installed:
#   bash benchmarks/sweep_cost/fifteen_cells.sh OUT_DIR [MEASURE]
# OUT_DIR: a folder without prime/ and warm/ in it. MEASURE: a YAML flow mapping overriding measure.* (e.g.
# "{isolation: process}"); default: the file's.
set -euo pipefail
out_dir=$1 measure=${2:-}
repo=$(pwd)
source "$repo/benchmarks/sweep_cost/pipeline.sh"
export SWEEP_CONFIG=$repo/benchmarks/sweep_cost/fifteen_cells.yaml
for run in prime warm; do
  [ ! -e "$out_dir/$run" ] || { echo "$out_dir/$run exists: give a new OUT_DIR" >&2; exit 2; }
done
rc=0
sweep_pipeline "$out_dir/prime" "$measure" "" || rc=$?
mkdir -p "$out_dir/warm/results"
cp -r "$out_dir/prime/results/cache" "$out_dir/warm/results/cache"
sweep_pipeline "$out_dir/warm" "$measure" "" || rc=$?
python3 "$repo/benchmarks/sweep_cost/cost.py" --jobs "$out_dir/prime" "$out_dir/warm" | tee "$out_dir/cost.md"
exit $rc
