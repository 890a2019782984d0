#!/usr/bin/env bash
# One device call of a reference study: GPU tests (first call only), then `snakemake all` under a time limit.
# Usage: bash .device-carry/study_run.sh CONFIG LIMIT_S [tests] [extra snakemake args...]
cfg=$1; limit=$2; tests=$3; shift 3
source .device-carry/on-device.sh && export PYTHONPATH=src:$PYTHONPATH
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > $OUT/nvidia-smi.csv
if [ "$tests" = tests ]; then
  python3 -m pytest -q -m gpu -p no:cacheprovider tests > $OUT/gpu-pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/gpu-pytest.log
  tail -3 $OUT/gpu-pytest.log
fi
( time timeout $limit python3 -m snakemake --cores 1 all --configfile $cfg "$@" ) > $OUT/snakemake.log 2>&1
echo "all rc=$? after $(( $(date +%s) - start )) s" | tee -a $OUT/snakemake.log
tail -5 $OUT/snakemake.log
tar czf $OUT/results.tgz --exclude=results/checkpoints results logs .snakemake/log 2>/dev/null
ls results/cells/*/*/* 2>/dev/null | head -80
