"""What a cell measures besides its reps: kernel time (GPU busy), peak memory, out-of-memory recognition, torch.profiler traces."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from latency_sensitivity.engine.base import Clock


# The parts of a kernel timer's seconds (KernelTimer.parts; a cell's kernel_time_parts): waiting for the device to
# finish its queued work, starting a session, stopping one, reading its events. The wait is the timed request's own
# GPU work, which the request would wait for without a profiler too; the other parts are the profiler's cost.
PROFILER_PARTS = ("sync_s", "start_s", "stop_s", "read_s")
PROFILER_COST_PARTS = ("start_s", "stop_s", "read_s")


class KernelTimer:
    """GPU time of everything put on the device between start() and stop() (kernels, copies, sets), from a
    torch.profiler trace.

    The union of the device events' intervals, so idle gaps between kernels are not counted, and kernels that
    overlap (launched with programmatic dependent launch, one starts as the previous finishes) count once:
    this is the time the GPU spent working, whatever the host was doing.
    """

    def __init__(self):
        self.prof = None
        # wall time in start, stop and abandon, by part (PROFILER_PARTS)
        self.parts = dict.fromkeys(PROFILER_PARTS, 0.0)

    @property
    def seconds(self) -> float:
        """The profiler's own cost: its seconds without the device's wait, which is the timed work's
        (PROFILER_COST_PARTS)."""
        return sum(self.parts[part] for part in PROFILER_COST_PARTS)

    def _sync(self) -> None:
        import torch

        t0 = time.perf_counter()
        torch.cuda.synchronize()
        self.parts["sync_s"] += time.perf_counter() - t0

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self._sync()
        t0 = time.perf_counter()
        self.prof = profile(activities=[ProfilerActivity.CUDA])
        self.prof.__enter__()
        self.parts["start_s"] += time.perf_counter() - t0

    def stop(self, detach: bool = True) -> float:
        """The kernel time since start(), in ms. detach: CUPTI leaves the process as this profile stops (set_teardown);
        False only where another session starts at once in the same request and stops with it."""
        from torch.autograd import DeviceType

        from latency_sensitivity.analysis import metrics

        self._sync()
        t0 = time.perf_counter()
        prof, self.prof = self.prof, None
        set_teardown(detach)
        prof.__exit__(None, None, None)
        t1 = time.perf_counter()
        # the profiler's raw events (ns), not prof.events(): building those function events parses the whole trace
        # in Python, seconds for the tens of thousands of kernels of an eager request
        spans = [(e.start_ns(), e.end_ns()) for e in prof.profiler.kineto_results.events()
                 if e.device_type() == DeviceType.CUDA]
        self.parts["stop_s"] += t1 - t0
        self.parts["read_s"] += time.perf_counter() - t1
        if not spans:  # what it timed always runs kernels: a session that saw none did not record, not an idle GPU
            raise RuntimeError("the profiler session recorded no device event (CUPTI did not record the work it "
                               "timed)")
        return metrics.covered_length(spans) / 1e6

    def abandon(self) -> None:
        """Stop a session that start() opened, when what it timed failed."""
        if self.prof is not None:
            t0 = time.perf_counter()
            prof, self.prof = self.prof, None
            set_teardown(True)
            prof.__exit__(None, None, None)
            self.parts["stop_s"] += time.perf_counter() - t0


def set_teardown(detach: bool) -> None:
    """Whether kineto detaches CUPTI from the process when the profiler session now open stops.

    It does only where TEARDOWN_CUPTI is 1, read at each stop; otherwise CUPTI stays attached and every kernel and
    graph the process runs afterwards pays for it, so a cell measured after another in a shared worker was slower
    than the same cell measured first (benchmarks/sweep_cost/NOTES.md, "The profiler left attached"). Set at every
    stop, whatever the environment said. Kept attached only from one session to the next within a request: the
    next session then starts without attaching it again, and detaches it when it stops."""
    os.environ["TEARDOWN_CUPTI"] = "1" if detach else "0"


def kernel_time_ms(fn, timer: KernelTimer | None = None) -> float:
    """GPU time of everything fn() puts on the device (KernelTimer)."""
    timer = timer if timer is not None else KernelTimer()
    timer.start()
    try:
        fn()
    except BaseException:
        timer.abandon()
        raise
    return timer.stop()


class WindowClock:
    """A request's clock that also times the kernels of decode steps first .. first + steps - 1, and with
    prefill_timer those of the prefill.

    engine.base.timed_request marks twice around the prefill, then before and after each decode step: the
    timer starts before the mark that opens step `first` and stops after the mark that closes the window's last
    step; the prefill's timer starts before the first mark and stops after the second. The prefill's session
    leaves CUPTI attached for the window's, which detaches it (keep_attached; set_teardown); a request that fails
    between them has it detached by abandon().
    """

    def __init__(self, clock: Clock, first: int, steps: int, timer=None, prefill_timer=None,
                 keep_attached: bool = True):
        self.clock = clock
        self.timer = timer if timer is not None else KernelTimer()
        self.prefill_timer = prefill_timer
        self.keep_attached = keep_attached
        self.left_attached = False  # the prefill's session was stopped leaving CUPTI attached
        self.window_started = False
        self.start_at, self.stop_at = 2 + 2 * first, 3 + 2 * (first + steps - 1)
        self.marks = 0
        self.kernel_ms: float | None = None
        self.prefill_kernel_ms: float | None = None

    def mark(self):
        if self.prefill_timer is not None and self.marks == 0:
            self.prefill_timer.start()
        if self.marks == self.start_at:
            self.timer.start()
            self.window_started = True
        ev = self.clock.mark()
        if self.prefill_timer is not None and self.marks == 1:
            self.left_attached = self.keep_attached
            self.prefill_kernel_ms = self.prefill_timer.stop(detach=not self.keep_attached)
        if self.marks == self.stop_at:
            self.kernel_ms = self.timer.stop()
        self.marks += 1
        return ev

    def elapsed_ms(self, a, b) -> float:
        return self.clock.elapsed_ms(a, b)

    def sync(self) -> None:
        self.clock.sync()

    def abandon(self) -> None:
        """Close the sessions a failed request left open, detaching CUPTI; where it failed after the prefill's
        session left CUPTI attached and before the window's started, a session is opened and closed to detach it."""
        for timer in (self.prefill_timer, self.timer):
            if timer is not None:
                timer.abandon()
        if self.left_attached and not self.window_started:
            self.timer.start()
            self.timer.abandon()

    @property
    def profiler_parts(self) -> dict:
        """The timers' seconds by part (KernelTimer.parts), both timers together."""
        timers = [t for t in (self.prefill_timer, self.timer) if t is not None]
        return {part: sum(getattr(t, "parts", {}).get(part, 0.0) for t in timers) for part in PROFILER_PARTS}

    @property
    def profiler_s(self) -> float:
        """The timers' own cost (KernelTimer.seconds): their seconds without the device's wait."""
        return sum(self.profiler_parts[part] for part in PROFILER_COST_PARTS)


