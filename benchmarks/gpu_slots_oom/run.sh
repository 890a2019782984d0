#!/usr/bin/env bash
# GPU scheduling and OOM rows: this folder's config with two GPU job slots, so that on a one-GPU machine a second
# measurement must wait for the device instead of sharing it, and one cell (seq 8192 x batch 512) far too large
# for the device, which must become an `oom` row while the sweep, merge and report finish. Afterwards it lists,
# per cell, the device and slot it ran on and how long it waited.
# Run from the repository root on a CUDA machine with the package installed (pip install -e .):
#   bash benchmarks/gpu_slots_oom/run.sh [OUT_DIR]        # OUT_DIR defaults to results/benchmarks/gpu_slots_oom
set -u
outdir=${1:-results/benchmarks/gpu_slots_oom}
mkdir -p "$outdir"
( time python3 -m snakemake all --cores 4 --resources gpu=2 --configfile benchmarks/gpu_slots_oom/config.yaml ) \
  > "$outdir/snakemake.log" 2>&1
echo "snakemake rc=$?" | tee -a "$outdir/snakemake.log"
python3 - > "$outdir/slots.txt" <<'PY'
import glob, json
for f in sorted(glob.glob("results/cells/*/*/*/*.json")):
    d = json.load(open(f)); e = d.get("environment") or {}; err = d.get("error") or {}
    print(f.split("cells/")[1], d["status"], "slot", d.get("gpu_slot"), "uuid", e.get("gpu_uuid"),
          "visible", e.get("cuda_visible_devices"), "decode_ms", (d.get("metrics") or {}).get("decode_p50_ms_per_tok"),
          "error", err.get("message"), "mem", err.get("memory"))
PY
cat "$outdir/slots.txt"
cp results/report.md "$outdir/report.md"
cp results/slots/sweep.csv "$outdir/slots_sweep.csv"; cp results/oom/sweep.csv "$outdir/oom_sweep.csv"
cp results/cells/qwen2.5-3b/fp16/eager/seq8192_batch512.json "$outdir/oom_cell.json"
