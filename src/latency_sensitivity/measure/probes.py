"""What a cell measures besides its reps: kernel time (GPU busy), peak memory, out-of-memory recognition, torch.profiler traces."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from latency_sensitivity.engine.base import Clock


class KernelTimer:
    """GPU time of everything put on the device between start() and stop() (kernels, copies, sets), from a
    torch.profiler trace.

    The union of the device events' intervals, so idle gaps between kernels are not counted, and kernels that
    overlap (launched with programmatic dependent launch, one starts as the previous finishes) count once:
    this is the time the GPU spent working, whatever the host was doing.
    """

    def __init__(self):
        self.prof = None

    def start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        # kineto detaches CUPTI when a profiler stops only where TEARDOWN_CUPTI is 1 (read at each stop); otherwise
        # CUPTI stays attached and every kernel and graph the process runs afterwards pays for it, so a cell
        # measured after another in a shared worker was slower than the same cell measured first
        # (benchmarks/sweep_cost/NOTES.md, "The profiler left attached"). Set before each use, whatever the
        # environment said.
        os.environ["TEARDOWN_CUPTI"] = "1"
        torch.cuda.synchronize()
        self.prof = profile(activities=[ProfilerActivity.CUDA])
        self.prof.__enter__()

    def stop(self) -> float:
        """The kernel time since start(), in ms."""
        import torch
        from torch.autograd import DeviceType

        from latency_sensitivity.analysis import metrics

        torch.cuda.synchronize()
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        # the profiler's raw events (ns), not prof.events(): building those function events parses the whole trace
        # in Python, seconds for the tens of thousands of kernels of an eager request
        spans = [(e.start_ns(), e.end_ns()) for e in prof.profiler.kineto_results.events()
                 if e.device_type() == DeviceType.CUDA]
        return metrics.covered_length(spans) / 1e6

    def abandon(self) -> None:
        """Stop a session that start() opened, when what it timed failed."""
        if self.prof is not None:
            prof, self.prof = self.prof, None
            prof.__exit__(None, None, None)


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
    """A request's clock that also times the kernels of decode steps first .. first + steps - 1.

    engine.base.timed_request marks twice around the prefill, then before and after each decode step: the
    timer starts before the mark that opens step `first` and stops after the mark that closes the window's last
    step.
    """

    def __init__(self, clock: Clock, first: int, steps: int, timer=None):
        self.clock = clock
        self.timer = timer if timer is not None else KernelTimer()
        self.start_at, self.stop_at = 2 + 2 * first, 3 + 2 * (first + steps - 1)
        self.marks = 0
        self.kernel_ms: float | None = None

    def mark(self):
        if self.marks == self.start_at:
            self.timer.start()
        ev = self.clock.mark()
        if self.marks == self.stop_at:
            self.kernel_ms = self.timer.stop()
        self.marks += 1
        return ev

    def elapsed_ms(self, a, b) -> float:
        return self.clock.elapsed_ms(a, b)

    def sync(self) -> None:
        self.clock.sync()


# The kernel-time pass times this many decode steps (fewer where the cell's request has fewer). Stopping the
# profiler and reading its events costs per device event, and a decode step is thousands of kernels, so a whole
# request's trace cost seconds of a cell's job for milliseconds of GPU work. The steps are those in the middle of
# the cell's request, where its median step lies: after a compute-bound prefill the first steps' kernels ran a few
# percent slower than later ones (benchmarks/sweep_cost/NOTES.md, "The kernel-time pass").
KERNEL_TIME_STEPS = 7


def kernel_time_window(gen_tokens: int) -> tuple[int, int]:
    """(first, steps): the decode steps the kernel-time pass times, centred in a request of gen_tokens tokens
    (gen_tokens - 1 decode steps, numbered from 0)."""
    steps = min(gen_tokens - 1, KERNEL_TIME_STEPS)
    return (gen_tokens - 1 - steps) // 2, steps


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
    try:
        backend.request(prompt, first + steps + 1, window, "kernel_time")
    except BaseException:
        window.timer.abandon()
        raise
    if window.kernel_ms is None:
        raise RuntimeError(f"the kernel-time request made {window.marks} clock marks; its window ends at mark "
                           f"{window.stop_at}")
    return {
        "prefill_kernel_ms": prefill_ms,
        "decode_kernel_ms_per_step": window.kernel_ms / steps,
        "kernel_time_decode_steps": steps,
        "kernel_time_first_step": first,
    }


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


PROFILE_MODES = ("off", "external", "torch")


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
