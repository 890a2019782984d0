"""What starting and stopping a kernel-time profiler session costs, by what the process holds at the time.

The kernel-time profile's own seconds (`kernel_time_s`) are most of what it costs a cell, and starting its
sessions took 0.09-0.11 s with the graph backend against 0.02 s with eager (NOTES.md, "The kernel-time pass").
This study builds the study cell's model once (benchmarks/replicates/'s Qwen2.5-3B architecture, random fp16
weights, seq 128) and times `probes.KernelTimer` sessions around one small kernel, `--rounds` times in each state:

- ``eager``: the eager backend, after a request;
- ``graph captured``: the graph backend set up (its step captured as a CUDA graph), after a request;
- ``graph dropped``: the same backend with its CUDA graph let go (collected, the device synchronized);
- ``graph captured again``: a new graph backend, captured.

Each profiler session: start (CUPTI attached), the kernel, stop (CUPTI detached, as when the runner's profiled
request ends), then reading its device events; a session that recorded none is counted apart (the runner's timer
fails it).

    python3 benchmarks/sweep_cost/profiler_start.py [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from study_cell import build_backend, cell_spec


def sessions(rounds: int) -> list[dict]:
    """`rounds` profiler sessions around one small kernel: each one's start, stop (with the read) and kernel ms."""
    import torch

    from latency_sensitivity.measure.probes import KernelTimer

    x = torch.ones(1024, 1024, device="cuda")
    out = []
    for _ in range(rounds):
        timer = KernelTimer()
        t0 = time.perf_counter()
        timer.start()
        t1 = time.perf_counter()
        x.mul_(1.0)
        try:
            kernel_ms = timer.stop()
        except RuntimeError:  # the session recorded no device event (probes.KernelTimer.stop)
            kernel_ms = None
        t2 = time.perf_counter()
        out.append({"start_s": t1 - t0, "stop_s": t2 - t1, "kernel_ms": kernel_ms})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch

    from latency_sensitivity.engine import registry
    from latency_sensitivity.engine.base import Clock
    from latency_sensitivity.measure import compile_cache

    compile_cache.configure(None, "cuda")
    clock = Clock(True)
    rows = []

    def state(name, backend):
        torch.cuda.synchronize()
        for r in sessions(args.rounds):
            rows.append({"state": name, **r})

    with torch.inference_mode():
        model, prompt, eager = build_backend(cell_spec("eager", args.batch, args.seq), clock)
        eager.request(prompt, 32, clock, "warm")
        state("eager", eager)
        eager.close()
        graph = registry.make("graph", model, prompt, 32, clock)
        graph.request(prompt, 32, clock, "warm")
        state("graph captured", graph)
        graph.graph = None
        gc.collect()
        torch.cuda.synchronize()
        state("graph dropped", graph)
        graph.close()
        graph = registry.make("graph", model, prompt, 32, clock)
        graph.request(prompt, 32, clock, "warm")
        state("graph captured again", graph)
        graph.close()

    print(f"\nseq {args.seq} x batch {args.batch}, {args.rounds} sessions each (median, min-max)\n")
    print("| state | start s | stop and read s | kernel ms | sessions that recorded no device event |\n"
          "|---|---|---|---|---:|")
    for name in dict.fromkeys(r["state"] for r in rows):
        sel = [r for r in rows if r["state"] == name]

        def col(key, fmt):
            v = [r[key] for r in sel if r[key] is not None]
            return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})" if v else "-"

        empty = sum(r["kernel_ms"] is None for r in sel)
        print(f"| {name} | {col('start_s', '.3f')} | {col('stop_s', '.3f')} | {col('kernel_ms', '.4f')} | {empty} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
