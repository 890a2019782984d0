"""Measure one cell (model, dtype, backend, seq_len, batch) and write its result file.

This is the one runner the measure rule calls, and the one the profiler rules wrap. It never exits non-zero
because a cell failed: an out-of-memory or any other exception becomes a result file with status `oom` or
`error`, so a sweep always finishes and shows where it broke.

Result file layout (JSON): schema_version, cell (the parameters), status, error (null or type, message,
phase, memory state), metrics (the columns of columns.py and telemetry summaries), samples (raw per-rep
timings), telemetry (NVML samples), environment.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from latency_sensitivity import vocabulary
from latency_sensitivity.engine import registry
from latency_sensitivity.engine.base import Clock
from latency_sensitivity.measure import host
from latency_sensitivity.measure.model import CellSpec, TORCH_DTYPES, build_model, make_prompt, model_config
from latency_sensitivity.measure.placement import Pad
from latency_sensitivity.measure import probes
from latency_sensitivity.measure.probes import PROFILE_MODES, _peak_rss_mb, _reset_peak_rss, cuda_memory_state, is_oom, op_table_csv, torch_profiling
from latency_sensitivity.vocabulary import BACKENDS, COMPILE_SHAPES, COMPILING_BACKENDS, ISOLATIONS, PLACEMENTS


# Nothing may reach a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


SCHEMA_VERSION = 1
# The host record (host.summary) copied into the metrics, so that the sweep table shows it per cell.
HOST_METRICS = ("cpus_allowed", "cpu_mhz_start", "cpu_mhz_end", "load_1m_start", "load_1m_end", "steal_s")


class Phase:
    """Which part of the cell is running, for error reports."""

    name = "start"


def measure(spec: CellSpec, profile_mode: str = "off", torch_profile_dir: Path | None = None,
            tokenizer: str | Path | None = None) -> dict:
    """Run the cell; always returns a result dict (status ok, oom or error).

    profile_mode: ``off`` (a measurement), ``external`` (nsys or ncu wrap this process: no NVML sampler
    and no torch.profiler kernel-time profile, which would compete with the profiler for CUPTI) or ``torch``
    (torch.profiler records the measured reps into `torch_profile_dir`).
    """
    if profile_mode not in PROFILE_MODES:
        raise ValueError(f"profile_mode must be one of {PROFILE_MODES}, not {profile_mode!r}")
    import_start = time.perf_counter()
    import torch

    from latency_sensitivity.measure import environment
    from latency_sensitivity.analysis import memory_model
    from latency_sensitivity.analysis import metrics
    from latency_sensitivity.measure.telemetry import GpuSampler, energy_per_token_j
    from latency_sensitivity.engine.nvtx import nvtx_range

    import_s = time.perf_counter() - import_start  # 0 where a worker imported them already
    torch.set_num_threads(spec.threads)
    environment_start = time.perf_counter()
    env = environment.collect(spec.device)
    environment_s = time.perf_counter() - environment_start
    result: dict = {
        "schema_version": SCHEMA_VERSION,
        "cell": asdict(spec),
        "status": "ok",
        "error": None,
        "metrics": {},
        "samples": {},
        "telemetry": {},
        "environment": env,
        "profile_mode": profile_mode,
    }
    phase = Phase()
    model = prompt = backend = pad = None
    # A shared worker freezes its start-up once (worker.py); a cell then leaves frozen what it found frozen (and
    # what its own start-up froze), so that the worker's collection after the cell walks only what the cell made.
    # A process of its own, or a caller with nothing frozen, gets the collector back unfrozen.
    frozen_before = gc.get_freeze_count() > 0
    thresholds = gc.get_threshold()
    try:
        if spec.cpu_affinity:  # first, before torch starts its threads (they inherit it)
            host.pin(spec.cpu_affinity)
        cuda = spec.device == "cuda"
        if cuda and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for (config measure.device) but torch sees no CUDA device")
        clock = Clock(cuda)

        # Imports and the CUDA context are start-up, not model build.
        phase.name = "startup"
        t0 = time.perf_counter()
        cfg = model_config(spec)
        model_code_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.init()
            torch.empty(1, device="cuda")
        startup_s = time.perf_counter() - t0
        cuda_init_s = startup_s - model_code_s
        # What the imports made is never garbage (a collection here finds nothing unreachable): it leaves the
        # collector's reach now, so the full collection after backend setup walks only what this cell made.
        gc.freeze()

        # With placement by_replicate a later replicate holds a buffer while its model and backend are allocated,
        # so they land elsewhere on the device (placement.py); it is freed before the warmup.
        pad = Pad(spec.placement, spec.replicate, cuda).hold()
        result["placement_pad_mb"] = pad.mib

        phase.name = "model_build"
        t0 = time.perf_counter()
        with nvtx_range("model_build"):
            model = build_model(spec, cfg)
            clock.sync()
        build_s = time.perf_counter() - t0
        weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        arch = model.config.to_dict()
        result["architecture"] = {k: v for k, v in arch.items() if isinstance(v, (int, float, str, bool, type(None)))}
        prompt = make_prompt(spec, model.config.vocab_size)

        # The backend's per-cell setup (static cache, graph capture) is timed apart from every rep.
        phase.name = "backend_setup"
        with nvtx_range("backend_setup"):
            backend = registry.make(spec.backend, model, prompt, spec.gen_tokens, clock, **backend_options(spec))
        result["backend_info"] = backend.info()
        pad.release()
        # No full collection walks what is alive now (the model, the backend, torch.compile's code and caches) in
        # the middle of a rep: it slowed a host-bound eager prefill after a compiled backend had run in the process
        # (benchmarks/decode_target/NOTES.md, "Prefill after compiling"). The collection first frees what setup left
        # in reference cycles (it does not walk the start-up's objects, frozen above) and leaves the survivors in the
        # oldest generation; until the cell ends only the young generations are collected, as often as before, so
        # what a request leaves in reference cycles is freed as it was (CPython's generational collector: 3.11, 3.12).
        gc.collect()
        gc.set_threshold(thresholds[0], thresholds[1], NO_FULL_COLLECTION)

        # The kernel time (GPU busy) is taken from a warmup request where the cell has enough of them (probes.warm_up),
        # else from a pass after the reps.
        kernel_time = cuda and profile_mode == "off"
        profiled = probes.kernel_time_warmup_request(spec.warmup) if kernel_time else None
        phase.name = "warmup"
        with torch.inference_mode(), nvtx_range("warmup"):
            warm = probes.warm_up(backend, prompt, spec.gen_tokens, spec.warmup, clock, profiled)
        if warm["error"]:
            result["kernel_time_error"] = warm["error"]
            print(f"kernel time not measured (warmup request {profiled} was run again without the profiler): "
                  f"{warm['error']}", file=sys.stderr)

        # Peak counters cover the measured reps only.
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rss_reset = _reset_peak_rss()
        samples = {"prefill_ms": [], "ttft_ms": [], "decode_step_ms": [], "e2e_ms": []}
        device_index = torch.cuda.current_device() if cuda else 0
        sampler = GpuSampler(device_index) if cuda and profile_mode == "off" else None
        phase.name = "measure"
        host_start = host.snapshot()
        if sampler:
            sampler.start()
        try:
            profiling = (torch_profiling(torch_profile_dir, cuda) if profile_mode == "torch"
                         else contextlib.nullcontext())
            with torch.inference_mode(), nvtx_range("measured"), profiling:
                full_collections = gc.get_stats()[-1]["collections"]
                measured_start = time.perf_counter()
                for i in range(spec.reps):
                    p, t, steps, e = backend.request(prompt, spec.gen_tokens, clock, f"rep{i}")
                    samples["prefill_ms"].append(p)
                    samples["ttft_ms"].append(t)
                    samples["decode_step_ms"].append(steps)
                    samples["e2e_ms"].append(e)
                measured_s = time.perf_counter() - measured_start
                full_collections = gc.get_stats()[-1]["collections"] - full_collections
        finally:
            if sampler:
                sampler.stop()
        result["host"] = host.summary(host_start, host.snapshot(), spec.cpu_affinity)

        m = metrics.latency_metrics(
            samples["prefill_ms"], samples["ttft_ms"], samples["decode_step_ms"], samples["e2e_ms"],
            batch=spec.batch, seq_len=spec.seq_len, gen_tokens=spec.gen_tokens,
        )
        mib = 2**20
        m["vram_reserved_mb"] = torch.cuda.max_memory_reserved() / mib if cuda else 0.0
        m["vram_allocated_mb"] = torch.cuda.max_memory_allocated() / mib if cuda else 0.0
        m["peak_rss_mb"] = _peak_rss_mb()
        m["peak_rss_covers_measured_reps_only"] = rss_reset
        m["weights_mb"] = weights_bytes / mib
        m["placement_pad_mb"] = pad.mib
        m["startup_s"] = startup_s
        m.update(import_s=import_s, environment_s=environment_s, model_code_s=model_code_s, cuda_init_s=cuda_init_s)
        m["model_build_s"] = build_s
        m["warmup_s"] = warm["warmup_s"]
        m["measured_s"] = measured_s
        m["gc_full_collections"] = full_collections
        m["backend_setup_s"] = backend.setup_s
        m["backend_compile_s"] = result["backend_info"].get("compile_s")
        m.update({key: result["host"][key] for key in HOST_METRICS})
        m["decode_attention"] = result["backend_info"].get("decode_attention", spec.attn_implementation)
        side_start = time.perf_counter()
        if tokenizer is not None:
            # Host-side stages of a request, timed on texts of the cell's shape (auxiliary: a failure is noted).
            try:
                from latency_sensitivity.measure import tokenization

                tok = tokenization.measure(tokenization.tokenizer_for(tokenizer), spec.batch, spec.seq_len,
                                           spec.gen_tokens, spec.reps, spec.seed)
                samples["tokenize_ms"] = tok.pop("samples")["tokenize_ms"]
                m.update({k: v for k, v in tok.items() if k != "tokenizer_vocab_size"})
                m["request_p50_ms"] = m["tokenize_p50_ms"] + m["e2e_p50_ms"] + m["detokenize_p50_ms"]
                result["tokenizer"] = {"path": str(tokenizer), "vocab_size": tok["tokenizer_vocab_size"]}
            except Exception as exc:  # noqa: BLE001
                result["tokenization_error"] = f"{type(exc).__name__}: {exc}"
                print(f"tokenisation not measured: {result['tokenization_error']}", file=sys.stderr)
        m["tokenization_s"] = time.perf_counter() - side_start
        try:
            predicted = memory_model.predicted_memory(
                memory_model.Architecture.from_config(arch), spec.dtype, spec.batch, spec.seq_len,
                spec.gen_tokens, spec.attn_implementation,
            )
            m["predicted_memory_mb"] = predicted["predicted_memory_mb"]
            m["kv_cache_mb"] = predicted["kv_cache_mb"]
        except ValueError as exc:  # an architecture the memory model does not cover
            m["predicted_memory_mb"] = math.nan
            m["kv_cache_mb"] = math.nan
            result["memory_model_error"] = str(exc)
        if kernel_time:
            # Auxiliary: a failure is recorded and the measured numbers are kept.
            k = warm["kernel"]
            m["kernel_time_s"] = warm["kernel_time_s"]
            if profiled is None:
                kernel_start = time.perf_counter()
                try:
                    with torch.inference_mode(), nvtx_range("kernel_time"):
                        k = probes.gpu_busy(backend, prompt, spec.gen_tokens, clock)
                except Exception as exc:  # noqa: BLE001
                    result["kernel_time_error"] = f"{type(exc).__name__}: {exc}"
                    print(f"kernel time not measured: {result['kernel_time_error']}", file=sys.stderr)
                m["kernel_time_s"] = time.perf_counter() - kernel_start
            if k is not None:
                m.update(k)
                m["kernel_time_request"] = "after_reps" if profiled is None else f"warmup{profiled}"
                m["prefill_gpu_busy"] = k["prefill_kernel_ms"] / m["prefill_p50_ms"]
                m["decode_gpu_busy"] = k["decode_kernel_ms_per_step"] / m["decode_p50_ms_per_tok"]
        if sampler:
            summary = sampler.summary()
            m.update(summary)
            m["device_used_mb"] = summary.get("device_used_max_mb")
            tokens = spec.reps * spec.batch * spec.gen_tokens
            m["energy_j_per_token"] = energy_per_token_j(summary, tokens)
            result["telemetry"] = {"available": sampler.available, "reason": sampler.reason,
                                   "samples": sampler.samples}
        result["metrics"] = m
        result["samples"] = samples
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded row
        oom = is_oom(exc)
        result["status"] = "oom" if oom else "error"
        result["error"] = {
            "type": type(exc).__name__,
            "message": f"{type(exc).__name__} during {phase.name}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "phase": phase.name,
            "memory": cuda_memory_state(),
            "traceback": traceback.format_exc(),
        }
        print(traceback.format_exc(), file=sys.stderr)
    finally:
        gc.set_threshold(*thresholds)
        if not frozen_before:
            gc.unfreeze()
        if pad is not None:
            pad.release()
        if backend is not None:
            backend.close()
        del model, prompt, backend, pad
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    return result


# The oldest generation's threshold while a cell measures: a full collection would need this many collections
# of the middle generation first, which no cell makes.
NO_FULL_COLLECTION = 2**30


def parse_args(argv: list[str] | None = None) -> tuple[CellSpec, Path, str, Path | None, Path | None, str | None]:
    """The cell and the runner's options: (spec, out, profile_mode, torch_profile_dir, tokenizer, compile_cache)."""
    p = argparse.ArgumentParser(prog="python -m latency_sensitivity.measure.runner", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model name (for the record)")
    p.add_argument("--model-kind", choices=["architecture", "path"], required=True)
    p.add_argument("--model-location", required=True, help="architecture JSON or checkpoint folder")
    p.add_argument("--dtype", choices=sorted(TORCH_DTYPES), required=True)
    p.add_argument("--backend", choices=BACKENDS, default="eager", help=vocabulary.describe())
    p.add_argument("--device", choices=["cpu", "cuda"], required=True)
    p.add_argument("--attn-implementation", default="sdpa")
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--gen-tokens", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--reps", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu-affinity", default="none", help="CPUs to pin the process to, e.g. 2 or 2,3 (none: as started)")
    p.add_argument("--replicate", type=int, default=1, help="which of the cell's replicates this process measures")
    p.add_argument("--isolation", choices=ISOLATIONS, default="process",
                   help="process: measure in this process; shared: hand the cell to a worker process that has "
                   "started up already (worker.py)")
    p.add_argument("--compile-shapes", choices=COMPILE_SHAPES, default="static",
                   help="the compiled backend's step compiled for this batch size (static) or with the batch as "
                   "a dynamic dimension, one graph for every batch size of 2 or more (dynamic_batch)")
    p.add_argument("--placement", choices=PLACEMENTS, default="fixed",
                   help="on CUDA: the model and cache as allocated (fixed), or moved by a buffer whose size the "
                   "replicate sets, held while they are allocated (by_replicate)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (or a folder with one): also time tokenising "
                   "the batch's texts and detokenising its generated ids")
    p.add_argument("--compile-cache", help="folder for inductor's and Triton's caches, one subfolder per device "
                   "and versions (compile_cache.py); default: torch's own (under /tmp)")
    p.add_argument("--profile-mode", choices=PROFILE_MODES, default="off",
                   help="off: measure; external: run under nsys/ncu; torch: record a torch.profiler trace")
    p.add_argument("--torch-profile-dir", type=Path, help="where --profile-mode torch writes its trace")
    a = p.parse_args(argv)
    for name in ("seq", "batch", "reps", "threads", "replicate"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.gen_tokens < 2 or a.warmup < 0:
        p.error("--gen-tokens must be >= 2 and --warmup >= 0")
    if a.profile_mode == "torch" and a.torch_profile_dir is None:
        p.error("--profile-mode torch needs --torch-profile-dir")
    spec = CellSpec(
        model=a.model, model_kind=a.model_kind, model_location=a.model_location, dtype=a.dtype,
        backend=a.backend, device=a.device, attn_implementation=a.attn_implementation, seq_len=a.seq,
        batch=a.batch, gen_tokens=a.gen_tokens, warmup=a.warmup, reps=a.reps, seed=a.seed, threads=a.threads,
        replicate=a.replicate, isolation=a.isolation, compile_shapes=a.compile_shapes, placement=a.placement,
        cpu_affinity=None if a.cpu_affinity in ("", "none") else [int(c) for c in a.cpu_affinity.split(",")],
    )
    return spec, a.out, a.profile_mode, a.torch_profile_dir, a.tokenizer, a.compile_cache


def _ensure_torch_profile_files(folder: Path) -> None:
    """A cell that failed before its measured reps still leaves a (empty) trace and op table: failure is data."""
    import gzip

    from latency_sensitivity.atomic import write_text

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "trace.json.gz").exists():
        tmp = folder / ".trace.json.gz.tmp"
        with gzip.open(tmp, "wt") as fh:
            fh.write('{"traceEvents": []}')
        os.replace(tmp, folder / "trace.json.gz")
    if not (folder / "ops.csv").exists():
        write_text(folder / "ops.csv", op_table_csv([]))


def process_age_s() -> float | None:
    """Seconds since this process started, as Linux records it (/proc/self/stat's start time against
    /proc/uptime, to the clock tick); None elsewhere."""
    try:
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def measure_to_file(argv: list[str] | None = None, worker: dict | None = None, job_start: float | None = None) -> int:
    """Measure the cell of the runner command line `argv` in this process and write its result file.

    worker: the record of the shared worker this runs in (worker.py), which has claimed the GPU already; None
    in a process of its own (``isolation: process``), which claims one here. job_start: when the cell's job
    started (epoch seconds), for `job_s`; None: this process's start.
    """
    from latency_sensitivity.atomic import write_json

    spec, out, profile_mode, torch_profile_dir, tokenizer, cache_root = parse_args(argv)
    claim = None
    if worker is None:
        from latency_sensitivity.measure import compile_cache
        from latency_sensitivity.measure.gpu_slots import claim_for

        claim = claim_for(spec.device)  # before CUDA starts: this cell gets a GPU of its own
        cache = compile_cache.configure(cache_root, spec.device)  # before torch is imported
    else:
        cache = worker["compile_cache"]
    print(f"cell {spec.model} {spec.dtype} {spec.backend} seq={spec.seq_len} batch={spec.batch} on {spec.device}",
          file=sys.stderr)
    cell_start = time.perf_counter()
    result = measure(spec, profile_mode, torch_profile_dir, tokenizer)
    m = result.setdefault("metrics", {})
    m["cell_s"] = time.perf_counter() - cell_start
    result["compile_cache"] = cache
    if profile_mode == "torch":
        _ensure_torch_profile_files(Path(torch_profile_dir))
    # The job's whole wall time, from its process's start (interpreter and imports included) to its result:
    # what the GPU is held for, against measured_s, what it measures.
    m["job_s"] = time.time() - job_start if job_start is not None else process_age_s()
    result["worker"] = worker or {"isolation": "process", "pid": os.getpid(), "cells_before": 0}
    m["cells_before"] = result["worker"]["cells_before"]
    m["worker_start_s"] = result["worker"].get("worker_start_s", 0.0)
    if claim is not None:
        result["gpu_slot"] = {"device": claim.device, "devices": list(claim.devices), "waited_s": claim.waited_s}
    elif worker and "gpu_slot" in worker:
        result["gpu_slot"] = worker["gpu_slot"]
    write_json(out, result)
    _print_outcome(result)
    return 0


def _print_outcome(result: dict) -> None:
    m = result["metrics"]
    if result["status"] == "ok":
        print(f"prefill p50 {m['prefill_p50_ms']:.3f} ms, decode p50 {m['decode_p50_ms_per_tok']:.3f} ms/step, "
              f"total {m['total_tok_s']:.1f} tok/s", file=sys.stderr)
    else:
        print(f"cell {result['status']}: {result['error']['message']}", file=sys.stderr)


def failed_result(spec: CellSpec, phase: str, message: str, job_s: float | None) -> dict:
    """The result of a cell that could not be measured at all (its worker failed): an `error` row."""
    return {
        "schema_version": SCHEMA_VERSION, "cell": asdict(spec), "status": "error",
        "error": {"type": "WorkerError", "message": f"WorkerError during {phase}: {(message.splitlines() or [''])[0]}",
                  "phase": phase, "memory": None, "traceback": message},
        "metrics": {"job_s": job_s}, "samples": {}, "telemetry": {}, "environment": {}, "profile_mode": "off",
    }


def backend_options(spec: CellSpec) -> dict:
    """The backend's keyword options the cell's settings ask for (registry.make)."""
    if spec.backend in COMPILING_BACKENDS and spec.compile_shapes == "dynamic_batch":
        return {"dynamic_batch": True}
    return {}


def worker_fields(spec: CellSpec) -> dict:
    """What a shared worker's process must agree on with the cell (worker.worker_key): all but the cell's shape
    and the per-cell settings."""
    return {k: getattr(spec, k) for k in ("model", "model_kind", "model_location", "dtype", "backend", "device",
                                          "attn_implementation", "threads", "cpu_affinity", "replicate")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    spec, out, profile_mode, _, _, cache_root = parse_args(argv)  # argument errors here, before a worker is asked
    if spec.isolation == "process":
        return measure_to_file(argv)
    if profile_mode != "off":
        raise SystemExit("--isolation shared measures in a worker process; a profiler wraps this process: "
                         "profile with --isolation process")
    from latency_sensitivity.atomic import write_json
    from latency_sensitivity.measure import worker_pool

    job_start = time.time() - (process_age_s() or 0.0)
    try:
        reply = worker_pool.measure_in_worker({**worker_fields(spec), "compile_cache": cache_root}, argv, job_start)
    except worker_pool.WorkerError as exc:
        reply = {"rc": 1, "log": str(exc)}
    print(reply["log"], end="", file=sys.stderr)
    if reply["rc"] != 0 or not out.exists():
        # the worker failed outside the cell's own try (or died): the cell is an error row, never a missing file
        result = failed_result(spec, "worker", reply["log"] or f"the worker returned {reply['rc']}",
                               time.time() - job_start)
        write_json(out, result)
        _print_outcome(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
