"""Measure the two roofline ceilings of a device: copy bandwidth and dense matmul throughput.

Run once per device and dtype; ``roofline.cell_roofline`` takes the resulting JSON (its top-level
``bandwidth_gb_s`` and ``matmul_tflops``) as its ``ceilings``::

    python -m latency_sensitivity.measure.calibrate --device cpu --dtype fp32 --out results/calibration/cpu_fp32.json

Bandwidth is a large device-to-device ``dst.copy_(src)``, counting bytes read plus bytes written; matmul is a
square n×n @ n×n product counted as 2·n³ FLOPs. Both use random normal data (never zeros, which some hardware
handles faster). On CUDA each rep is timed with CUDA events after a warm-up (at least a few iterations and
half a second, so clocks have ramped up); on the CPU with ``time.perf_counter``. The median over the
reps is reported, with every sample kept. GB and TFLOP are decimal (1e9, 1e12).

Beside the measured ceilings the JSON records the device's theoretical peak (``peak``, see
``theoretical_peak``): memory bandwidth from NVML's maximum memory clock and bus width, dense tensor FLOP/s
from the SM count, the maximum SM clock and a per-architecture table. On the CPU there is no peak (None).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from latency_sensitivity.atomic import write_json

TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# (copy bytes, matmul n, bandwidth reps, matmul reps) per device kind and quick flag.
SIZES: dict[tuple[str, bool], tuple[int, int, int, int]] = {
    ("cuda", False): (2**30, 8192, 20, 20),
    ("cuda", True): (2**28, 4096, 5, 5),
    ("cpu", False): (64 * 2**20, 1024, 10, 5),
    ("cpu", True): (8 * 2**20, 256, 3, 3),
}


def _torch_dtype(dtype: str) -> torch.dtype:
    try:
        return TORCH_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(TORCH_DTYPES)}") from None


def _device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; expected cpu or cuda[:N]")
    return dev


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: str) -> str:
    dev = _device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return _cpu_name()


# Dense matrix-multiply FLOPs per SM per clock (an FMA counts 2), by compute capability (major, minor), for
# fp16/bf16 on the tensor cores and fp32 on the CUDA cores (no TF32: torch's default matmul precision).
# Derived from NVIDIA's published dense peaks divided by SM count x boost clock:
#   sm70 V100 SXM2 125 TFLOPS fp16 / (80 SMs x 1.53 GHz)          -> 1024 (Volta whitepaper, 2017)
#   sm75 T4 65 TFLOPS fp16 / (40 x 1.59 GHz)                       -> 1024 (Turing whitepaper, 2018)
#   sm80 A100 312 TFLOPS fp16/bf16 / (108 x 1.41 GHz)              -> 2048 (A100 whitepaper, 2020, table 1)
#   sm86 A10 125 TFLOPS fp16 / (72 x 1.695 GHz)                    -> 1024 (A10 datasheet)
#   sm89 L40S 362 TFLOPS fp16 / (142 x 2.52 GHz)                   -> 1024 (Ada whitepaper, 2022, appendix;
#        GeForce Ada runs fp16 with fp32 accumulate at half this rate)
#   sm90 H100 SXM5 989.4 TFLOPS fp16/bf16 / (132 x 1.83 GHz)        -> 4096 (H100 whitepaper, 2022, table 2)
#   sm100 B200 2.25 PFLOPS fp16/bf16 dense / (148 x ~1.86 GHz)     -> 8192 (DGX B200 / HGX datasheet, 2024)
#   sm120 RTX 5090 419 TFLOPS fp16 (fp16 accumulate) / (170 x 2.41 GHz) -> 1024 (RTX Blackwell whitepaper, 2025,
#        appendix; fp32 accumulate at half this rate on GeForce)
# fp32 (CUDA cores): 2 x FP32 lanes per SM (64 on sm70/75/80, 128 from sm86 on).
TENSOR_FLOPS_PER_SM_CLOCK: dict[tuple[int, int], dict[str, int]] = {
    (7, 0): {"fp16": 1024, "bf16": 0, "fp32": 128},
    (7, 5): {"fp16": 1024, "bf16": 0, "fp32": 128},
    (8, 0): {"fp16": 2048, "bf16": 2048, "fp32": 128},
    (8, 6): {"fp16": 1024, "bf16": 1024, "fp32": 256},
    (8, 7): {"fp16": 1024, "bf16": 1024, "fp32": 256},
    (8, 9): {"fp16": 1024, "bf16": 1024, "fp32": 256},
    (9, 0): {"fp16": 4096, "bf16": 4096, "fp32": 256},
    (10, 0): {"fp16": 8192, "bf16": 8192, "fp32": 256},
    (12, 0): {"fp16": 1024, "bf16": 1024, "fp32": 256},
}
# NVML's memory clock counts one transfer per edge of a double-data-rate bus (HBM2e/HBM3, GDDR6/6X/7 alike):
# H100 SXM 2619 MHz x 2 x 5120 bit / 8 = 3.35 TB/s, RTX 4090 10501 MHz x 2 x 384 bit / 8 = 1.01 TB/s, as published.
MEMORY_TRANSFERS_PER_CLOCK = 2


def peak_from_specs(*, memory_clock_mhz: float | None, bus_width_bits: int | None, sm_count: int | None,
                    sm_clock_mhz: float | None, capability: tuple[int, int] | None, dtype: str) -> dict[str, Any]:
    """Theoretical bandwidth (GB/s) and matmul TFLOP/s from a device's specifications; None where unknown."""
    bandwidth = None
    if memory_clock_mhz and bus_width_bits:
        bandwidth = memory_clock_mhz * 1e6 * MEMORY_TRANSFERS_PER_CLOCK * bus_width_bits / 8 / 1e9
    per_clock = (TENSOR_FLOPS_PER_SM_CLOCK.get(tuple(capability)) or {}).get(dtype) if capability else None
    tflops = sm_count * sm_clock_mhz * 1e6 * per_clock / 1e12 if per_clock and sm_count and sm_clock_mhz else None
    return {
        "bandwidth_gb_s": bandwidth,
        "matmul_tflops": tflops,
        "memory_clock_mhz": memory_clock_mhz,
        "bus_width_bits": bus_width_bits,
        "sm_count": sm_count,
        "sm_clock_mhz": sm_clock_mhz,
        "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
        "flops_per_sm_per_clock": per_clock,
        "dtype": dtype,
    }


