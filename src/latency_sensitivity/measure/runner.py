"""The cell job: the runner's command line for one cell (model, dtype, backend, seq_len, batch), measured in this
process (``isolation: process``) or handed to a shared worker (``isolation: shared``, worker_pool.py), and the
cell's result file.

This is the one runner the measure rule calls, and the one the profiler rules wrap. It never exits non-zero
because a cell failed: an out-of-memory or any other exception becomes a result file with status `oom` or
`error`, so a sweep always finishes and shows where it broke. The measurement itself is cell.py's, imported only
where the cell is measured: a cell job that hands its cell to a worker imports little more than the standard
library.

Result file layout (JSON): schema_version, cell (the parameters), status, error (null or type, message,
phase, memory state), metrics (the columns of columns.py and telemetry summaries), samples (raw per-rep
timings), telemetry (NVML samples), environment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from latency_sensitivity import vocabulary
from latency_sensitivity.measure.host import process_age_s
from latency_sensitivity.vocabulary import (BACKENDS, CELL_SCHEMA_VERSION, COMPILE_SHAPES, COMPILED_STEPS,
                                            COMPILING_SETTINGS, DTYPES, ISOLATIONS, PLACEMENTS, PROFILE_MODES,
                                            WORKER_ISOLATIONS)

if TYPE_CHECKING:
    from latency_sensitivity.measure.model import CellSpec


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    """The runner's command line, checked (an argument error exits here, with argparse's message), with
    cpu_affinity as a list of CPUs or None. What a cell job that hands its cell to a worker needs; parse_args
    makes the cell's spec of it."""
    p = argparse.ArgumentParser(prog="python -m latency_sensitivity.measure.runner", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model name (for the record)")
    p.add_argument("--model-kind", choices=["architecture", "path"], required=True)
    p.add_argument("--model-location", required=True, help="architecture JSON or checkpoint folder")
    p.add_argument("--dtype", choices=sorted(DTYPES), required=True)
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
                   "started up already (worker.py); forked: the same, the worker forked from a fork server "
                   "(fork_server.py)")
    p.add_argument("--compile-shapes", choices=COMPILE_SHAPES, default=COMPILING_SETTINGS["compile_shapes"],
                   help="the compiled backend's step compiled for this batch size (static) or with the batch as "
                   "a dynamic dimension, one graph for every batch size of 2 or more (dynamic_batch)")
    p.add_argument("--compiled-step", choices=COMPILED_STEPS, default=COMPILING_SETTINGS["compiled_step"],
                   help="the compiled backend's step compiled ahead of time once and saved in the compile cache's "
                   "steps folder, later processes loading it without a trace (saved; needs --compile-cache), or "
                   "traced by torch.compile in each process (traced)")
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
    if a.compiled_step == "saved" and not a.compile_cache:
        p.error("--compiled-step saved needs --compile-cache (the saved steps live in its folder)")
    if a.profile_mode == "torch" and a.torch_profile_dir is None:
        p.error("--profile-mode torch needs --torch-profile-dir")
    a.cpu_affinity = None if a.cpu_affinity in ("", "none") else [int(c) for c in a.cpu_affinity.split(",")]
    return a


def parse_args(argv: list[str] | None = None) -> tuple[CellSpec, Path, str, Path | None, Path | None, str | None]:
    """The cell and the runner's options: (spec, out, profile_mode, torch_profile_dir, tokenizer, compile_cache)."""
    a = parse_options(argv)
    return spec_of(a), a.out, a.profile_mode, a.torch_profile_dir, a.tokenizer, a.compile_cache


def spec_of(a: argparse.Namespace) -> CellSpec:
    """The cell's spec from the runner's options (parse_options)."""
    from latency_sensitivity.measure.model import CellSpec

    return CellSpec(
        model=a.model, model_kind=a.model_kind, model_location=a.model_location, dtype=a.dtype,
        backend=a.backend, device=a.device, attn_implementation=a.attn_implementation, seq_len=a.seq,
        batch=a.batch, gen_tokens=a.gen_tokens, warmup=a.warmup, reps=a.reps, seed=a.seed, threads=a.threads,
        replicate=a.replicate, isolation=a.isolation, compile_shapes=a.compile_shapes, placement=a.placement,
        compiled_step=a.compiled_step, cpu_affinity=a.cpu_affinity,
    )