# The kernel time is taken over this many decode steps (fewer where the cell's request has fewer). Stopping the
# profiler and reading its events costs per device event, and a decode step is thousands of kernels, so a whole
# request's trace cost seconds of a cell's job for milliseconds of GPU work. The steps are those in the middle of
# the cell's request, where its median step lies: after a compute-bound prefill the first steps' kernels ran a few
# percent slower than later ones (benchmarks/sweep_cost/NOTES.md, "The kernel-time pass"). Three middle steps
# gave what seven gave within 0.05%, and the profiler's own seconds fell by a third or more (the same notes).
KERNEL_TIME_STEPS = 3


def kernel_time_window(gen_tokens: int, steps: int = KERNEL_TIME_STEPS) -> tuple[int, int]:
    """(first, steps): the decode steps profiled for the kernel time (at most `steps`), centred in a request of
    gen_tokens tokens (gen_tokens - 1 decode steps, numbered from 0)."""
    steps = min(gen_tokens - 1, steps)
    return (gen_tokens - 1 - steps) // 2, steps


def kernel_time_warmup_request(warmup: int) -> int | None:
    """The warmup request (counted from 0) the kernel time is taken from: the second to last, so that a warmed
    request runs before it and a plain one between it and the reps. None with fewer than 3 warmup requests: the
    kernel time then comes from a pass after the reps (gpu_busy)."""
    return warmup - 2 if warmup >= 3 else None


