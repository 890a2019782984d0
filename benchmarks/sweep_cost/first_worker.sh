#!/usr/bin/env bash
# Why a run's first measuring worker pays more in its first cells: the graph sweep of "Where it stands" (seq 128 x
# batch 1, 8, 64, 3 replicates, shared workers, placement by_replicate) run several times in a row, each in a
# working directory of its own, with nothing else on the GPU or while another process holds it open:
#   plain    nothing else runs;
#   nvml     a process that has initialised NVML (it opens the device, creates no CUDA context) runs throughout;
#   context  a process holding a CUDA context on the GPU runs throughout.
# Each holder starts HOLD_S seconds (default 10) before its run; between runs the GPU is left alone for IDLE_S
# seconds (default 20). Run from the repository root on a CUDA machine with the package installed:
#   bash benchmarks/sweep_cost/first_worker.sh OUT_DIR [MODE ...]      (default modes: plain nvml plain context)
# then first_worker.py prints, per run and worker, the worker's first use of the GPU stack and its cells' setup.
set -euo pipefail
out_dir=$1
shift
[ $# -gt 0 ] || set -- plain nvml plain context
repo=$(pwd)
source "$repo/benchmarks/sweep_cost/pipeline.sh"
hold_s=${HOLD_S:-10}
idle_s=${IDLE_S:-20}
mkdir -p "$out_dir"
nvidia-smi --query-gpu=name,persistence_mode,pstate,clocks.sm,driver_version --format=csv | tee "$out_dir/gpu.csv"
rc=0
n=0
for mode in "$@"; do
  n=$((n + 1))
  holder=
  case $mode in
    plain) ;;
    nvml) python3 -c "import time, pynvml; pynvml.nvmlInit(); pynvml.nvmlDeviceGetHandleByIndex(0); time.sleep(1e6)" &
          holder=$! ;;
    context) python3 -c "import time, torch; torch.empty(1, device='cuda'); torch.cuda.synchronize(); time.sleep(1e6)" &
             holder=$! ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  [ -n "$holder" ] && sleep "$hold_s"
  sweep_pipeline "$out_dir/$n-$mode" "{backends: [graph], isolation: shared, replicates: 3, placement: by_replicate}" \
    "{batch_sweep: {seq: [128], batch: [1, 8, 64]}}" results/cells/qwen2.5-3b/fp16/graph/seq128_batch{1,8,64}.json \
    || rc=$?
  [ -n "$holder" ] && { kill "$holder"; wait "$holder" 2>/dev/null || true; }
  sleep "$idle_s"
done
python3 "$repo/benchmarks/sweep_cost/first_worker.py" "$out_dir"/*-* | tee "$out_dir/first_worker.md"
exit $rc
