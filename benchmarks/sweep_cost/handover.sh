#!/usr/bin/env bash
# A cell job's hand-over to a running shared worker (its start to its cell's start), for two source trees of the
# package (e.g. the code before a change and after it), in alternating blocks of cell jobs: each block starts its
# worker with one job, then times JOBS more. Alternating keys make the other block's idle worker exit, so each
# block pays one worker start-up, which is not counted.
#   bash benchmarks/sweep_cost/handover.sh OUT_DIR SRC_A SRC_B [DEVICE] [BLOCKS] [JOBS]
# DEVICE: cpu (default; the CPU default's tiny model, fp32) or cuda (the Qwen2.5-3B architecture, fp16).
# Prints a markdown table: per source tree and block, the hand-over (job_s - cell_s), and where the worker records
# them, the part up to the worker taking the cell (picked_up_s) and its clean-up after the cell before.
set -euo pipefail
work=$1 a=$2 b=$3 device=${4:-cpu} blocks=${5:-3} jobs=${6:-12}
repo=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$work" && cd "$work"
if [ "$device" = cuda ]; then model=qwen2.5-3b dtype=fp16; else model=tiny-qwen2 dtype=fp32; fi
args=(--model "$model" --model-kind architecture --model-location "$repo/src/latency_sensitivity/data/models/$model.json"
      --dtype "$dtype" --backend eager --device "$device" --seq 128 --batch 1 --gen-tokens 8 --warmup 1 --reps 3
      --replicate 1 --isolation shared)
for blk in $(seq 1 "$blocks"); do
  for tag in a b; do
    src=$a; [ $tag = b ] && src=$b
    for i in $(seq 0 "$jobs"); do
      PYTHONPATH=$src python3 -m latency_sensitivity.measure.runner "${args[@]}" --out "$PWD/${tag}${blk}_$i.json" 2>/dev/null
    done
  done
done
BLOCKS=$blocks JOBS=$jobs python3 - <<'PY'
import json, os, statistics
print("| code | block | jobs | hand-over ms, median (min-max) | picked up ms, median | worker's clean-up before ms, median |")
print("|---|---:|---:|---|---:|---:|")
for blk in range(1, int(os.environ["BLOCKS"]) + 1):
    for tag in ("a", "b"):
        rs = [json.load(open(f"{tag}{blk}_{i}.json")) for i in range(1, int(os.environ["JOBS"]) + 1)]
        h = [1000 * (r["metrics"]["job_s"] - r["metrics"]["cell_s"]) for r in rs if r["status"] == "ok"]
        p = [1000 * r["worker"]["picked_up_s"] for r in rs if r["worker"].get("picked_up_s") is not None]
        c = [1000 * r["worker"]["previous_release_s"] for r in rs if r["worker"].get("previous_release_s") is not None]
        med = lambda v: f"{statistics.median(v):.1f}" if v else ""
        print(f"| {tag} | {blk} | {len(h)} | {med(h)} ({min(h):.0f}-{max(h):.0f}) | {med(p)} | {med(c)} |")
PY