def profiled_request(backend, prompt, gen_tokens: int, clock: Clock, rep_name: str,
                     timer_factory=KernelTimer, window_steps: int = KERNEL_TIME_STEPS,
                     keep_attached: bool = True) -> dict:
    """Kernel time per phase from one whole request of the cell (a warmup request): its prefill and the decode
    steps of kernel_time_window, each under a profiler session (CUPTI attached from the first session's start to
    the last one's stop where keep_attached: WindowClock). The GPU does this work anyway, so no request is added
    for it. Returns gpu_busy's keys, `profiler_s`, what the sessions themselves cost (KernelTimer.seconds), and
    `profiler_parts`, the sessions' seconds by part, the device's wait included."""
    first, steps = kernel_time_window(gen_tokens, window_steps)
    if steps < 1:
        raise ValueError(f"a request of {gen_tokens} tokens has no decode step to time")
    window = WindowClock(clock, first, steps, timer_factory(), prefill_timer=timer_factory(),
                         keep_attached=keep_attached)
    _request_through(window, backend, prompt, gen_tokens, rep_name)
    return {**_kernel_times(window.prefill_kernel_ms, window, first, steps), "profiler_s": window.profiler_s,
            "profiler_parts": window.profiler_parts}


def _request_through(window: WindowClock, backend, prompt, tokens: int, rep_name: str) -> None:
    """Run the request under the window's clock: its profiler sessions closed if it fails, an error if it made
    too few marks to close the window."""
    try:
        backend.request(prompt, tokens, window, rep_name)
    except BaseException:
        window.abandon()
        raise
    if window.kernel_ms is None or (window.prefill_timer is not None and window.prefill_kernel_ms is None):
        raise RuntimeError(f"the {rep_name} request made {window.marks} clock marks; its window ends at mark "
                           f"{window.stop_at}")


def _kernel_times(prefill_ms: float, window: WindowClock, first: int, steps: int) -> dict:
    return {"prefill_kernel_ms": prefill_ms, "decode_kernel_ms_per_step": window.kernel_ms / steps,
            "kernel_time_decode_steps": steps, "kernel_time_first_step": first}


def warm_up(backend, prompt, gen_tokens: int, warmup: int, clock: Clock, profiled: int | None,
            timer_factory=KernelTimer) -> dict:
    """The cell's warmup requests, request `profiled` (None: none) timed by profiled_request.

    A profiled request that fails (the profiler, or the request under it) is recorded and run again plain, so the
    reps always follow `warmup` whole requests; a request that fails plain fails the cell. Returns `kernel` (the
    kernel times, or None), `error` (why there are none, or None), `kernel_time_s` (the profiled attempt's cost:
    the profiler's own seconds, KernelTimer.seconds, or the whole failed attempt), `kernel_time_parts` (the
    profiler's seconds by part, KernelTimer.parts, the device's wait included; None for a failed attempt) and
    `warmup_s` (the warmup's wall time without kernel_time_s: the profiled request's GPU work, which the profiler
    waited for, is the warmup's).
    """
    out = {"kernel": None, "error": None, "kernel_time_s": 0.0, "kernel_time_parts": None}
    t0 = time.perf_counter()
    for i in range(warmup):
        if i == profiled:
            attempt = time.perf_counter()
            try:
                kernel = profiled_request(backend, prompt, gen_tokens, clock, f"warmup{i}", timer_factory)
                out["kernel_time_s"] = kernel.pop("profiler_s")
                out["kernel_time_parts"] = kernel.pop("profiler_parts")
                out["kernel"] = kernel
                continue
            except Exception as exc:  # noqa: BLE001 - auxiliary: recorded, and the request runs again plain
                out["error"] = f"{type(exc).__name__}: {exc}"
                out["kernel_time_s"] = time.perf_counter() - attempt
        backend.request(prompt, gen_tokens, clock, f"warmup{i}")
    out["warmup_s"] = time.perf_counter() - t0 - out["kernel_time_s"]
    return out