def _ensure_torch_profile_files(folder: Path) -> None:
    """A cell that failed before its measured reps still leaves a (empty) trace and op table: failure is data."""
    import gzip

    from latency_sensitivity.atomic import write_text
    from latency_sensitivity.measure.probes import op_table_csv

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "trace.json.gz").exists():
        tmp = folder / ".trace.json.gz.tmp"
        with gzip.open(tmp, "wt") as fh:
            fh.write('{"traceEvents": []}')
        os.replace(tmp, folder / "trace.json.gz")
    if not (folder / "ops.csv").exists():
        write_text(folder / "ops.csv", op_table_csv([]))


def measure_to_file(argv: list[str] | None = None, worker: dict | None = None, job_start: float | None = None,
                    models=None) -> int:
    """Measure the cell of the runner command line `argv` in this process and write its result file.

    worker: the record of the shared worker this runs in (worker.py), which has claimed the GPU already and
    froze its start-up's objects; None in a process of its own (``isolation: process``), which claims one here.
    job_start: when the cell's job started (epoch seconds), for `job_s`; None: this process's start. models: the
    worker's model keeper (model.ModelKeeper), None: the cell builds its model.
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
    if spec.compiled_step == "saved":  # the compile cache's folder for this device and versions
        from dataclasses import replace

        spec = replace(spec, saved_step_dir=cache["steps"])
    print(f"cell {spec.model} {spec.dtype} {spec.backend} seq={spec.seq_len} batch={spec.batch} on {spec.device}",
          file=sys.stderr)
    from latency_sensitivity.measure import cell  # after the compile cache is configured: before torch is imported

    cell_start = time.perf_counter()
    result = cell.measure(spec, profile_mode, torch_profile_dir, tokenizer, models=models,
                          startup_frozen=worker is not None)
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
    from dataclasses import asdict

    return {
        "schema_version": CELL_SCHEMA_VERSION, "cell": asdict(spec), "status": "error",
        "error": {"type": "WorkerError", "message": f"WorkerError during {phase}: {(message.splitlines() or [''])[0]}",
                  "phase": phase, "memory": None, "traceback": message},
        "metrics": {"job_s": job_s}, "samples": {}, "telemetry": {}, "environment": {}, "profile_mode": "off",
    }


def worker_fields(cell) -> dict:
    """What a shared worker's process must agree on with the cell (worker.worker_key): all but the cell's shape
    and the per-cell settings. `cell`: its spec, or the runner's options (parse_options), which name them alike."""
    return {k: getattr(cell, k) for k in ("model", "model_kind", "model_location", "dtype", "backend", "device",
                                          "attn_implementation", "threads", "cpu_affinity", "replicate",
                                          "isolation")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(argv)  # argument errors here, before a worker is asked
    if options.isolation not in WORKER_ISOLATIONS:
        return measure_to_file(argv)
    if options.profile_mode != "off":
        raise SystemExit(f"--isolation {options.isolation} measures in a worker process; a profiler wraps this "
                         "process: profile with --isolation process")
    # A thin client from here: the standard library and worker_pool, no dataclasses, no torch (its imports are
    # most of its hand-over; tests/measure/test_worker.py checks which it makes)
    from latency_sensitivity.measure import worker_pool

    job_start = time.time() - (process_age_s() or 0.0)
    try:
        reply = worker_pool.measure_in_worker({**worker_fields(options), "compile_cache": options.compile_cache},
                                              argv, job_start)
    except worker_pool.WorkerError as exc:
        reply = {"rc": 1, "log": str(exc)}
    print(reply["log"], end="", file=sys.stderr)
    if reply["rc"] != 0 or not options.out.exists():
        # the worker failed outside the cell's own try (or died): the cell is an error row, never a missing file
        from latency_sensitivity.atomic import write_json

        result = failed_result(spec_of(options), "worker", reply["log"] or f"the worker returned {reply['rc']}",
                               time.time() - job_start)
        write_json(options.out, result)
        _print_outcome(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
