"""The GPU benchmarks' shared timing: calls captured back to back in one CUDA graph, timed per call."""
import statistics

import torch


def time_calls(calls, replays=20):
    """Median over `replays` graph replays of the time per call (us) of `calls`, zero-argument callables run
    once each (autotuning, warm-up) before they are captured."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    times = []
    for _ in range(replays):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); g.replay(); e.record(); e.synchronize()
        times.append(s.elapsed_time(e) * 1000 / len(calls))
    return statistics.median(times)
