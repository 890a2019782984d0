"""Which part of the compiled backend's decode speed-up comes from what (run on a CUDA GPU).

Qwen2.5-3B architecture, random fp16 weights, seq 128 x batch 1 on CUDA. Per variant: the captured decode
step replayed 200 times and timed with CUDA events (median per step); its kernels from 20 replays under
torch.profiler (count and time per step, GEMM / attention / other); the eager prefill (median of 10); the
setup and compile times; the greedy tokens' agreement with eager's over 32 steps; with eager's tokens forced,
the largest logit difference from an fp32 copy of the model, against eager fp16's own (logits_max_abs_err);
the tilings the autotuned Triton kernels chose.
    [GC_FREEZE=1] python3 benchmarks/decode_target/compiled_attribution.py OUT.json [VARIANT ...]
Run from the repository root; OUT.json is written after each variant.
GC_FREEZE=1: as the runner does, freeze the garbage collector's heap after each backend's setup.
"""
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import torch

from latency_sensitivity.engine import eager as eager_backend
from latency_sensitivity.engine import registry
from latency_sensitivity.engine import kernels
from latency_sensitivity.engine import base
from latency_sensitivity.measure import model as cell_model
from latency_sensitivity.measure.model import CellSpec

VARIANTS = {
    "graph": ("graph", {}),
    "graph + fused projections": ("graph", {"fuse_projections": True}),
    "compiled, projections unfused": ("compiled", {"fuse_projections": False}),
    # the default at batch 1 on CUDA: decoder layers rewritten (fused_decode), products as the Triton GEMV, the
    # step not compiled (the kernels launched by Triton, with programmatic dependent launch on Hopper)
    "compiled": ("compiled", {}),
    # the same step compiled by torch.compile (inductor traces the Triton kernels and launches them itself)
    "compiled, torch.compile": ("compiled", {"compile": True}),
    # the rewritten layers without torch.compile: every kernel of a layer is Triton's own launch, with
    # programmatic dependent launch on Hopper (each kernel loads its first weights while the previous finishes)
    "graph, layers rewritten": ("graph", {"fuse_projections": True, "gemv": True, "fuse_layers": True}),
    "graph, layers rewritten, no PDL": ("graph", {"fuse_projections": True, "gemv": True, "fuse_layers": True,
                                                  "pdl": False}),
    # the layers as transformers has them, the products still through the GEMV kernel (the default until the
    # layers were rewritten)
    "compiled, layers unfused": ("compiled", {"fuse_layers": False}),
    "compiled, cuBLAS": ("compiled", {"fuse_layers": False, "gemv": False}),
    "compiled, coordinate descent": ("compiled", {"compile_options": {"coordinate_descent_tuning": True}}),
    "compiled, max-autotune": ("compiled", {"compile_options": {"max_autotune": True}}),
    # the graph backend again, in a process where a compiled backend has run (its prefill is eager, like graph's)
    "graph, after compiled": ("graph", {}),
}
GEMM = ("gemm", "gemv", "qkv_rope", "cutlass", "xmma", "nvjet", "triton_tem", "splitk", "cublas")
ATTENTION = ("fmha", "flash", "sdpa", "attention")


def kind(name: str) -> str:
    low = name.lower()
    if low.startswith(("triton_poi", "triton_red", "triton_per")):  # inductor's fused elementwise/reductions
        return "other"
    if any(t in low for t in ATTENTION):
        return "attention"
    return "gemm" if any(t in low for t in GEMM) else "other"


