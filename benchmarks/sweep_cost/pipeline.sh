# Sourced by the sweep_cost scripts (with `repo` set to the repository root): one pipeline run on the replicate
# study's model and settings (benchmarks/replicates/config.yaml), or on the config file SWEEP_CONFIG names.
#   sweep_pipeline WORK MEASURE SWEEPS [TARGET ...]
# runs Snakemake in the working directory WORK with measure.* overridden by MEASURE unless it is empty and the
# sweeps by SWEEPS unless it is empty (both YAML flow mappings), building the TARGETs (default: all). Snakemake's
# output goes to WORK/snakemake.log, followed by the pipeline's wall time, which is also printed. Returns
# Snakemake's status.
sweep_pipeline() {
  local work=$1 measure=$2 sweeps=$3 start status=0
  shift 3
  local config=()
  [ -n "$measure" ] && config+=(measure="$measure")
  [ -n "$sweeps" ] && config+=(sweeps="$sweeps")
  mkdir -p "$work"
  start=$(date +%s)
  # (--config takes every argument after it: the targets come before)
  snakemake --snakefile "$repo/Snakefile" --directory "$work" --cores 1 "${@:-all}" \
    --configfile "${SWEEP_CONFIG:-$repo/benchmarks/replicates/config.yaml}" ${config[@]+--config "${config[@]}"} \
    > "$work/snakemake.log" 2>&1 || status=$?
  echo "$(basename "$work"): pipeline wall time $(( $(date +%s) - start )) s" | tee -a "$work/snakemake.log"
  return $status
}
