#!/usr/bin/env bash
# The graph backend's packed-GQA decode attention on one grid cell (seq 2048 x batch 32, compare with
# reference/h100/grid_study), then the GPU tests, then a small checkpoint materialised on the GPU.
# Run from the repository root on a CUDA machine with the package installed (pip install -e ".[test]"):
#   bash benchmarks/packed_gqa/run.sh [OUT_DIR]        # OUT_DIR defaults to results/benchmarks/packed_gqa
set -u
outdir=${1:-results/benchmarks/packed_gqa}
mkdir -p "$outdir"
python3 -c "import transformers; from latency_sensitivity import backends; print('transformers', transformers.__version__, 'packs GQA itself:', backends.transformers_packs_gqa())" | tee "$outdir/versions.txt"
R="python3 -m latency_sensitivity.measure.runner --model qwen2.5-3b --model-kind architecture --model-location config/models/qwen2.5-3b.json --dtype fp16 --backend graph --device cuda --attn-implementation sdpa --gen-tokens 32 --warmup 3 --reps 7 --seed 0 --threads 1"
$R --seq 2048 --batch 32 --out "$outdir/graph_seq2048_batch32.json" 2> "$outdir/cell.log"
CELL="$outdir/graph_seq2048_batch32.json" python3 -c "
import json, os; d=json.load(open(os.environ['CELL'])); m=d['metrics']
print(d['status'], {k: m.get(k) for k in ('decode_attention', 'decode_p50_ms_per_tok', 'prefill_p50_ms', 'decode_gpu_busy', 'backend_setup_s')})"
python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$outdir/gpu-pytest.log" 2>&1; tail -2 "$outdir/gpu-pytest.log"
ckpt=$(mktemp -d)
python3 -m latency_sensitivity.measure.loading materialize --model tiny-qwen2 --model-kind architecture \
  --model-location config/models/tiny-qwen2.json --dtype fp16 --device cuda --out "$ckpt" > "$outdir/materialize.log" 2>&1
echo "materialize rc=$?"; tail -1 "$outdir/materialize.log"; rm -rf "$ckpt"
