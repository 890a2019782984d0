#!/usr/bin/env bash
# Device call: one grid cell of the graph backend with the packed-GQA decode attention (compare with
# results/reference/h100/grid_study, measured without it), then the GPU tests, then a checkpoint materialised
# on the GPU.
source .device-carry/on-device.sh >/dev/null && export PYTHONPATH=src:$PYTHONPATH
python3 -c "import transformers; from latency_sensitivity import backends; print('transformers', transformers.__version__, 'packs GQA itself:', backends.transformers_packs_gqa())" | tee $OUT/versions.txt
R="python3 -m latency_sensitivity.runner --model qwen2.5-3b --model-kind architecture --model-location config/models/qwen2.5-3b.json --dtype fp16 --backend graph --device cuda --attn-implementation sdpa --gen-tokens 32 --warmup 3 --reps 7 --seed 0 --threads 1"
$R --seq 2048 --batch 32 --out $OUT/graph_seq2048_batch32.json 2> $OUT/cell.log
python3 -c "
import json; d=json.load(open('$OUT/graph_seq2048_batch32.json')); m=d['metrics']
print(d['status'], {k: m.get(k) for k in ('decode_attention', 'decode_p50_ms_per_tok', 'prefill_p50_ms', 'decode_gpu_busy', 'backend_setup_s')})"
python3 -m pytest -q -m gpu -p no:cacheprovider tests > $OUT/gpu-pytest.log 2>&1; tail -2 $OUT/gpu-pytest.log
python3 -m latency_sensitivity.loading materialize --model tiny-qwen2 --model-kind architecture \
  --model-location config/models/tiny-qwen2.json --dtype fp16 --device cuda --out /tmp/ckpt > $OUT/materialize.log 2>&1
echo "materialize rc=$?"; tail -1 $OUT/materialize.log
