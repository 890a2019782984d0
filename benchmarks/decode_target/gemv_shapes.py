"""One-row products (a batch-1 decode step's GEMMs) of the Qwen2.5-3B architecture, fp16, three ways:
cuBLAS (torch's default), cuBLASLt, and the Triton gemv kernel of latency_sensitivity.engine.kernels (run on a CUDA GPU).

Each shape is timed inside a CUDA graph of back-to-back calls cycling through enough copies of the weight
(>= 256 MB) that none is served from the 50 MB L2; per call: median over 20 replays, in us, and the weight
bytes over that time in GB/s. The step's GEMM time adds the shapes up as one step runs them (36 layers of
qkv, o, gate_up, down; one lm_head).
    python3 benchmarks/decode_target/gemv_shapes.py OUT.json        (from the repository root)
"""
import json
import sys

import torch
from graph_timing import time_calls

from latency_sensitivity.engine import kernels

ARCH = json.load(open("config/models/qwen2.5-3b.json"))
HIDDEN, INTER, LAYERS, VOCAB = (ARCH[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "vocab_size"))
HEAD = HIDDEN // ARCH["num_attention_heads"]
Q, KV = HIDDEN, ARCH["num_key_value_heads"] * HEAD
SHAPES = {  # name: (N, K, bias, per step)
    "qkv": (Q + 2 * KV, HIDDEN, True, LAYERS),
    "o": (HIDDEN, Q, False, LAYERS),
    "gate_up": (2 * INTER, HIDDEN, False, LAYERS),
    "down": (HIDDEN, INTER, False, LAYERS),
    "lm_head": (VOCAB, HIDDEN, False, 1),
}
torch.manual_seed(0)
dev = "cuda"


def time_way(fn, weights, biases, x):
    return time_calls([lambda w=w, b=b: fn(x, w, b) for w, b in zip(weights, biases)])


out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shapes": {}, "step_us": {}}
ways = {"cublas": torch.nn.functional.linear, "cublaslt": torch.nn.functional.linear, "triton_gemv": kernels.gemv}
for name, (n, k, bias, per_step) in SHAPES.items():
    nbytes = n * k * 2
    copies = max(2, -(-256 * 2**20 // nbytes))
    weights = [torch.randn(n, k, device=dev, dtype=torch.float16) / k**0.5 for _ in range(copies)]
    biases = [torch.randn(n, device=dev, dtype=torch.float16) if bias else None for _ in range(copies)]
    x = torch.randn(1, 1, k, device=dev, dtype=torch.float16)
    ref = torch.nn.functional.linear(x.float(), weights[0].float(), None if biases[0] is None else biases[0].float())
    row = {"N": n, "K": k, "MB": nbytes / 1e6, "per_step": per_step}
    for way, fn in ways.items():
        torch.backends.cuda.preferred_blas_library("cublaslt" if way == "cublaslt" else "cublas")
        err = (fn(x, weights[0], biases[0]).float() - ref).abs().max().item()
        us = time_way(fn, weights, biases, x)
        row[way] = {"us": us, "GB_s": nbytes / us / 1e3, "max_abs_err": err}
    torch.backends.cuda.preferred_blas_library("cublas")
    best = kernels.gemv_kernel_autotuned.cache
    row["triton_config"] = {str(key): str(cfg) for key, cfg in best.items() if k in key and n in key}
    out["shapes"][name] = row
    print(name, {w: (round(row[w]["us"], 1), round(row[w]["GB_s"])) for w in ways}, flush=True)
    del weights, biases
for way in ways:
    out["step_us"][way] = sum(r[way]["us"] * r["per_step"] for r in out["shapes"].values())
print("step GEMMs (us):", {w: round(v) for w, v in out["step_us"].items()})
json.dump(out, open(sys.argv[1], "w"), indent=1)
