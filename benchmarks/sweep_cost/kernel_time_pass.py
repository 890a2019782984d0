"""What the kernel-time pass costs, and in which part: profiler start, the profiled work, profiler stop, reading
its events, for the pass as the runner runs it and for the alternatives considered.

Every cell on a GPU takes its kernel time under torch.profiler sessions (CUDA activity only), whose device events
give each phase's GPU-busy share: from its second to last warmup request, or, with fewer than 3 warmup requests,
from a pass after its reps (`probes.gpu_busy`: one unmeasured prefill and one request).
This study builds each backend once per cell (the Qwen2.5-3B architecture with random fp16 weights, seq 128 by
default, gen 32, as benchmarks/replicates/), warms it up, then runs each way `--rounds` times, alternating, and
prints wall times, where they go and the kernel times each way gives:

- ``whole request``: the pass as it was, a session for the prefill and one for a request of all gen tokens;
- ``short request``: the pass as it was next, the request generating 8 tokens (its first 7 decode steps timed);
- ``middle steps``: the prefill profiled alone, then a whole request profiled over 7 decode steps in its middle,
  where the median step lies (a clock that starts and stops the profiler at their marks);
- ``cut after middle steps``: the pass as the runner runs it with fewer than 3 warmup requests (probes.gpu_busy):
  ``middle steps``, the request stopping after the timed steps;
- ``warmup request``: as the runner takes it from a warmup request (probes.profiled_request): a whole request,
  its prefill under one session and its 7 middle decode steps under another;
- ``warmup request 3 steps`` and ``warmup request 1 step``: the same over fewer middle steps;
- ``warmup request 3 steps (detached between)``: ``warmup request 3 steps`` with CUPTI detached when the prefill's
  session stops (the runner keeps it attached from the prefill's session to the window's: probes.set_teardown);
- ``plain request``: the same request without a profiler, for the wall time the sessions add;
- ``one session``: prefill, cache reset and whole request in one profiler session, told apart by a marker
  kernel (torch.cuda._sleep) between them;
- ``request only``: one session around the whole request alone (how much the prefill's session adds);
- ``no external correlation``: as ``whole request``, with the profiler's external correlation off.

    python3 benchmarks/sweep_cost/kernel_time_pass.py [--backends graph,eager] [--batches 1,64] [--seq 128]
        [--rounds 3] [--ways "whole request,short request"]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from study_cell import add_cell_arguments, each_cell, print_way_table

MARKER = "spin_kernel"
WAYS = ("whole request", "short request", "middle steps", "cut after middle steps", "warmup request",
        "warmup request 3 steps", "warmup request 1 step", "warmup request 3 steps (detached between)", "plain request",
        "one session", "request only", "no external correlation")


def profiled(fns, timing: dict, **profile_kwargs) -> list[float]:
    """Kernel time (ms) of each of fns, profiled in one session (marker kernels between them); timing gets the
    session's parts in seconds."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from latency_sensitivity.analysis import metrics

    os.environ["TEARDOWN_CUPTI"] = "1"
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    prof = profile(activities=[ProfilerActivity.CUDA], **profile_kwargs)
    prof.__enter__()
    t1 = time.perf_counter()
    for i, fn in enumerate(fns):
        if i:
            torch.cuda.synchronize()
            torch.cuda._sleep(1)
        torch.cuda.synchronize()
        fn()
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    prof.__exit__(None, None, None)
    t3 = time.perf_counter()
    raw = list(prof.profiler.kineto_results.events())
    events = sorted((e.start_ns(), e.end_ns(), e.name()) for e in raw if e.device_type() == DeviceType.CUDA)
    t4 = time.perf_counter()
    for key, value in (("start_s", t1 - t0), ("work_s", t2 - t1), ("stop_s", t3 - t2), ("read_s", t4 - t3)):
        timing[key] = timing.get(key, 0.0) + value
    timing["events"] = timing.get("events", 0) + len(raw)
    timing["device_events"] = timing.get("device_events", 0) + len(events)
    marks = [(s, e) for s, e, name in events if MARKER in name]
    if len(marks) != len(fns) - 1:
        raise RuntimeError(f"{len(marks)} marker kernels in the trace, {len(fns) - 1} expected")
    cuts = [(-math.inf, -math.inf)] + marks + [(math.inf, math.inf)]
    return [metrics.covered_length([(s, e) for s, e, name in events if MARKER not in name and s >= lo and e <= hi]) / 1e6
            for (_, lo), (hi, _) in zip(cuts, cuts[1:])]


def timed_timer(timing: dict):
    """probes.KernelTimer that adds its parts (start, the work between, stop, reading the events) to timing."""
    import torch
    from torch.autograd import DeviceType

    from latency_sensitivity.analysis import metrics
    from latency_sensitivity.measure import probes

    class Timed(probes.KernelTimer):
        def start(self):
            t0 = time.perf_counter()
            super().start()
            self.started = time.perf_counter()
            timing["start_s"] = timing.get("start_s", 0.0) + self.started - t0

        def stop(self, detach=True):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            probes.set_teardown(detach)
            self.prof.__exit__(None, None, None)
            t1 = time.perf_counter()
            raw = list(self.prof.profiler.kineto_results.events())
            self.prof = None
            spans = [(e.start_ns(), e.end_ns()) for e in raw if e.device_type() == DeviceType.CUDA]
            for key, value in (("work_s", t0 - self.started), ("stop_s", t1 - t0), ("read_s", time.perf_counter() - t1)):
                timing[key] = timing.get(key, 0.0) + value
            timing["events"] = timing.get("events", 0) + len(raw)
            timing["device_events"] = timing.get("device_events", 0) + len(spans)
            return metrics.covered_length(spans) / 1e6

    return Timed()