def gpu_busy(backend, prompt, gen_tokens: int, clock: Clock, timer_factory=KernelTimer) -> dict:
    """Kernel time per phase, from one extra, unmeasured prefill and one request of the backend after the measured
    reps. The request runs as the cell's did up to the end of the timed window (kernel_time_window) and stops
    there; the decode kernel time is averaged over the window's steps."""
    first, steps = kernel_time_window(gen_tokens)
    backend.reset()  # emptying a static cache is not part of either phase
    prefill_ms = kernel_time_ms(lambda: backend.prefill(prompt), timer_factory())
    if steps < 1:
        return {"prefill_kernel_ms": prefill_ms, "decode_kernel_ms_per_step": float("nan"),
                "kernel_time_decode_steps": 0, "kernel_time_first_step": 0}
    backend.reset()
    window = WindowClock(clock, first, steps, timer_factory())
    _request_through(window, backend, prompt, first + steps + 1, "kernel_time")
    return _kernel_times(prefill_ms, window, first, steps)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so it covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cuda_memory_state() -> dict:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    mib = 2**20
    free, total = torch.cuda.mem_get_info()
    return {
        "allocated_mb": torch.cuda.memory_allocated() / mib,
        "reserved_mb": torch.cuda.memory_reserved() / mib,
        "max_allocated_mb": torch.cuda.max_memory_allocated() / mib,
        "max_reserved_mb": torch.cuda.max_memory_reserved() / mib,
        "device_free_mb": free / mib,
        "device_total_mb": total / mib,
    }


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


@contextmanager
def torch_profiling(out_dir: Path | None, cuda: bool):
    """torch.profiler around the measured reps: a Chrome trace and an op table in `out_dir`.

    While it runs, every NVTX phase range is also a torch record_function, so the trace shows which rep
    and phase (prefill, decode) each op and kernel belongs to. Writes ``trace.json.gz`` (Chrome/Perfetto
    format) and ``ops.csv`` (torch's key averages: calls, self and total host and device time per op).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from latency_sensitivity.engine import nvtx
    from latency_sensitivity.atomic import write_text

    if out_dir is None:
        raise ValueError("profile mode 'torch' needs --torch-profile-dir")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    nvtx.RECORD_FUNCTION_RANGES = True
    try:
        with profile(activities=activities, acc_events=True) as prof:
            yield prof
            if cuda:
                torch.cuda.synchronize()
    finally:
        nvtx.RECORD_FUNCTION_RANGES = False
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "trace.json.gz.tmp.json.gz"
    prof.export_chrome_trace(str(tmp))
    os.replace(tmp, out_dir / "trace.json.gz")
    write_text(out_dir / "ops.csv", op_table_csv(prof.key_averages()))


def op_table_csv(averages) -> str:
    """torch.profiler key averages as CSV (times in ms), most self time first (host, then device)."""
    import csv
    import io

    def ms(event, *names):
        for name in names:
            if hasattr(event, name):
                return getattr(event, name) / 1000.0
        return 0.0

    rows = []
    for e in averages:
        rows.append({
            "name": e.key,
            "calls": e.count,
            "self_cpu_ms": ms(e, "self_cpu_time_total"),
            "cpu_total_ms": ms(e, "cpu_time_total"),
            "self_device_ms": ms(e, "self_device_time_total", "self_cuda_time_total"),
            "device_total_ms": ms(e, "device_time_total", "cuda_time_total"),
        })
    rows.sort(key=lambda r: (-r["self_device_ms"], -r["self_cpu_ms"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["name", "calls", "self_cpu_ms", "cpu_total_ms", "self_device_ms",
                                        "device_total_ms"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
