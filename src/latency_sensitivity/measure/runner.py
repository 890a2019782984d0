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
from latency_sensitivity.measure.probes import PROFILE_MODES, _peak_rss_mb, _reset_peak_rss, cuda_memory_state, gpu_busy, is_oom, op_table_csv, torch_profiling
from latency_sensitivity.vocabulary import BACKENDS


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
    and no torch.profiler kernel-time pass, which would compete with the profiler for CUPTI) or ``torch``
    (torch.profiler records the measured reps into `torch_profile_dir`).
    """
    if profile_mode not in PROFILE_MODES:
        raise ValueError(f"profile_mode must be one of {PROFILE_MODES}, not {profile_mode!r}")
    import torch

    from latency_sensitivity.measure import environment
    from latency_sensitivity.analysis import memory_model
    from latency_sensitivity.analysis import metrics
    from latency_sensitivity.measure.telemetry import GpuSampler, energy_per_token_j
    from latency_sensitivity.engine.nvtx import nvtx_range

    torch.set_num_threads(spec.threads)
    env = environment.collect(spec.device)
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
    model = prompt = backend = None
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
        if cuda:
            torch.cuda.init()
            torch.empty(1, device="cuda")
        startup_s = time.perf_counter() - t0

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
            backend = registry.make(spec.backend, model, prompt, spec.gen_tokens, clock)
        result["backend_info"] = backend.info()
        # Everything alive now (the model, the backend, torch.compile's code and caches) leaves the garbage
        # collector's reach for the reps, as vLLM does after its graph capture: otherwise each full collection
        # walks it all in the middle of a rep, which slowed a host-bound eager prefill after a compiled backend
        # had run in the process (benchmarks/decode_target/NOTES.md, "Prefill after compiling").
        gc.collect()
        gc.freeze()

        phase.name = "warmup"
        t0 = time.perf_counter()
        with torch.inference_mode(), nvtx_range("warmup"):
            for i in range(spec.warmup):
                backend.request(prompt, spec.gen_tokens, clock, f"warmup{i}")
        warmup_s = time.perf_counter() - t0

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
                measured_start = time.perf_counter()
                for i in range(spec.reps):
                    p, t, steps, e = backend.request(prompt, spec.gen_tokens, clock, f"rep{i}")
                    samples["prefill_ms"].append(p)
                    samples["ttft_ms"].append(t)
                    samples["decode_step_ms"].append(steps)
                    samples["e2e_ms"].append(e)
                measured_s = time.perf_counter() - measured_start
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
        m["startup_s"] = startup_s
        m["model_build_s"] = build_s
        m["warmup_s"] = warmup_s
        m["measured_s"] = measured_s
        m["backend_setup_s"] = backend.setup_s
        m["backend_compile_s"] = result["backend_info"].get("compile_s")
        m.update({key: result["host"][key] for key in HOST_METRICS})
        m["decode_attention"] = result["backend_info"].get("decode_attention", spec.attn_implementation)
        if tokenizer is not None:
            # Host-side stages of a request, timed on texts of the cell's shape (auxiliary: a failure is noted).
            try:
                from latency_sensitivity.measure import tokenization

                tok = tokenization.measure(tokenization.load_tokenizer(tokenizer), spec.batch, spec.seq_len,
                                           spec.gen_tokens, spec.reps, spec.seed)
                samples["tokenize_ms"] = tok.pop("samples")["tokenize_ms"]
                m.update({k: v for k, v in tok.items() if k != "tokenizer_vocab_size"})
                m["request_p50_ms"] = m["tokenize_p50_ms"] + m["e2e_p50_ms"] + m["detokenize_p50_ms"]
                result["tokenizer"] = {"path": str(tokenizer), "vocab_size": tok["tokenizer_vocab_size"]}
            except Exception as exc:  # noqa: BLE001
                result["tokenization_error"] = f"{type(exc).__name__}: {exc}"
                print(f"tokenisation not measured: {result['tokenization_error']}", file=sys.stderr)
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
        if cuda and profile_mode == "off":
            # Auxiliary: a failure here is recorded and the measured numbers are kept.
            try:
                with torch.inference_mode(), nvtx_range("kernel_time"):
                    k = gpu_busy(backend, prompt, spec.gen_tokens, clock)
                m.update(k)
                m["prefill_gpu_busy"] = k["prefill_kernel_ms"] / m["prefill_p50_ms"]
                m["decode_gpu_busy"] = k["decode_kernel_ms_per_step"] / m["decode_p50_ms_per_tok"]
            except Exception as exc:  # noqa: BLE001
                result["kernel_time_error"] = f"{type(exc).__name__}: {exc}"
                print(f"kernel time not measured: {result['kernel_time_error']}", file=sys.stderr)
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
        gc.unfreeze()
        if backend is not None:
            backend.close()
        del model, prompt, backend
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    return result


def parse_args(argv: list[str] | None = None) -> tuple[CellSpec, Path]:
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
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (or a folder with one): also time tokenising "
                   "the batch's texts and detokenising its generated ids")
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
        replicate=a.replicate,
        cpu_affinity=None if a.cpu_affinity in ("", "none") else [int(c) for c in a.cpu_affinity.split(",")],
    )
    return spec, a.out, a.profile_mode, a.torch_profile_dir, a.tokenizer


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


def main(argv: list[str] | None = None) -> int:
    from latency_sensitivity.atomic import write_json

    spec, out, profile_mode, torch_profile_dir, tokenizer = parse_args(argv)
    from latency_sensitivity.measure.gpu_slots import claim_for

    claim = claim_for(spec.device)  # before CUDA starts: this cell gets a GPU of its own
    print(f"cell {spec.model} {spec.dtype} {spec.backend} seq={spec.seq_len} batch={spec.batch} on {spec.device}",
          file=sys.stderr)
    result = measure(spec, profile_mode, torch_profile_dir, tokenizer)
    if profile_mode == "torch":
        _ensure_torch_profile_files(Path(torch_profile_dir))
    # The job's whole wall time, from the process's start (interpreter and imports included) to its result:
    # what the GPU is held for, against measured_s, what it measures.
    result.setdefault("metrics", {})["job_s"] = process_age_s()
    if claim is not None:
        result["gpu_slot"] = {"device": claim.device, "devices": list(claim.devices), "waited_s": claim.waited_s}
    write_json(out, result)
    m = result["metrics"]
    if result["status"] == "ok":
        print(f"prefill p50 {m['prefill_p50_ms']:.3f} ms, decode p50 {m['decode_p50_ms_per_tok']:.3f} ms/step, "
              f"total {m['total_tok_s']:.1f} tok/s", file=sys.stderr)
    else:
        print(f"cell {result['status']}: {result['error']['message']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
