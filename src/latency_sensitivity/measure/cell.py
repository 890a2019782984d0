"""One cell's measurement in this process: build the model and its backend, warm up, time the reps, and gather
what the cell records besides them (memory, telemetry, the kernel time, tokenisation, start-up parts).

`measure` never raises for a failed cell: an out-of-memory or any other exception becomes a result with status
`oom` or `error`. The cell job's command line, its result file and the hand-over to a shared worker are
runner.py's; a worker calls this module for each cell it is handed.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from latency_sensitivity.engine import decode_step, registry
from latency_sensitivity.engine.base import Clock
from latency_sensitivity.measure import host
from latency_sensitivity.measure.model import CellSpec, ModelKeeper, build_model, make_prompt, model_config
from latency_sensitivity.measure.placement import Pad
from latency_sensitivity.measure import probes
from latency_sensitivity.measure.probes import _peak_rss_mb, _reset_peak_rss, cuda_memory_state, is_oom, torch_profiling
from latency_sensitivity.vocabulary import CELL_SCHEMA_VERSION, COMPILING_BACKENDS, PROFILE_MODES


# The host record (host.summary) copied into the metrics, so that the sweep table shows it per cell.
HOST_METRICS = ("cpus_allowed", "cpu_mhz_start", "cpu_mhz_end", "load_1m_start", "load_1m_end", "steal_s")


class Phase:
    """Which part of the cell is running, for error reports."""

    name = "start"


def measure(spec: CellSpec, profile_mode: str = "off", torch_profile_dir: Path | None = None,
            tokenizer: str | Path | None = None, models: ModelKeeper | None = None,
            startup_frozen: bool = False) -> dict:
    """Run the cell; always returns a result dict (status ok, oom or error).

    profile_mode: ``off`` (a measurement), ``external`` (nsys or ncu wrap this process: no NVML sampler
    and no torch.profiler kernel-time profile, which would compete with the profiler for CUPTI) or ``torch``
    (torch.profiler records the measured reps into `torch_profile_dir`).
    models: a worker's keeper of the model its cells share (ModelKeeper); None: the cell builds its own.
    startup_frozen: the caller froze its start-up's objects (gc.freeze) and keeps them frozen (a worker).
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
        "schema_version": CELL_SCHEMA_VERSION,
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
    # A process of its own, or a caller with nothing frozen, gets the collector back unfrozen. (The caller says
    # which: gc.get_freeze_count() walks every frozen object, some 0.04 s after torch's and the compiler's imports.)
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
        compiler_import_s = 0.0  # a compiling backend's compiler imports (about 0 in its worker, which paid them)
        if spec.backend in COMPILING_BACKENDS:
            decode_step.import_compiler()
            compiler_import_s = time.perf_counter() - t0 - model_code_s
        cuda_start = time.perf_counter()
        if cuda:
            torch.cuda.init()
            torch.empty(1, device="cuda")
        startup_s = time.perf_counter() - t0
        cuda_init_s = time.perf_counter() - cuda_start
        # What the imports made is never garbage (a collection here finds nothing unreachable): it leaves the
        # collector's reach now, so the full collection after backend setup walks only what this cell made.
        gc.freeze()

        # With placement by_replicate a later replicate holds a buffer while its model (where the cell builds it)
        # and backend are allocated, so they land elsewhere on the device (placement.py); it is freed before the
        # warmup.
        pad = Pad(spec.placement, spec.replicate, cuda).hold()
        result["placement_pad_mb"] = pad.mib

        phase.name = "model_build"
        t0 = time.perf_counter()
        with nvtx_range("model_build"):
            if models is not None:  # a worker's: the model its earlier cell built, where it is unchanged
                model, result["model_from"], changed = models.take(spec, cfg)
                if changed:
                    result["model_kept_changed"] = changed
                    print(f"model built afresh: the kept one changed form ({changed})", file=sys.stderr)
            else:
                model, result["model_from"] = build_model(spec, cfg), "built"
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
        m.update(import_s=import_s, environment_s=environment_s, model_code_s=model_code_s,
                 compiler_import_s=compiler_import_s, cuda_init_s=cuda_init_s)
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
            if warm["kernel_time_parts"]:  # the profiler's seconds by part, the device's wait included
                result["kernel_time_parts"] = {n: round(v, 6) for n, v in warm["kernel_time_parts"].items()}
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
        # A failed cell may have let go what a worker had frozen as outliving its cells (the kept model, the
        # compiled step, which a failed setup forgets): the collector gets it all back, and the worker's collection
        # after the cell walks it once and freezes what survives (worker._release_memory).
        if not startup_frozen or result["status"] != "ok":
            gc.unfreeze()
        if pad is not None:
            pad.release()
        if backend is not None:
            backend.close()  # undoes its changes to the model
        if models is not None:
            models.keep(model, ok=result["status"] == "ok")
        del model, prompt, backend, pad
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    return result


# The oldest generation's threshold while a cell measures: a full collection would need this many collections
# of the middle generation first, which no cell makes.
NO_FULL_COLLECTION = 2**30


def backend_options(spec: CellSpec) -> dict:
    """The backend's keyword options the cell's settings ask for (registry.make)."""
    options: dict = {}
    if spec.backend in COMPILING_BACKENDS and spec.compile_shapes == "dynamic_batch":
        options["dynamic_batch"] = True
    if spec.backend in COMPILING_BACKENDS and spec.compiled_step == "saved":
        if not spec.saved_step_dir:
            raise ValueError("compiled_step saved: no folder for saved steps (the runner sets it from its "
                             "--compile-cache)")
        options["saved_step_dir"] = spec.saved_step_dir
    return options
