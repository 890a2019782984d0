#!/usr/bin/env bash
# One backend's 16 cells of the grid (config/gpu-grid.yaml), named as snakemake targets, optionally under a time
# limit. Cells already in results/cells are skipped, so repeated runs (eager, then graph) fill the grid; a final
# `snakemake --cores 1 all --configfile config/gpu-grid.yaml` builds merge, collapse, figures and the report.
# Run from the repository root on a CUDA machine with the package installed (pip install -e .):
#   bash benchmarks/reference_sweeps/run_grid_backend.sh BACKEND [LIMIT_S] [OUT_DIR]
# OUT_DIR (the device's name and clocks, the snakemake log) defaults to results/benchmarks/grid.
set -u
backend=$1; limit=${2:-}; outdir=${3:-results/benchmarks/grid}
mkdir -p "$outdir" results logs
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$outdir/nvidia-smi.csv"
cells=""; for s in 128 512 2048 8192; do for b in 1 8 32 128; do cells="$cells results/cells/qwen2.5-3b/fp16/$backend/seq${s}_batch${b}.json"; done; done
( time ${limit:+timeout "$limit"} python3 -m snakemake --cores 1 $cells --configfile config/gpu-grid.yaml ) > "$outdir/snakemake-$backend.log" 2>&1
echo "grid $backend rc=$? after $(( $(date +%s) - start )) s" | tee -a "$outdir/snakemake-$backend.log"
ls -l --time-style=+%T results/cells/*/*/$backend/ 2>/dev/null
