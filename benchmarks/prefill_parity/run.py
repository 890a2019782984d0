"""Is a backend's prefill the same computation as eager's? Prefill time per backend, and the cause of a gap.

Qwen2.5-3B architecture, random fp16 weights, on a CUDA GPU; compute-bound prefills (seq 8192 x batch 1, seq 128
x batch 64) and a launch-bound one (seq 128 x batch 1). In one process, per cell: each backend's own prefill
(eager's dynamic cache; graph's and compiled's static cache, after their setup), and eager's modules with the
sibling projections fused (q/k/v and gate/up each one GEMM whose output is sliced per module, as the compiled
backend ran its prefill before it kept the fused GEMM to one-token steps). Timed with CUDA events around each
prefill: 3 untimed, then 15 timed; median and min-max.

    python3 benchmarks/prefill_parity/run.py [SEQxBATCH ...]        (from the repository root)
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
from pathlib import Path

import torch

from latency_sensitivity.engine import base, registry, surgery
from latency_sensitivity.measure.model import CellSpec, build_model, make_prompt

ARCH = str(Path(__file__).resolve().parents[2] / "config" / "models" / "qwen2.5-3b.json")
CELLS = [(8192, 1), (128, 64), (128, 1)]


def _fused_everywhere(self, x):
    """The fused forward as it was: every call, prefill included, takes its slice of the group's one GEMM."""
    start, stop = self.fused_span
    return self.fused_group.product(x)[..., start:stop]


def timed(fn, reps=15, warmup=3) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def main(argv: list[str]) -> int:
    cells = [tuple(int(v) for v in a.split("x")) for a in argv] or CELLS
    rows = []
    for seq, batch in cells:
        spec = CellSpec(model="qwen2.5-3b", model_kind="architecture", model_location=ARCH, dtype="fp16",
                        backend="eager", device="cuda", attn_implementation="sdpa", seq_len=seq, batch=batch,
                        gen_tokens=32, warmup=0, reps=1, seed=0, threads=1)
        model = build_model(spec)
        prompt = make_prompt(spec, model.config.vocab_size)
        with torch.inference_mode():
            for name in ("eager", "graph", "compiled"):
                backend = registry.make(name, model, prompt, 32, base.Clock(True))
                gc.collect()
                t = timed(lambda: backend.prefill(prompt))
                rows.append({"seq": seq, "batch": batch, "variant": f"{name} backend", "times_ms": t})
                backend.close()
            groups = surgery.fuse_sibling_projections(model)
            try:
                t = timed(lambda: model(input_ids=prompt, use_cache=True, logits_to_keep=1))
                rows.append({"seq": seq, "batch": batch, "variant": "eager modules, projections fused as now (a prefill runs each module's own GEMM)", "times_ms": t})
                with_old = {}
                for group in groups:
                    for m in group.modules:
                        with_old[m] = m.forward
                        m.forward = _fused_everywhere.__get__(m)
                t = timed(lambda: model(input_ids=prompt, use_cache=True, logits_to_keep=1))
                rows.append({"seq": seq, "batch": batch, "variant": "eager modules, each group's one GEMM sliced per module (as before)", "times_ms": t})
                for m, forward in with_old.items():
                    m.forward = forward
            finally:
                surgery.unfuse_sibling_projections(groups)
            t = timed(lambda: model(input_ids=prompt, use_cache=True, logits_to_keep=1))
            rows.append({"seq": seq, "batch": batch, "variant": "eager modules (again, last)", "times_ms": t})
        del model
        torch.cuda.empty_cache()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| seq | batch | variant | prefill ms, median (min-max) | vs eager backend |")
    print("|---:|---:|---|---|---:|")
    for row in rows:
        med = statistics.median(row["times_ms"])
        ref = next(statistics.median(r["times_ms"]) for r in rows
                   if (r["seq"], r["batch"], r["variant"]) == (row["seq"], row["batch"], "eager backend"))
        print(f"| {row['seq']} | {row['batch']} | {row['variant']} | {med:.2f} ({min(row['times_ms']):.2f}-"
              f"{max(row['times_ms']):.2f}) | {(med / ref - 1) * 100:+.1f}% |")
    Path("prefill_parity.json").write_text(json.dumps(rows, indent=1))  # every timing, beside the table
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
