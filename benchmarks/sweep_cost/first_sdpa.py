"""Which attention kernel a process's first calls are slow in: processes started one after another, each running
the worker's first use (measure/worker.first_use: the model built, one small request on the backend) twice, with
torch's SDPA allowed every kernel (`default`) or all but one (`no-cudnn`, `no-flash`, `no-efficient`), and timing
each. Prints per process the kernel torch picks for the model's prefill and decode attention shapes, and the two
first-use times.

    python3 benchmarks/sweep_cost/first_sdpa.py [--model qwen2.5-3b] [--backend graph] [--dtype fp16]
        [--modes default,default,no-cudnn,default]

Run on a CUDA machine from the repository root with the package importable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

EXCLUDED = {"default": None, "no-cudnn": "CUDNN_ATTENTION", "no-flash": "FLASH_ATTENTION",
            "no-efficient": "EFFICIENT_ATTENTION"}


def one(mode: str, model: str, backend: str, dtype: str) -> dict:
    """In this process: the first use twice, SDPA limited as `mode` says."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import latency_sensitivity
    from latency_sensitivity.measure import worker

    allowed = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
               SDPBackend.MATH]
    if EXCLUDED[mode]:
        allowed.remove(getattr(SDPBackend, EXCLUDED[mode]))
    torch.cuda.init()
    torch.empty(1, device="cuda")
    path = Path(latency_sensitivity.__file__).parent / "data" / "models" / f"{model}.json"
    arch = json.loads(path.read_text())
    heads, kv_heads = arch["num_attention_heads"], arch["num_key_value_heads"]
    head_dim = arch.get("head_dim") or arch["hidden_size"] // heads
    # the kernels torch would pick at seq 128: the prefill (the query heads on the KV heads, causal) and the
    # packed decode (each KV head's query heads as the rows of one query; engine/surgery.packed_sdpa)
    h = torch.float16 if dtype == "fp16" else torch.bfloat16 if dtype == "bf16" else torch.float32
    q = torch.randn(1, heads, 128, head_dim, device="cuda", dtype=h)
    k = torch.randn(1, kv_heads, 128, head_dim, device="cuda", dtype=h)
    packed = q[:, :kv_heads, : heads // kv_heads]
    picks = {}
    with sdpa_kernel(allowed):
        for name, (qq, kk, causal, gqa) in {"prefill": (q, k, True, True),
                                            "decode": (packed, k, False, False)}.items():
            try:
                choice = torch._fused_sdp_choice(qq, kk, kk, None, 0.0, causal, enable_gqa=gqa)
                picks[name] = SDPBackend(choice).name
            except Exception as exc:  # noqa: BLE001
                picks[name] = f"? {type(exc).__name__}"
    fields = dict(model=model, model_kind="architecture", model_location=str(path), dtype=dtype, backend=backend,
                  device="cuda", attn_implementation="sdpa", threads=1)
    # the model's transformers code imported first, as a worker's start-up does before its first use
    from types import SimpleNamespace

    from latency_sensitivity.measure.model import model_config

    model_config(SimpleNamespace(**fields))
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        with sdpa_kernel(allowed):
            error = worker.first_use(fields)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if error:
            return {"mode": mode, "error": error}
    return {"mode": mode, "picks": picks, "first_use_s": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-3b")
    ap.add_argument("--backend", default="graph")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--modes", default="default,default,no-cudnn,default")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.model, a.backend, a.dtype)))
        return
    print("| process | SDPA allowed | prefill kernel | decode kernel | first use s | again s | process s |")
    print("|---:|---|---|---|---:|---:|---:|")
    for i, mode in enumerate(a.modes.split(","), 1):
        if mode not in EXCLUDED:
            raise SystemExit(f"unknown mode {mode}; one of {', '.join(EXCLUDED)}")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--one", mode, "--model", a.model, "--backend", a.backend,
                               "--dtype", a.dtype], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        try:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            print(f"| {i} | {mode} | failed: {proc.stderr.strip()[-300:]} |", flush=True)
            continue
        if "error" in r:
            print(f"| {i} | {mode} | error: {r['error'][:200]} |", flush=True)
            continue
        print(f"| {i} | {mode} | {r['picks']['prefill']} | {r['picks']['decode']} | {r['first_use_s'][0]:.2f} | "
              f"{r['first_use_s'][1]:.2f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
