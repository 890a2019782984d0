#!/usr/bin/env bash
# Device call: the grid study (config/gpu-grid.yaml). Graph cells first, then everything else, under one limit.
limit=$1
source .device-carry/on-device.sh && export PYTHONPATH=src:$PYTHONPATH
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > $OUT/nvidia-smi.csv
graph=""; for s in 128 512 2048 8192; do for b in 1 8 32 128; do graph="$graph results/cells/qwen2.5-3b/fp16/graph/seq${s}_batch${b}.json"; done; done
( time timeout $limit bash -c "python3 -m snakemake --cores 1 $graph --configfile config/gpu-grid.yaml && python3 -m snakemake --cores 1 all --configfile config/gpu-grid.yaml" ) > $OUT/snakemake.log 2>&1
echo "grid rc=$? after $(( $(date +%s) - start )) s" | tee -a $OUT/snakemake.log
tar czf $OUT/results.tgz results logs .snakemake/log 2>/dev/null
ls -l --time-style=+%T results/cells/*/*/* 2>/dev/null
