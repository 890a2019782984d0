"""Does a cell measured after other cells in one process differ because of the profiler that ran before it?

Every cell times its kernels under torch.profiler (CUPTI): when this study was recorded, in a pass after its
measured reps; now in a warmup request where the cell has 3 or more. If CUPTI stays attached once that profiler
stops, the next cell's reps in the same process run with it. This study measures
seq 128 x batch 1, then batch 64, then batch 1 again in one process (the graph backend by default, the
Qwen2.5-3B architecture with random fp16 weights, gen 32, warmup 3, reps 7, as benchmarks/replicates/), in a
fresh process per mode:

- ``pass``: as the runner measures (the kernel time taken in each cell);
- ``no_pass``: kernel time not taken (no profiler in the process at all);
- ``teardown``: the pass, with ``TEARDOWN_CUPTI=1`` set at the process's start (kineto detaches CUPTI when a
  profiler stops).

    python3 benchmarks/sweep_cost/after_profiler.py [--backend graph] [--processes 1] [--sequence 1,64,1] [--modes pass,no_pass]

Prints a markdown table: decode ms/step per cell in order, and the last cell against the first. `--sequence
1,1,1,1` measures the same cell again and again, with nothing else between: whether a cell's value moves with
how long its process has been measuring, rather than with what it measured before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from study_cell import cell_spec

MODES = ("pass", "no_pass", "teardown")
SEQUENCE = (1, 64, 1)


def child(mode: str, backend: str, sequence: tuple[int, ...]) -> None:
    if mode == "teardown":
        os.environ["TEARDOWN_CUPTI"] = "1"
    from latency_sensitivity.measure import cell, compile_cache, probes

    compile_cache.configure(None, "cuda")
    if mode == "no_pass":
        probes.kernel_time_warmup_request = lambda warmup: None
        probes.gpu_busy = lambda *args, **kwargs: {"prefill_kernel_ms": 0.0, "decode_kernel_ms_per_step": 0.0}
    for batch in sequence:
        spec = cell_spec(backend, batch)
        result = cell.measure(spec)
        m = result["metrics"]
        print(json.dumps({"mode": mode, "batch": batch, "status": result["status"],
                          "decode_ms": m.get("decode_p50_ms_per_tok"), "prefill_ms": m.get("prefill_p50_ms"),
                          "decode_kernel_ms": m.get("decode_kernel_ms_per_step")}),
              flush=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="graph", choices=["eager", "graph", "compiled"])
    p.add_argument("--processes", type=int, default=1, help="fresh processes per mode")
    p.add_argument("--sequence", default=",".join(map(str, SEQUENCE)), help="batch sizes in order, one process")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sequence = tuple(int(b) for b in a.sequence.split(","))
    if a.child:
        child(a.child, a.backend, sequence)
        return 0
    rows, rc = [], 0
    for k in range(a.processes):
        for mode in a.modes.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", mode, "--backend", a.backend,
                                   "--sequence", a.sequence],
                                  capture_output=True, text=True)
            cells = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            if proc.returncode or len(cells) != len(sequence) or any(c["status"] != "ok" for c in cells):
                print(f"{mode} (process {k + 1}) failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                rc = 1
            rows.append((mode, k + 1, cells))
            for c in cells:
                print(json.dumps(c), file=sys.stderr)
    print("| mode | process | decode ms/step: " + ", ".join(f"batch {b}" for b in sequence)
          + " | last against the first |")
    print("|---|---:|---|---:|")
    for mode, k, cells in rows:
        values = [c["decode_ms"] for c in cells]
        shown = ", ".join("-" if v is None else f"{v:.3f}" for v in values)
        change = (f"{(values[-1] / values[0] - 1) * 100:+.2f}%" if len(values) == len(sequence) and None not in values
                  else "-")
        print(f"| {mode} | {k} | {shown} | {change} |")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