def theoretical_peak(device: str, dtype: str) -> dict[str, Any] | None:
    """The device's theoretical peak (see ``peak_from_specs``); None on the CPU."""
    dev = _device(device)
    if dev.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(dev)
    mem_clock = bus = sm_clock = None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(dev.index or 0)
            mem_clock = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)
            bus = pynvml.nvmlDeviceGetMemoryBusWidth(h)
            sm_clock = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML: the peak stays partly unknown
        pass
    if not sm_clock:
        rate_khz = getattr(props, "clock_rate", None)  # torch exposes it on some versions
        sm_clock = rate_khz / 1000 if rate_khz else None
    return peak_from_specs(memory_clock_mhz=mem_clock, bus_width_bits=bus, sm_count=props.multi_processor_count,
                           sm_clock_mhz=sm_clock, capability=(props.major, props.minor), dtype=dtype)


def _time_reps(fn: Callable[[], Any], dev: torch.device, reps: int) -> list[float]:
    """Warm up, then time ``reps`` calls of ``fn``; returns per-call milliseconds."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            stream = torch.cuda.current_stream(dev)
            # Warm-up: at least 3 calls and 0.5 s, so kernels are loaded and clocks have ramped up.
            t0 = time.perf_counter()
            n = 0
            while n < 3 or (time.perf_counter() - t0 < 0.5 and n < 2000):
                fn()
                n += 1
                if n >= 3:
                    torch.cuda.synchronize(dev)
            torch.cuda.synchronize(dev)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for s, e in zip(starts, ends):
                s.record(stream)
                fn()
                e.record(stream)
            torch.cuda.synchronize(dev)
            return [s.elapsed_time(e) for s, e in zip(starts, ends)]
    fn()  # one warm-up call on the CPU (page faults, thread pool start)
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def measure_bandwidth(device: str, nbytes: int, reps: int) -> dict[str, Any]:
    """Device memory bandwidth from a ``dst.copy_(src)`` of ``nbytes`` (fp32 random normal data).

    ``bytes`` is what one copy moves: ``nbytes`` read plus ``nbytes`` written.
    """
    dev = _device(device)
    numel = nbytes // 4
    if numel < 1:
        raise ValueError(f"nbytes must be at least 4, got {nbytes}")
    gen = torch.Generator(device=dev).manual_seed(0)
    src = torch.randn(numel, dtype=torch.float32, device=dev, generator=gen)
    dst = torch.randn(numel, dtype=torch.float32, device=dev, generator=gen)
    copy_bytes = numel * 4
    moved = 2 * copy_bytes
    samples = _time_reps(lambda: dst.copy_(src), dev, reps)
    if not torch.equal(dst[:16], src[:16]):  # cheap check that the copy really happened
        raise RuntimeError("bandwidth copy did not copy")
    med = statistics.median(samples)
    del src, dst
    return {
        "bandwidth_gb_s": moved / (med / 1e3) / 1e9,
        "bytes": moved,
        "copy_bytes": copy_bytes,
        "reps": reps,
        "median_ms": med,
        "samples_ms": samples,
    }


def measure_matmul(device: str, dtype: str, n: int, reps: int) -> dict[str, Any]:
    """Dense matmul throughput of an n×n @ n×n product in ``dtype`` (random normal data), 2·n³ FLOPs.

    Always measured in the requested dtype, also on the CPU where fp16/bf16 may be slow or emulated;
    ``computed_dtype`` records what actually ran.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dev = _device(device)
    tdt = _torch_dtype(dtype)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, dtype=torch.float32, device=dev, generator=gen).to(tdt)
    b = torch.randn(n, n, dtype=torch.float32, device=dev, generator=gen).to(tdt)
    c = torch.empty(n, n, dtype=tdt, device=dev)
    samples = _time_reps(lambda: torch.mm(a, b, out=c), dev, reps)
    med = statistics.median(samples)
    flops = 2 * n**3
    note = ""
    if dev.type == "cpu" and dtype in ("fp16", "bf16"):
        note = f"{dtype} matmul measured on the CPU in {dtype} (no upcast); may be slower than fp32"
    out = {
        "matmul_tflops": flops / (med / 1e3) / 1e12,
        "n": n,
        "dtype": dtype,
        "computed_dtype": str(c.dtype).replace("torch.", ""),
        "flops": flops,
        "reps": reps,
        "median_ms": med,
        "samples_ms": samples,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "note": note,
    }
    del a, b, c
    return out


