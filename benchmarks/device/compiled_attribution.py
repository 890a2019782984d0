"""Device: which part of the compiled backend's decode speed-up comes from what (issue 3).

Qwen2.5-3B architecture, random fp16 weights, seq 128 x batch 1 on CUDA; the captured decode step replayed
200 times per variant and timed with CUDA events (median per step):
graph (transformers' modules), graph + fused projections, compiled without fused projections, compiled.
    python3 benchmarks/device/compiled_attribution.py OUT.json
"""
import json
import statistics
import sys
import time

import torch

from latency_sensitivity import backends, runner
from latency_sensitivity.runner import CellSpec

spec = CellSpec(model="qwen2.5-3b", model_kind="architecture", model_location="config/models/qwen2.5-3b.json",
                dtype="fp16", backend="graph", device="cuda", attn_implementation="sdpa", seq_len=128, batch=1,
                gen_tokens=32, warmup=0, reps=1, seed=0, threads=1)
model = runner.build_model(spec)
prompt = runner.make_prompt(spec, model.config.vocab_size)
variants = {
    "graph": ("graph", {}),
    "graph + fused projections": ("graph", {"fuse_projections": True}),
    "compiled, projections unfused": ("compiled", {"fuse_projections": False}),
    "compiled": ("compiled", {}),
}
out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "variants": {}}
for label, (name, options) in variants.items():
    with torch.inference_mode():
        b = backends.make(name, model, prompt, 32, runner.Clock(True), **options)
        b.prefill(prompt)  # reset, then fill the static cache
        times = []
        for _ in range(200):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(); b.graph.replay(); end.record(); end.synchronize()
            times.append(start.elapsed_time(end))
            if len(times) % 30 == 0:  # stay inside the static cache: refill it
                b.prefill(prompt)
        info = b.info()
        b.close()
    out["variants"][label] = {"step_ms_p50": statistics.median(times), "step_ms_min": min(times),
                              "setup_s": b.setup_s, "compile_s": info["compile_s"],
                              "fused_projections": info["fused_projections"]}
    print(label, out["variants"][label], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