def ways(backend, prompt, gen_tokens: int, clock):
    import torch

    from latency_sensitivity.measure import probes

    def request():
        backend.request(prompt, gen_tokens, clock, "kernel_time")

    def prefill():
        backend.prefill(prompt)

    def two_sessions(timing, **kw):
        backend.reset()
        (p,) = profiled([prefill], timing, **kw)
        backend.reset()
        (r,) = profiled([request], timing, **kw)
        return p, (r - p) / (gen_tokens - 1)

    def short_request(timing):
        backend.reset()
        (p,) = profiled([prefill], timing)
        backend.reset()
        (r,) = profiled([lambda: backend.request(prompt, 8, clock, "kernel_time")], timing)
        return p, (r - p) / 7

    def middle_steps(timing):
        first, steps = probes.kernel_time_window(gen_tokens)
        backend.reset()
        (p,) = profiled([prefill], timing)
        backend.reset()
        window = probes.WindowClock(clock, first, steps, timed_timer(timing))
        backend.request(prompt, gen_tokens, window, "kernel_time")
        if window.kernel_ms is None:
            raise RuntimeError(f"the request made {window.marks} marks; the window ends at mark {window.stop_at}")
        return p, window.kernel_ms / steps

    def middle_steps_cut(timing):
        k = probes.gpu_busy(backend, prompt, gen_tokens, clock, timer_factory=lambda: timed_timer(timing))
        return k["prefill_kernel_ms"], k["decode_kernel_ms_per_step"]

    def warmup_request(steps, keep_attached=True):
        def way(timing):
            k = probes.profiled_request(backend, prompt, gen_tokens, clock, "kernel_time",
                                        timer_factory=lambda: timed_timer(timing), window_steps=steps,
                                        keep_attached=keep_attached)
            return k["prefill_kernel_ms"], k["decode_kernel_ms_per_step"]

        return way

    def plain_request(timing):
        request()
        clock.sync()
        return math.nan, math.nan

    def one_session(timing):
        backend.reset()
        p, _, r = profiled([prefill, backend.reset, request], timing)
        return p, (r - p) / (gen_tokens - 1)

    def request_only(timing):
        backend.reset()
        profiled([request], timing)
        return math.nan, math.nan

    def no_external_correlation(timing):
        config = torch._C._profiler._ExperimentalConfig(disable_external_correlation=True)
        return two_sessions(timing, experimental_config=config)

    return {"whole request": two_sessions, "short request": short_request, "middle steps": middle_steps,
            "cut after middle steps": middle_steps_cut, "warmup request": warmup_request(7),
            "warmup request 3 steps": warmup_request(3), "warmup request 1 step": warmup_request(1),
            "warmup request 3 steps (detached between)": warmup_request(3, keep_attached=False),
            "plain request": plain_request,
            "one session": one_session,
            "request only": request_only, "no external correlation": no_external_correlation}


def print_table(rows: list[dict], seq: int) -> None:
    """The markdown table of the rows, as recorded under results/."""
    print(f"seq {seq}\n")
    print_way_table(rows, WAYS, [
        *((f"{part} s", lambda sel, col, part=part: col(f"{part}_s", "{:.2f}"))
          for part in ("wall", "start", "work", "stop", "read")),
        ("events (device)", lambda sel, col: f"{sel[0]['events']} ({sel[0]['device_events']})" if "events" in sel[0] else "-"),
        ("prefill kernel ms", lambda sel, col: col("prefill_kernel_ms", "{:.3f}")),
        ("decode kernel ms/step", lambda sel, col: col("decode_kernel_ms_per_step", "{:.4f}")),
    ])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cell_arguments(p)
    p.add_argument("--ways", help="comma-separated, of: " + ", ".join(WAYS) + " (default: all)")
    a = p.parse_args(argv)

    import torch

    chosen = a.ways.split(",") if a.ways else list(WAYS)
    if set(chosen) - set(WAYS):
        p.error(f"unknown ways: {', '.join(set(chosen) - set(WAYS))}")

    def measure(spec, prompt, backend, clock) -> list[dict]:
        rows = []
        with torch.inference_mode():
            for i in range(spec.warmup):
                backend.request(prompt, spec.gen_tokens, clock, f"warmup{i}")
            for r in range(a.rounds):
                for way, fn in ways(backend, prompt, spec.gen_tokens, clock).items():
                    if way not in chosen:
                        continue
                    timing: dict = {}
                    t0 = time.perf_counter()
                    prefill_ms, decode_ms = fn(timing)
                    rows.append({"backend": spec.backend, "seq": a.seq, "batch": spec.batch, "round": r + 1,
                                 "way": way, "wall_s": time.perf_counter() - t0, **timing,
                                 "prefill_kernel_ms": prefill_ms, "decode_kernel_ms_per_step": decode_ms})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        return rows

    rows = each_cell(a, measure)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    print_table(rows, a.seq)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