def calibrate(
    device: str,
    dtype: str,
    quick: bool = False,
    *,
    sizes: tuple[int, int, int, int] | None = None,
) -> dict[str, Any]:
    """Measure both ceilings on ``device`` for ``dtype``.

    Sizes: cuda → 1 GiB copy and n=8192 (quick: 256 MiB, n=4096); cpu → 64 MiB copy and n=1024 (quick: 8 MiB,
    n=256). ``sizes`` = (copy bytes, n, bandwidth reps, matmul reps) overrides them.
    """
    dev = _device(device)
    _torch_dtype(dtype)
    nbytes, n, bw_reps, mm_reps = sizes if sizes is not None else SIZES[(dev.type, bool(quick))]
    bw = measure_bandwidth(str(dev), nbytes, bw_reps)
    mm = measure_matmul(str(dev), dtype, n, mm_reps)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    result: dict[str, Any] = {
        "device": dev.type,
        "device_index": dev.index,
        "device_name": device_name(str(dev)),
        "dtype": dtype,
        "quick": bool(quick),
        "bandwidth_gb_s": bw["bandwidth_gb_s"],
        "matmul_tflops": mm["matmul_tflops"],
        "bandwidth": bw,
        "matmul": mm,
        "peak": theoretical_peak(str(dev), dtype),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "num_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for key in ("bandwidth_gb_s", "matmul_tflops"):
        v = result[key]
        if not (isinstance(v, float) and math.isfinite(v) and v > 0):
            raise RuntimeError(f"calibration produced a bad {key}: {v!r}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m latency_sensitivity.measure.calibrate",
        description="Measure copy bandwidth and matmul throughput of a device (roofline ceilings).",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=sorted(TORCH_DTYPES), help="matmul dtype (default fp32)")
    p.add_argument("--out", required=True, help="JSON file to write (parent folders are created)")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer reps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (as the measurement jobs use)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from latency_sensitivity.measure.gpu_slots import claim_for
    from latency_sensitivity.measure.host import process_age_s

    claim = claim_for(args.device)  # before CUDA starts: calibration gets a GPU of its own, like a measurement
    gpu_wait_s = claim.waited_s if claim is not None else None  # part of job_s: the GPU held by another process
    try:
        result = calibrate(args.device, args.dtype, quick=args.quick)
    except (RuntimeError, ValueError) as e:
        # Recorded, not fatal: the sweep still merges and reports, without roofline columns.
        print(f"calibrate: {e}", file=sys.stderr)
        write_json(args.out, {"device": args.device.split(":")[0], "dtype": args.dtype, "error": str(e),
                              "job_s": process_age_s(), "gpu_wait_s": gpu_wait_s})
        return 0
    result["job_s"] = process_age_s()  # the job's wall time, from its process's start: a one-time cost per device
    result["gpu_wait_s"] = gpu_wait_s
    write_json(args.out, result)
    print(
        f"{result['device_name']} {args.dtype}: {result['bandwidth_gb_s']:.1f} GB/s copy, "
        f"{result['matmul_tflops']:.3f} TFLOP/s matmul -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