def kernel_breakdown(replay, steps=20):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            replay()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        events = [e for e in json.load(open(path))["traceEvents"] if e.get("cat") == "kernel"]
    per_kind, per_name = {}, {}
    for e in events:
        k = kind(e["name"])
        c, t = per_kind.get(k, (0, 0.0))
        per_kind[k] = (c + 1, t + e["dur"])
        c, t = per_name.get(e["name"], (0, 0.0))
        per_name[e["name"]] = (c + 1, t + e["dur"])
    top = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:15]
    # the GEMV kernels in step order: per step 4 per layer (q/k/v, o, gate/up, down) and the LM head last
    gemvs = [e for e in sorted(events, key=lambda e: e["ts"]) if e["name"] in ("gemv_kernel", "qkv_rope_kernel")]
    per_step = len(gemvs) // steps
    by_role = {}
    if per_step and per_step % 4 == 1 and len(gemvs) == per_step * steps:
        roles = ("qkv", "o", "gate_up", "down") * (per_step // 4) + ("lm_head",)
        for i, e in enumerate(gemvs):
            by_role[roles[i % per_step]] = by_role.get(roles[i % per_step], 0.0) + e["dur"] / steps
    return {"gemv_us_per_step_by_role": by_role,"kernels_per_step": len(events) / steps,
            "kernel_us_per_step": sum(e["dur"] for e in events) / steps,
            "by_kind": {k: {"kernels": c / steps, "us": t / steps} for k, (c, t) in per_kind.items()},
            "top": [{"name": n[:120], "kind": kind(n), "per_step": c / steps, "us_per_step": t / steps}
                    for n, (c, t) in top]}


# The measured cell: Qwen2.5-3B architecture, random fp16 weights, seq 128 x batch 1 on CUDA.
SPEC = CellSpec(model="qwen2.5-3b", model_kind="architecture", model_location="config/models/qwen2.5-3b.json",
                dtype="fp16", backend="graph", device="cuda", attn_implementation="sdpa", seq_len=128, batch=1,
                gen_tokens=32, warmup=0, reps=1, seed=0, threads=1)


def model_and_prompt(spec=SPEC):
    model = cell_model.build_model(spec)
    return model, cell_model.make_prompt(spec, model.config.vocab_size)


def main():
    model, prompt = model_and_prompt()
    with torch.inference_mode():
        eager = registry.make("eager", model, prompt, 32, base.Clock(True))
        eager_tokens, eager_logits = eager.generate(prompt, 32)
        eager.close()
        reference = copy.deepcopy(model).float()  # the same weights in fp32: what each fp16 path deviates from
        _, fp32_logits = eager_backend.EagerBackend(reference).generate(prompt, 32, forced=eager_tokens)
        del reference
        torch.cuda.empty_cache()
    chosen = sys.argv[2:] or list(VARIANTS)
    freeze = os.environ.get("GC_FREEZE") == "1"
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "gc_freeze": freeze,
           "eager_logits_max_abs_err": float((eager_logits - fp32_logits).abs().max()), "variants": {}}
    for label in chosen:
        name, options = VARIANTS[label]
        row = {"backend": name, "options": options}
        try:
            with torch.inference_mode():
                t0 = time.perf_counter()
                b = registry.make(name, model, prompt, 32, base.Clock(True), **options)
                row["setup_s"] = time.perf_counter() - t0
                if freeze:
                    gc.collect()
                    gc.freeze()
                tokens, _ = b.generate(prompt, 32)
                row["tokens_equal_eager"] = int((tokens == eager_tokens).sum()), tokens.numel()
                _, logits = b.generate(prompt, 32, forced=eager_tokens)
                row["logits_max_abs_err"] = float((logits - fp32_logits).abs().max())
                prefill = []
                for _ in range(10):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record(); b.prefill(prompt); e.record(); e.synchronize()
                    prefill.append(s.elapsed_time(e))
                row["prefill_ms_p50"] = statistics.median(prefill)
                row["prefill_kernels"] = kernel_breakdown(lambda: b.prefill(prompt), steps=5)
                b.prefill(prompt)  # reset, then fill the static cache
                times = []
                for _ in range(200):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record(); b.graph.replay(); e.record(); e.synchronize()
                    times.append(s.elapsed_time(e))
                    if len(times) % 30 == 0:  # stay inside the static cache: refill it
                        b.prefill(prompt)
                b.prefill(prompt)
                row["kernels"] = kernel_breakdown(b.graph.replay)
                info = b.info()
                b.close()
                gc.unfreeze()
            row.update(step_ms_p50=statistics.median(times), step_ms_min=min(times), compile_s=info["compile_s"],
                       compile_stats=info["compile_stats"], fused_projections=info["fused_projections"],
                       fused_layers=info["fused_layers"], pdl=info["pdl"], decode_attention=info["decode_attention"])
        except Exception as exc:  # record and go on to the next variant
            row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            gc.unfreeze()
            torch._dynamo.reset()
        out["variants"][label] = row
        out["autotuned"] = {name: {str(key): str(config) for key, config in tuner.cache.items()}
                            for name, tuner in (("gemv", kernels.gemv_kernel_autotuned),
                                                ("qkv_rope", kernels.qkv_rope_kernel_autotuned))}
        print(label, {k: v for k, v in row.items() if k not in ("kernels", "prefill_kernels")},
              {k: v for k, v in row.get("kernels", {}).items() if k != "top"}, flush=True)
        json.dump(out, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
