#!/usr/bin/env bash
# The reference study's sweeps as config/gpu.yaml runs them (Qwen2.5-3B architecture, random fp16 weights, eager
# and graph, seq 128-4096 at batch 1 and batch 1-64 at seq 128: 13 cells a backend and replicate), the whole
# pipeline (`snakemake --cores 1 all`, the loading measurement, calibration and report included), in a working
# directory of its own. Prints the pipeline's wall time and cost.py's tables, each job's row included.
# Run from the repository root, on a CUDA machine with the package installed:
#   bash benchmarks/sweep_cost/reference_grid.sh OUT_DIR [MEASURE]
# OUT_DIR: a folder that does not exist yet. MEASURE: a YAML flow mapping overriding measure.* (e.g.
# "{isolation: forked, replicates: 1}"); default: the file's.
set -euo pipefail
out_dir=$1 measure=${2:-}
repo=$(pwd)
[ ! -e "$out_dir" ] || { echo "$out_dir exists: give a new OUT_DIR" >&2; exit 2; }
source "$repo/benchmarks/sweep_cost/pipeline.sh"
export SWEEP_CONFIG=$repo/config/gpu.yaml
# the config names the reference study's CSV relative to the working directory
mkdir -p "$out_dir/config"
cp -r "$repo/config/reference_study" "$out_dir/config/"
rc=0
sweep_pipeline "$out_dir" "$measure" "" || rc=$?
python3 "$repo/benchmarks/sweep_cost/cost.py" --jobs "$out_dir" | tee "$out_dir/cost.md"
exit $rc
