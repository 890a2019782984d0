"""Whether a measuring process forked from one that has imported torch and transformers (and has not touched
the GPU) starts sooner than a fresh one and measures what a fresh one measures.

A shared worker pays its imports (torch, transformers, the model's code) at every start, once per model, dtype,
backend and replicate. A process that has paid them once could fork each worker instead. This study alternates
the two ways for the study cell (the Qwen2.5-3B architecture with random fp16 weights, seq 128, gen 32, warmup
3, reps 7, as benchmarks/replicates/): a fresh Python process, and a child forked from this one after its
imports. Each process then pays a worker's first use of the GPU stack (`worker.first_use`) and measures the
cell with `cell.measure`, as a worker's first cell. Printed per process: its wall time until its first use was
done (for a fresh one: the interpreter, the imports and the first use), the cell's time, and its prefill and
decode medians.

    python3 benchmarks/sweep_cost/forked_start.py [--backend graph] [--batch 1] [--pairs 3] [--json FILE]

`--device cpu --architecture FILE --dtype fp32` runs it on the CPU (a small architecture JSON: a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_cell import ARCHITECTURE, span  # noqa: E402

FIELDS = ("model", "model_kind", "model_location", "dtype", "backend", "device", "attn_implementation", "threads")


def spec_of(a):
    from latency_sensitivity.measure.model import CellSpec

    return CellSpec(model="study", model_kind="architecture", model_location=str(a.architecture), dtype=a.dtype,
                    backend=a.backend, device=a.device, attn_implementation="sdpa", seq_len=a.seq, batch=a.batch,
                    gen_tokens=32, warmup=3, reps=7, seed=0, threads=1)


def first_use_and_cell(a, started: float) -> dict:
    """A worker's first use, then the cell, in this process; `started`: when the process's start began (by
    time.time, which a fresh process and its parent share)."""
    from latency_sensitivity.measure import cell, worker

    spec = spec_of(a)
    error = worker.first_use({k: getattr(spec, k) for k in FIELDS})
    ready = time.time() - started
    t0 = time.perf_counter()
    result = cell.measure(spec)
    m = result.get("metrics", {})
    return {"ready_s": ready, "first_use_error": error, "cell_s": time.perf_counter() - t0,
            "status": result.get("status"), "error": result.get("error"),
            "decode_ms": m.get("decode_p50_ms_per_tok"), "prefill_ms": m.get("prefill_p50_ms"),
            "setup_s": m.get("backend_setup_s"), "pid": os.getpid()}


def preimport(a) -> float:
    """This process's imports, as a worker's start-up makes them (the model's code too); seconds."""
    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from latency_sensitivity.measure import cell, worker  # noqa: F401
    from latency_sensitivity.measure.model import model_config

    model_config(spec_of(a))
    return time.perf_counter() - t0


def fresh(a, argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        started = time.time()
        done = subprocess.run([sys.executable, __file__, *argv, "--child", str(out), "--started", repr(started)],
                              capture_output=True, text=True)
        wall = time.time() - started
        if done.returncode != 0:
            return {"error": done.stderr[-2000:], "wall_s": wall}
        row = json.loads(out.read_text())
    row["wall_s"] = wall
    return row


def forked(a) -> dict:
    read_end, write_end = os.pipe()
    started = time.time()
    pid = os.fork()
    if pid == 0:  # the child: measure, hand the row back, and leave without the parent's exit handlers
        os.close(read_end)
        try:
            row = first_use_and_cell(a, started)
        except BaseException as exc:  # noqa: BLE001 - the parent records it
            row = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_end, "w") as fh:
            fh.write(json.dumps(row))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        text = fh.read()
    os.waitpid(pid, 0)
    row = json.loads(text) if text else {"error": "the child wrote nothing"}
    row["wall_s"] = time.time() - started
    return row


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="graph", choices=["eager", "graph", "compiled"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--architecture", type=Path, default=ARCHITECTURE)
    p.add_argument("--json", type=Path, help="write every process's row here")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--started", type=float, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    from latency_sensitivity.measure import compile_cache

    compile_cache.configure(None, a.device)  # torch's ptxas for Triton, before torch is imported
    if a.child:  # a fresh process: its own imports, then as a forked one
        preimport(a)
        a.child.write_text(json.dumps(first_use_and_cell(a, a.started)))
        return 0

    passed = ["--backend", a.backend, "--batch", str(a.batch), "--seq", str(a.seq), "--device", a.device,
              "--dtype", a.dtype, "--architecture", str(a.architecture)]
    parent_import_s = preimport(a)
    import torch

    if threading.active_count() != 1 or (a.device == "cuda" and torch.cuda.is_initialized()):
        print("this process has threads or a CUDA context after its imports: forking it is not safe", file=sys.stderr)
        return 1
    print(f"imports in this process: {parent_import_s:.1f} s\n")
    rows = []
    for pair in range(1, a.pairs + 1):
        for way in ("fresh", "forked"):
            row = fresh(a, passed) if way == "fresh" else forked(a)
            row.update(way=way, pair=pair)
            rows.append(row)
            print(f"pair {pair} {way}: " + (f"error {row['error']}" if row.get("error") else
                  f"ready {row['ready_s']:.2f} s, cell {row['cell_s']:.2f} s, setup {row['setup_s']:.2f} s, "
                  f"prefill {row['prefill_ms']:.3f} ms, decode {row['decode_ms']:.4f} ms/step"), flush=True)
    print(f"\n| way | processes | ready s | cell s | backend setup s | prefill p50 ms | decode p50 ms/step |\n"
          f"|---|---:|---|---|---|---|---|")
    for way in ("fresh", "forked"):
        sel = [r for r in rows if r["way"] == way and not r.get("error")]
        print(f"| {way} | {len(sel)} | {span([r['ready_s'] for r in sel], '{:.2f}')} | "
              f"{span([r['cell_s'] for r in sel], '{:.2f}')} | {span([r['setup_s'] for r in sel], '{:.2f}')} | "
              f"{span([r['prefill_ms'] for r in sel], '{:.3f}')} | {span([r['decode_ms'] for r in sel], '{:.4f}')} |")
    if a.json:
        a.json.write_text(json.dumps({"parent_import_s": parent_import_s, "rows": rows}, indent=1))
    return 0 if all(not r.get("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
