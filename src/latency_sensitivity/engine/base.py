"""The interface every backend has (the runner's requests and kernel-time profiling do not care which one runs) and the timing of one request."""

from __future__ import annotations

import time


class Backend:
    """The common interface:

    - ``request(prompt, gen_tokens, clock, rep_name) -> (prefill_ms, ttft_ms, [decode step ms], e2e_ms)``: one
      timed request with the runner's timing semantics (``timed_request``) and the NVTX ranges
      ``{rep_name}.prefill`` and ``{rep_name}.decode``;
    - ``prefill(prompt)``: one prefill forward, untimed (the kernel-time pass after the reps profiles it);
    - ``generate(prompt, gen_tokens, forced=None) -> (tokens, logits)``: an untimed request that keeps every
      step's logits, optionally feeding given tokens instead of its own (teacher forcing), for checking one
      backend against another;
    - ``setup_s``: wall time of the backend's per-cell setup (cache allocation, graph capture), spent before the
      warmup reps and kept out of every latency metric; ``info()["setup_parts"]``: that time by part.
    """

    name = "?"
    setup_s = 0.0

    def request(self, prompt, gen_tokens: int, clock, rep_name: str):
        raise NotImplementedError

    def prefill(self, prompt):
        raise NotImplementedError

    def generate(self, prompt, gen_tokens: int, forced=None):
        raise NotImplementedError

    def reset(self) -> None:
        """Empty the backend's KV cache now, if a request left it filled (request and prefill do it too)."""

    def info(self) -> dict:
        """What the backend set up, for the result file."""
        return {"name": self.name}

    def close(self) -> None:
        """Drop what the backend holds on the device (cache, graph)."""


def timed_request(prefill, step, gen_tokens: int, clock, rep_name: str):
    """The request timing every backend shares.

    prefill() runs the prompt's forward and returns the first token (batch, 1); step(token) runs one decode
    step and returns the next. Prefill is timed by the clock (CUDA events on a GPU, so its time is the
    device's), TTFT on the host until the first token has reached it, then gen_tokens - 1 decode steps, each
    timed by the clock, inside NVTX ranges ``{rep_name}.prefill`` and ``{rep_name}.decode``.
    Returns prefill_ms, ttft_ms, [decode step ms], e2e_ms.
    """
    from latency_sensitivity.engine.nvtx import nvtx_range

    clock.sync()
    host_start = time.perf_counter()
    with nvtx_range(f"{rep_name}.prefill"):
        start = clock.mark()
        token = prefill()
        prefill_end = clock.mark()
        token.cpu()  # the first token reaches the host: time to first token
        ttft_ms = (time.perf_counter() - host_start) * 1000.0
    marks = []
    with nvtx_range(f"{rep_name}.decode"):
        for _ in range(gen_tokens - 1):
            a = clock.mark()
            token = step(token)
            marks.append((a, clock.mark()))
        clock.sync()
    e2e_ms = (time.perf_counter() - host_start) * 1000.0
    return clock.elapsed_ms(start, prefill_end), ttft_ms, [clock.elapsed_ms(a, b) for a, b in marks], e2e_ms


class Clock:
    """Marks on a CUDA stream (events) or on the host's monotonic clock."""

    def __init__(self, cuda: bool):
        import torch

        self.torch = torch
        self.cuda = cuda

    def mark(self):
        if self.cuda:
            ev = self.torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def elapsed_ms(self, a, b) -> float:
        if self.cuda:
            return float(a.elapsed_time(b))
        return (b - a) * 1000.0

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()


class PartTimer:
    """Wall time by part of a piece of work: ``end(name)`` synchronizes the clock's device, adds the time since the
    last part ended (or the timer was made) to ``parts[name]``, and starts the next part."""

    def __init__(self, clock: Clock):
        self.clock, self.parts = clock, {}
        self._start = time.perf_counter()

    def end(self, name: str) -> None:
        self.clock.sync()
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - self._start
        self._start = now
