"""Does a cell's value depend on where in device memory its model and cache land?

A fresh process allocates the same tensors in the same order every time, so a cell measured in its own process
always lands at the same place, and replicates in fresh processes never see another placement. This study
measures one cell (graph backend by default, seq 128 x batch 1, the Qwen2.5-3B architecture with random fp16
weights, gen 32, warmup 3, reps 7, as benchmarks/replicates/) in a fresh process per padding: the process first
allocates `pad` MiB on the device and holds it, so everything after lands elsewhere; nothing else differs.

    python3 benchmarks/sweep_cost/placement.py [--backend graph] [--batch 1] [--pads 0,1,2,64,512,2048] [--processes 1]

Prints a markdown table: per padding, decode ms/step (p50), the decode kernel time per step and prefill p50.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from study_cell import cell_spec



def child(pad_mb: int, backend: str, batch: int) -> None:
    from latency_sensitivity.measure import compile_cache

    compile_cache.configure(None, "cuda")
    import torch

    from latency_sensitivity.measure import cell

    held = [torch.empty(pad_mb * 2**20, dtype=torch.uint8, device="cuda")] if pad_mb else []
    spec = cell_spec(backend, batch)
    result = cell.measure(spec)
    del held
    m = result["metrics"]
    print(json.dumps({"pad_mb": pad_mb, "status": result["status"], "decode_ms": m.get("decode_p50_ms_per_tok"),
                      "decode_kernel_ms": m.get("decode_kernel_ms_per_step"), "prefill_ms": m.get("prefill_p50_ms")}),
          flush=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="graph", choices=["eager", "graph", "compiled"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--pads", default="0,1,2,64,512,2048", help="MiB held on the device before the cell, one process each")
    p.add_argument("--processes", type=int, default=1, help="fresh processes per padding")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        child(a.child, a.backend, a.batch)
        return 0
    rows, rc = [], 0
    for k in range(a.processes):
        for pad in (int(x) for x in a.pads.split(",")):
            proc = subprocess.run([sys.executable, __file__, "--child", str(pad), "--backend", a.backend,
                                   "--batch", str(a.batch)], capture_output=True, text=True)
            cells = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode or len(cells) != 1 or cells[0]["status"] != "ok":
                print(f"pad {pad} MiB (process {k + 1}) failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                rc = 1
                continue
            rows.append(cells[0] | {"process": k + 1})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| pad MiB | process | decode ms/step | decode kernel ms/step | prefill ms |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['pad_mb']} | {r['process']} | {r['decode_ms']:.3f} | {r['decode_kernel_ms']:.4f} | {r['prefill_ms']:.3f} |")
    if rows:
        decode = [r["decode_ms"] for r in rows]
        print(f"\ndecode ms/step over all: {min(decode):.3f}-{max(decode):.3f} "
              f"({(max(decode) / min(decode) - 1) * 100:.2f}% spread, median {statistics.median(decode):.3f})")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
