#!/usr/bin/env bash
# A reference run: optionally the GPU tests, then `snakemake all` on CONFIG (config/gpu.yaml for the two sweeps,
# config/gpu-grid.yaml for the grid). The pipeline writes results/ and logs/; the device's name and clocks, the
# test log and the snakemake log go to OUT_DIR. Run it again to finish a run cut by LIMIT_S: snakemake skips
# the cells already measured.
# Run from the repository root on a CUDA machine with the package installed (pip install -e ".[test]"):
#   bash benchmarks/reference_sweeps/run_sweeps.sh CONFIG [LIMIT_S] [tests] [OUT_DIR] [extra snakemake args...]
# LIMIT_S empty or 0: no limit; "tests": run the GPU tests first; OUT_DIR defaults to results/benchmarks/reference.
set -u
cfg=$1; limit=${2:-0}; tests=${3:-}; outdir=${4:-results/benchmarks/reference}
shift $(( $# < 4 ? $# : 4 ))
mkdir -p "$outdir"
start=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$outdir/nvidia-smi.csv"
if [ "$tests" = tests ]; then
  python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$outdir/gpu-pytest.log" 2>&1; echo "pytest rc=$?" >> "$outdir/gpu-pytest.log"
  tail -3 "$outdir/gpu-pytest.log"
fi
[ "$limit" = 0 ] && limit=
( time ${limit:+timeout "$limit"} python3 -m snakemake --cores 1 all --configfile "$cfg" "$@" ) > "$outdir/snakemake.log" 2>&1
echo "all rc=$? after $(( $(date +%s) - start )) s" | tee -a "$outdir/snakemake.log"
tail -5 "$outdir/snakemake.log"
ls results/cells/*/*/* 2>/dev/null | head -80
