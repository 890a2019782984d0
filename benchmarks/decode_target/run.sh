#!/usr/bin/env bash
# The decode-target study through the pipeline: the GPU tests, then snakemake on this folder's config (by default
# config.yaml: graph and compiled backends at seq 128 x batch 1 and seq 8192 x batch 1), then each measured cell's
# decode and prefill medians, GPU-busy share and setup times. The pipeline writes its usual results/ and logs/;
# versions, the test log and the snakemake log go to OUT_DIR.
# Run from the repository root on a CUDA machine with the package installed (pip install -e ".[test]"):
#   [SKIP_TESTS=1] [CONFIG=benchmarks/decode_target/config_profiles.yaml] [TARGETS="all profile_all"] \
#     bash benchmarks/decode_target/run.sh [OUT_DIR] [LIMIT_S]
# OUT_DIR defaults to results/benchmarks/decode_target; LIMIT_S, when given, stops snakemake after that many seconds.
set -u
outdir=${1:-results/benchmarks/decode_target}
limit=${2:-}
config=${CONFIG:-benchmarks/decode_target/config.yaml}
targets=${TARGETS:-all}
mkdir -p "$outdir"
start=$(date +%s)
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
  command -v gcc cc; } > "$outdir/versions.txt" 2>&1
cat "$outdir/versions.txt"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
if [ -z "${SKIP_TESTS:-}" ]; then
  python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$outdir/gpu-pytest.log" 2>&1
  echo "pytest rc=$? after $(( $(date +%s) - start )) s" >> "$outdir/gpu-pytest.log"; tail -3 "$outdir/gpu-pytest.log"
fi
( time ${limit:+timeout "$limit"} python3 -m snakemake --cores 1 $targets --configfile "$config" ) \
  > "$outdir/snakemake.log" 2>&1
echo "snakemake rc=$? after $(( $(date +%s) - start )) s" | tee -a "$outdir/snakemake.log"
tail -4 "$outdir/snakemake.log"
python3 - <<'PY'
import glob, json
for f in sorted(glob.glob("results/cells/*/*/*/*.json")):
    d = json.load(open(f)); m = d.get("metrics") or {}
    print(f.split("cells/")[1], d["status"], {k: m.get(k) for k in ("decode_p50_ms_per_tok", "prefill_p50_ms",
          "decode_gpu_busy", "backend_setup_s", "backend_compile_s", "decode_attention")}, (d.get("error") or "")[:300])
PY
