"""Does the NVML sampler thread disturb eager decode timings? (a benchmark, run on a GPU)

Builds the model once, then interleaves rounds of requests with no sampler, a 20 ms sampler (the runner's
default) and a 200 ms sampler, so that slow drift of the host shows up in every variant alike.

    python3 benchmarks/decode_jitter/decode_jitter.py --out jitter.json [--model-location config/models/qwen2.5-3b.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from latency_sensitivity.engine import base
from latency_sensitivity.engine import eager as eager_backend
from latency_sensitivity.measure import model as cell_model
from latency_sensitivity.measure.telemetry import GpuSampler# noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-location", default="config/models/qwen2.5-3b.json")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    spec = cell_model.CellSpec(model="bench", model_kind="architecture", model_location=a.model_location, dtype="fp16",
                           backend="eager", device="cuda", attn_implementation="sdpa", seq_len=a.seq, batch=a.batch,
                           gen_tokens=a.gen_tokens, warmup=0, reps=0, seed=0, threads=1)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = cell_model.build_model(spec)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    prompt = cell_model.make_prompt(spec, model.config.vocab_size)
    clock = base.Clock(True)
    variants = {"no_sampler": None, "sampler_20ms": 0.02, "sampler_200ms": 0.2}
    steps: dict[str, list[float]] = {k: [] for k in variants}
    rep_medians: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        for _ in range(3):
            eager_backend.one_request(model, prompt, a.gen_tokens, clock, "warmup")
        for _ in range(a.rounds):
            for name, interval in variants.items():
                sampler = GpuSampler(0, interval_s=interval) if interval else None
                if sampler:
                    sampler.start()
                for _ in range(a.requests):
                    _, _, s, _ = eager_backend.one_request(model, prompt, a.gen_tokens, clock, name)
                    steps[name].extend(s)
                    rep_medians[name].append(float(np.median(s)))
                if sampler:
                    sampler.stop()
    table = {}
    for name, s in steps.items():
        arr = np.asarray(s)
        table[name] = {"n": int(arr.size), "p10": float(np.percentile(arr, 10)), "p50": float(np.median(arr)),
                       "p90": float(np.percentile(arr, 90)), "max": float(arr.max()),
                       "rep_medians": [round(x, 2) for x in rep_medians[name]]}
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "build_s": build_s,
              "seq": a.seq, "batch": a.batch, "gen_tokens": a.gen_tokens, "variants": table}
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"build {build_s:.1f} s on {result['device']}")
    print(f"{'variant':<15}{'n':>5}{'p10':>8}{'p50':>8}{'p90':>8}{'max':>8}  per-request medians (ms)")
    for name, t in table.items():
        print(f"{name:<15}{t['n']:>5}{t['p10']:>8.2f}{t['p50']:>8.2f}{t['p90']:>8.2f}{t['max']:>8.1f}  {t['rep_medians']}")


if __name__ == "__main__":
    main()
