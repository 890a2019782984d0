"""What a process pays the first time it uses each part of the GPU stack, against the second time, and a cell's
parts when it is the process's first cell against its second.

A shared worker's first cell set up slower than its later ones (NOTES.md, "The graph sweep again"); this says
which first use that is. In a fresh process, each step runs twice, timed to a device synchronize: the CUDA
context, a small fp16 matmul (cuBLAS), a matmul of the model's decode shape (cuBLASLt), causal SDPA at the
prefill's shape, a CUDA graph capture and replay, the model's transformers code; then the study cell
(study_cell.py) measured twice with `cell.measure`, as a worker measures its first and second cell. Run it
twice on a fresh machine: the first run also pays what the machine pays once (files read from disk for the
first time), the second only what every process pays.

    python3 benchmarks/sweep_cost/first_use.py [--backend graph] [--batch 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from study_cell import cell_spec

CELL_PARTS = ("model_build_s", "backend_setup_s", "warmup_s", "measured_s", "kernel_time_s", "tokenization_s")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="graph", choices=["eager", "graph", "compiled"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    rows: list[dict] = []

    def timed(name, fn, sync=None):
        for attempt in (1, 2):
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            rows.append({"step": name, "attempt": attempt, "s": time.perf_counter() - t0})

    t0 = time.perf_counter()
    import torch

    rows.append({"step": "import torch", "attempt": 1, "s": time.perf_counter() - t0})
    from latency_sensitivity.measure import compile_cache

    compile_cache.configure(None, "cuda")  # torch's ptxas, as a measuring process chooses it
    sync = torch.cuda.synchronize
    timed("CUDA context", lambda: (torch.cuda.init(), torch.empty(1, device="cuda")), sync)
    small = torch.randn(64, 64, dtype=torch.float16, device="cuda")
    timed("fp16 matmul 64x64 (cuBLAS)", lambda: small @ small, sync)
    x = torch.randn(1, 2048, dtype=torch.float16, device="cuda")
    w = torch.randn(11008, 2048, dtype=torch.float16, device="cuda")
    timed("fp16 linear 1x2048 by 2048x11008", lambda: torch.nn.functional.linear(x, w), sync)
    q = torch.randn(1, 16, 128, 128, dtype=torch.float16, device="cuda")
    timed("causal SDPA 16 heads x 128 x 128", lambda: torch.nn.functional.scaled_dot_product_attention(
        q, q, q, is_causal=True), sync)

    def capture():
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            small @ small
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            small @ small
        graph.replay()

    timed("CUDA graph capture and replay", capture, sync)
    t0 = time.perf_counter()
    import transformers  # noqa: F401

    from latency_sensitivity.measure import cell
    from latency_sensitivity.measure.model import model_config

    rows.append({"step": "import transformers and the runner", "attempt": 1, "s": time.perf_counter() - t0})
    spec = cell_spec(a.backend, a.batch)
    timed("model code (model_config)", lambda: model_config(spec))
    for attempt in (1, 2):
        t0 = time.perf_counter()
        result = cell.measure(spec)
        cell_s = time.perf_counter() - t0
        m = result["metrics"]
        row = {"step": f"cell: {a.backend} seq 128 x batch {a.batch}", "attempt": attempt, "s": cell_s,
               "status": result["status"]}
        row.update({k: m.get(k) for k in CELL_PARTS})
        row["decode_p50_ms_per_tok"] = m.get("decode_p50_ms_per_tok")
        rows.append(row)
        torch.cuda.empty_cache()

    print("| step | first s | second s |\n|---|---:|---:|")
    for step in dict.fromkeys(r["step"] for r in rows):
        times = {r["attempt"]: r["s"] for r in rows if r["step"] == step}
        second = f"{times[2]:.3f}" if 2 in times else "-"
        print(f"| {step} | {times[1]:.3f} | {second} |")
    print("\n| cell | " + " | ".join(CELL_PARTS) + " | decode ms/step |\n|---|" + "---:|" * (len(CELL_PARTS) + 1))
    for r in rows:
        if r["step"].startswith("cell"):
            values = [r.get(k) for k in CELL_PARTS] + [r.get("decode_p50_ms_per_tok")]
            print(f"| {r['attempt']} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"backend": a.backend, "batch": a.batch, "torch": torch.__version__,
                                     "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
