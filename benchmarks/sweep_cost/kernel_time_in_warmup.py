"""Could the kernel-time pass ride on a warmup request instead of an extra request after the reps?

The pass (`probes.gpu_busy`) runs after the measured reps: an extra prefill and a request stopped after the timed
window, each under a profiler session. A warmup request does that GPU work anyway. This study builds each backend
once per cell (the Qwen2.5-3B architecture with random fp16 weights, seq 128, gen 32, warmup 3, reps 7, as
benchmarks/replicates/) and alternates two ways of running the cell, `--rounds` times each:

- ``plain``: 3 warmup requests, the 7 measured reps, then the pass as the runner runs it;
- ``profiled warmup``: the same, but warmup request 2 of 3 runs under a clock that profiles its prefill and its
  middle decode steps (the runner's window), leaving one plain warmup request before the reps.

It prints, per cell and way, the reps' decode and prefill medians (does a profiler in the warmup move the
measurement?), the kernel times from the warmup request and from the pass after the reps (do they agree?), and
the seconds of the warmup and of the pass (what would be saved).

    python3 benchmarks/sweep_cost/kernel_time_in_warmup.py [--backends graph,eager] [--batches 1,64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from study_cell import add_cell_arguments, each_cell, print_way_table

WAYS = ("plain", "profiled warmup")


class MarksClock:
    """The runner's clock that also runs a KernelTimer from mark `start` to mark `stop` of each window."""

    def __init__(self, clock, windows):
        self.clock, self.windows, self.marks = clock, windows, 0
        self.kernel_ms = {}

    def mark(self):
        for start, _stop, timer in self.windows.values():
            if self.marks == start:
                timer.start()
        ev = self.clock.mark()
        for name, (_start, stop, timer) in self.windows.items():
            if self.marks == stop:
                self.kernel_ms[name] = timer.stop()
        self.marks += 1
        return ev

    def elapsed_ms(self, a, b):
        return self.clock.elapsed_ms(a, b)

    def sync(self):
        self.clock.sync()


def run_cell(backend, prompt, spec, clock, way: str) -> dict:
    import torch

    from latency_sensitivity.measure import probes

    row: dict = {}
    first, steps = probes.kernel_time_window(spec.gen_tokens)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for i in range(spec.warmup):
            if way == "profiled warmup" and i == spec.warmup - 2:
                window = MarksClock(clock, {"prefill": (0, 1, probes.KernelTimer()),
                                            "decode": (2 + 2 * first, 3 + 2 * (first + steps - 1), probes.KernelTimer())})
                backend.request(prompt, spec.gen_tokens, window, f"warmup{i}")
                row["warmup_prefill_kernel_ms"] = window.kernel_ms["prefill"]
                row["warmup_decode_kernel_ms_per_step"] = window.kernel_ms["decode"] / steps
            else:
                backend.request(prompt, spec.gen_tokens, clock, f"warmup{i}")
        row["warmup_s"] = time.perf_counter() - t0
        prefill, decode = [], []
        for i in range(spec.reps):
            p, _t, step_ms, _e = backend.request(prompt, spec.gen_tokens, clock, f"rep{i}")
            prefill.append(p)
            decode.append(statistics.median(step_ms))
        row["prefill_p50_ms"] = statistics.median(prefill)
        row["decode_p50_ms_per_tok"] = statistics.median(decode)
        t0 = time.perf_counter()
        k = probes.gpu_busy(backend, prompt, spec.gen_tokens, clock)
        row["pass_s"] = time.perf_counter() - t0
        row["after_prefill_kernel_ms"] = k["prefill_kernel_ms"]
        row["after_decode_kernel_ms_per_step"] = k["decode_kernel_ms_per_step"]
    return row


def print_table(rows: list[dict], seq: int, rounds: int) -> None:
    """The markdown table of the rows, as recorded under results/."""
    print(f"seq {seq}, median (min-max) of {rounds} rounds\n")
    print_way_table(rows, WAYS, [
        ("decode ms/step (reps)", lambda sel, col: col("decode_p50_ms_per_tok", "{:.4f}")),
        ("prefill ms (reps)", lambda sel, col: col("prefill_p50_ms", "{:.3f}")),
        ("decode kernel ms/step: warmup / after reps", lambda sel, col: f"{col('warmup_decode_kernel_ms_per_step', '{:.4f}')} / {col('after_decode_kernel_ms_per_step', '{:.4f}')}"),
        ("prefill kernel ms: warmup / after reps", lambda sel, col: f"{col('warmup_prefill_kernel_ms', '{:.3f}')} / {col('after_prefill_kernel_ms', '{:.3f}')}"),
        ("warmup s", lambda sel, col: col("warmup_s", "{:.2f}")),
        ("pass s", lambda sel, col: col("pass_s", "{:.2f}")),
    ])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cell_arguments(p)
    a = p.parse_args(argv)

    def measure(spec, prompt, backend, clock) -> list[dict]:
        rows = []
        for r in range(a.rounds):
            for way in WAYS:
                rows.append({"backend": spec.backend, "seq": a.seq, "batch": spec.batch, "round": r + 1, "way": way,
                             **run_cell(backend, prompt, spec, clock, way)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        return rows

    rows = each_cell(a, measure)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    print_table(rows, a.seq, a.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
