"""What a cell measures besides its reps: kernel time (GPU busy), peak memory, out-of-memory recognition, torch.profiler traces."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from latency_sensitivity.engine.base import Clock


def kernel_time_ms(fn) -> float:
    """GPU time of everything fn() puts on the device (kernels, copies, sets), from a torch.profiler trace.

    The union of the device events' intervals, so idle gaps between kernels are not counted, and kernels that
    overlap (launched with programmatic dependent launch, one starts as the previous finishes) count once:
    this is the time the GPU spent working, whatever the host was doing.
    """
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from latency_sensitivity.analysis import metrics

    # kineto detaches CUPTI when a profiler stops only where TEARDOWN_CUPTI is 1 (read at each stop); otherwise
    # CUPTI stays attached and every kernel and graph the process runs afterwards pays for it, so a cell measured
    # after another in a shared worker was slower than the same cell measured first (benchmarks/sweep_cost/NOTES.md,
    # "The profiler left attached"). Set before each use, whatever the environment said.
    os.environ["TEARDOWN_CUPTI"] = "1"
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    # the profiler's raw events (ns), not prof.events(): building those function events parses the whole trace in
    # Python, seconds for the tens of thousands of kernels of an eager request
    spans = [(e.start_ns(), e.end_ns()) for e in prof.profiler.kineto_results.events()
             if e.device_type() == DeviceType.CUDA]
    return metrics.covered_length(spans) / 1e6


# The kernel-time pass's request generates this many tokens (the cell's gen_tokens where fewer). Stopping the
# profiler and reading its events costs per device event, and a decode step is thousands of kernels, so a whole
# request's trace cost seconds of a cell's job for milliseconds of GPU work. The first steps' kernel time matched the
# whole request's at batch 1 and read a few percent higher after a compute-bound prefill
# (benchmarks/sweep_cost/NOTES.md, "The kernel-time pass").
KERNEL_TIME_TOKENS = 8


def gpu_busy(backend, prompt, gen_tokens: int, clock: Clock) -> dict:
    """Kernel time per phase, from one extra, unmeasured prefill and one request of the backend after the measured
    reps; the request generates min(gen_tokens, KERNEL_TIME_TOKENS) tokens, and its decode steps' kernel time is
    averaged over them."""
    tokens = min(gen_tokens, KERNEL_TIME_TOKENS)
    backend.reset()  # emptying a static cache is not part of either phase
    prefill_ms = kernel_time_ms(lambda: backend.prefill(prompt))
    backend.reset()
    request_ms = kernel_time_ms(lambda: backend.request(prompt, tokens, clock, "kernel_time"))
    return {
        "prefill_kernel_ms": prefill_ms,
        "decode_kernel_ms_per_step": max(request_ms - prefill_ms, 0.0) / (tokens - 1),
        "kernel_time_decode_steps": tokens - 1,
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
