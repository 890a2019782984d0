#!/usr/bin/env bash
# Why a run's first measuring worker pays more in its first cells: the graph sweep of "Where it stands" (seq 128 x
# batch 1, 8, 64, 3 replicates, shared workers, placement by_replicate) run several times in a row, each in a
# working directory of its own, with nothing else on the GPU or while another process holds it open:
#   plain    nothing else runs;
#   nvml     a process that has initialised NVML (it opens the device, creates no CUDA context) runs throughout;
#   context  a process holding a CUDA context on the GPU runs throughout;
#   again    the run before this one measured again in its own working directory (its cell files removed; its
#            caches, bytecode and Snakemake records kept);
#   wait:N   no run: the GPU is left alone for N more seconds;
#   primed   a process first runs the sweep's first cell's model and backend (seq 128 x batch 1, graph) at the
#            cell's shape and exits; then the run starts.
# Each holder starts HOLD_S seconds (default 10) before its run; between runs the GPU is left alone for IDLE_S
# seconds (default 20). Run from the repository root on a CUDA machine with the package installed:
#   bash benchmarks/sweep_cost/first_worker.sh OUT_DIR [MODE ...]      (default modes: plain nvml plain context)
# then first_worker.py prints, per run and worker, the worker's first use of the GPU stack and its cells' setup.
# Throughout, a sampler writes the GPU's SM and memory clocks, performance state, power and utilisation and the
# host's memory-compaction stalls, huge-page faults and major page faults (/proc/vmstat) every 50 ms to
# OUT_DIR/clocks.csv (wall-clock seconds), with a line per run's start and end.
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
for f in /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag; do
  [ -r "$f" ] && echo "$f: $(cat "$f")" | tee -a "$out_dir/gpu.csv"
done
: > "$out_dir/clocks.csv"  # the sampler and the run markers below both append
python3 - "$out_dir/clocks.csv" <<'PY' &
import sys, time, pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
host = ("compact_stall", "thp_fault_alloc", "thp_fault_fallback", "pgmajfault")
def vmstat():
    try:
        with open("/proc/vmstat") as fh:
            values = dict(line.split() for line in fh)
    except OSError:
        values = {}
    return ",".join(values.get(k, "") for k in host)
with open(sys.argv[1], "a", buffering=1) as out:
    out.write("t,sm_mhz,mem_mhz,pstate,power_w,util_pct," + ",".join(host) + "\n")
    while True:
        out.write(f"{time.time():.3f},{pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)},"
                  f"{pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)},"
                  f"{pynvml.nvmlDeviceGetPerformanceState(h)},"
                  f"{pynvml.nvmlDeviceGetPowerUsage(h) / 1000:.1f},{pynvml.nvmlDeviceGetUtilizationRates(h).gpu},"
                  f"{vmstat()}\n")
        time.sleep(0.05)
PY
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT
rc=0
n=0
previous=
for mode in "$@"; do
  n=$((n + 1))
  holder=
  work="$out_dir/$n-$mode"
  case $mode in
    wait:*) sleep "${mode#wait:}"; continue ;;
    plain) ;;
    again) [ -n "$previous" ] || { echo "again needs a run before it" >&2; exit 2; }
           cp -a "$previous" "$work"
           rm -f "$work"/results/cells/qwen2.5-3b/fp16/graph/seq128_batch*.json \
                 "$work"/results/cells/qwen2.5-3b/fp16/graph/seq128_batch*/r*.json ;;
    primed) python3 - <<'PY'
import time, torch
from pathlib import Path
import latency_sensitivity
from latency_sensitivity.engine import registry
from latency_sensitivity.engine.base import Clock
from latency_sensitivity.measure.model import CellSpec, build_model, make_prompt
t0 = time.perf_counter()
spec = CellSpec(model="qwen2.5-3b", model_kind="architecture", dtype="fp16",
                model_location=str(Path(latency_sensitivity.__file__).parent / "data/models/qwen2.5-3b.json"),
                backend="graph", device="cuda", attn_implementation="sdpa", threads=1, warmup=0, reps=1, seed=0,
                batch=1, seq_len=128, gen_tokens=32)
clock = Clock(True)
model = build_model(spec)
prompt = make_prompt(spec, model.config.vocab_size)
backend = registry.make("graph", model, prompt, spec.gen_tokens, clock)
with torch.inference_mode():
    backend.request(prompt, spec.gen_tokens, clock, "prime")
backend.close()
print(f"primed: seq 128 x batch 1 on the graph backend in a process of its own, {time.perf_counter() - t0:.1f} s")
PY
           ;;
    nvml) python3 -c "import time, pynvml; pynvml.nvmlInit(); pynvml.nvmlDeviceGetHandleByIndex(0); time.sleep(1e6)" &
          holder=$! ;;
    context) python3 -c "import time, torch; torch.empty(1, device='cuda'); torch.cuda.synchronize(); time.sleep(1e6)" &
             holder=$! ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  [ -n "$holder" ] && sleep "$hold_s"
  echo "$(date +%s.%N),run $n-$mode starts" >> "$out_dir/clocks.csv"
  sweep_pipeline "$work" "{backends: [graph], isolation: shared, replicates: 3, placement: by_replicate}" \
    "{batch_sweep: {seq: [128], batch: [1, 8, 64]}}" results/cells/qwen2.5-3b/fp16/graph/seq128_batch{1,8,64}.json \
    || rc=$?
  echo "$(date +%s.%N),run $n-$mode ends" >> "$out_dir/clocks.csv"
  previous=$work
  [ -n "$holder" ] && { kill "$holder"; wait "$holder" 2>/dev/null || true; }
  sleep "$idle_s"
done
python3 "$repo/benchmarks/sweep_cost/first_worker.py" "$out_dir"/*-* | tee "$out_dir/first_worker.md"
exit $rc
