#!/usr/bin/env bash
# Device call: one backend's cells of the grid study (config/gpu-grid.yaml), under a time limit. Cells already
# measured by an earlier call can be carried in under .gpu-partial/results/cells (Snakemake skips them).
# Usage: bash benchmarks/device/grid_backend_run.sh BACKEND LIMIT_S
backend=$1; limit=$2
source .device-carry/on-device.sh && export PYTHONPATH=src:$PYTHONPATH
start=$(date +%s)
mkdir -p results logs
[ -d .gpu-partial/results ] && cp -rn .gpu-partial/results/* results/ && cp -rn .gpu-partial/logs/* logs/ 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > $OUT/nvidia-smi.csv
cells=""; for s in 128 512 2048 8192; do for b in 1 8 32 128; do cells="$cells results/cells/qwen2.5-3b/fp16/$backend/seq${s}_batch${b}.json"; done; done
( time timeout $limit python3 -m snakemake --cores 1 $cells --configfile config/gpu-grid.yaml ) > $OUT/snakemake-$backend.log 2>&1
echo "grid $backend rc=$? after $(( $(date +%s) - start )) s" | tee -a $OUT/snakemake-$backend.log
tar czf $OUT/grid-$backend.tgz results/cells logs/measure 2>/dev/null
ls -l --time-style=+%T results/cells/*/*/$backend/ 2>/dev/null
