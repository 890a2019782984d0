#!/usr/bin/env bash
# Device call (issue 3): the GPU tests, then benchmarks/configs/compiled_h100.yaml through snakemake: graph and
# compiled backends at seq 128 x batch 1 and seq 2048 x batch 32, the device's calibration, the report, and
# Nsight Systems profiles of both backends at seq 128 x batch 1.
# Usage: [SKIP_TESTS=1] [CONFIG=benchmarks/configs/....yaml] [TARGETS="all"] bash benchmarks/device/compiled_check.sh [LIMIT_S]
limit=${1:-480}
config=${CONFIG:-benchmarks/configs/compiled_h100.yaml}
targets=${TARGETS:-all profile_all}
source .device-carry/on-device.sh && export PYTHONPATH=src:$PYTHONPATH
start=$(date +%s)
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
  command -v gcc cc; } > $OUT/versions.txt 2>&1
cat $OUT/versions.txt
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
if [ -z "$SKIP_TESTS" ]; then
  python3 -m pytest -q -m gpu -p no:cacheprovider tests > $OUT/gpu-pytest.log 2>&1
  echo "pytest rc=$? after $(( $(date +%s) - start )) s" >> $OUT/gpu-pytest.log; tail -3 $OUT/gpu-pytest.log
fi
( time timeout $limit python3 -m snakemake --cores 1 $targets --configfile $config ) \
  > $OUT/snakemake.log 2>&1
echo "snakemake rc=$? after $(( $(date +%s) - start )) s" | tee -a $OUT/snakemake.log
tail -4 $OUT/snakemake.log
tar czf $OUT/results.tgz --exclude='*.nsys-rep' --exclude='*.sqlite' results logs .snakemake/log 2>/dev/null
python3 - <<'PY'
import glob, json
for f in sorted(glob.glob("results/cells/*/*/*/*.json")):
    d = json.load(open(f)); m = d.get("metrics") or {}
    print(f.split("cells/")[1], d["status"], {k: m.get(k) for k in ("decode_p50_ms_per_tok", "prefill_p50_ms",
          "decode_gpu_busy", "backend_setup_s", "backend_compile_s", "decode_attention")}, (d.get("error") or "")[:300])
PY
