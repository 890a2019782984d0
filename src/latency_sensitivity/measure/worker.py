"""A measurement worker: the process that measures the cells handed to it (``measure.isolation: shared``).

How cells find it, what it shares between cells and when it exits: worker_pool.py.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from latency_sensitivity.engine import decode_step
from latency_sensitivity.measure.model import ModelKeeper
from latency_sensitivity.measure.worker_pool import IDLE_S, _send, claim_markers, key_digest, serve_unix, server_main
from latency_sensitivity.vocabulary import COMPILING_BACKENDS


def import_measuring_code() -> None:
    """The imports every measuring process pays before its first cell (a worker's start-up, the fork server's)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from latency_sensitivity.measure import cell, runner  # noqa: F401


class Worker:
    def __init__(self, socket_path: str, key: dict, state: Path, forked_from: dict | None = None):
        """forked_from: in a worker forked by the fork server (fork_server.py), the server's pid, its imports'
        seconds, its compile cache record (the environment the child inherited has it set) and whether it
        imported torch's compiler; None in a freshly started one."""
        self.socket_path, self.key, self.state = socket_path, key, Path(state)
        self.forked_from = forked_from
        self.digest = key_digest(key)
        self.fields = key["fields"]
        self.cwd = key["cwd"]
        self.started = time.time()
        self.cells = 0
        self.release_s: float | None = None  # the last cell's clean-up after its reply (_release_memory)
        self.startup_s = None
        self.claim = None
        self.compile_cache = None
        self.startup_parts: dict = {}
        self.first_use_error = None
        self.models = ModelKeeper()  # the model the worker's cells share, built by the first of them
        self.registry = self.state / "registry" / f"{self.digest}-{os.path.basename(socket_path)}.json"

    def start_up(self) -> None:
        """What a cell job would pay each time: a GPU slot, the imports, the model's code, the CUDA context (each
        timed, in self.startup_parts)."""
        t0 = mark = time.perf_counter()
        parts = {}

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            parts[name] = now - mark
            mark = now

        from latency_sensitivity.measure import compile_cache, gpu_slots

        # (the client that started it asked the idle workers of other keys to exit already)
        self.claim = gpu_slots.claim_for(self.fields.get("device", "cpu"), ask_idle_workers=False)
        # before torch is imported, as in a cell's own process (a forked worker's server did it before its imports)
        if self.forked_from is not None:
            self.compile_cache = self.forked_from["compile_cache"]
        else:
            self.compile_cache = compile_cache.configure(self.fields.get("compile_cache"),
                                                         self.fields.get("device", "cpu"))
        if self.fields.get("cpu_affinity"):
            from latency_sensitivity.measure import host

            host.pin(self.fields["cpu_affinity"])
        lap("gpu_claim_s")
        import_measuring_code()
        import torch

        from latency_sensitivity.measure.model import model_config

        lap("import_s")
        # the model's transformers code (imported by its config): the same for every cell of this worker
        with contextlib.suppress(Exception):  # a model that cannot be read: its cells report it
            model_config(SimpleNamespace(**self.fields))
        lap("model_code_s")
        if self.fields.get("backend") in COMPILING_BACKENDS:  # its first compiled step's imports, paid once here
            decode_step.import_compiler()
            lap("compiler_import_s")
        cuda = self.fields.get("device") == "cuda" and torch.cuda.is_available()
        if cuda:
            torch.cuda.init()
            torch.empty(1, device="cuda")
        lap("cuda_init_s")
        if cuda:
            self.first_use_error = first_use(self.fields)
            lap("first_use_s")
        # What the start-up made is never garbage: out of the collector's reach for good, so that the collection
        # after each cell walks only what that cell made (cell.measure leaves this freeze as it finds it).
        gc.freeze()
        self.startup_parts = parts
        self.startup_s = time.perf_counter() - t0

    def should_exit(self, idle_since: float) -> str | None:
        if time.monotonic() - idle_since > IDLE_S:
            return f"idle for {IDLE_S:.0f} s"
        if not os.path.isdir(self.cwd):
            return "its working directory is gone"
        with contextlib.suppress(OSError):
            for marker, spared in claim_markers(self.state, self.fields.get("device", "cpu")):
                if spared is None:
                    return f"another process waits for a GPU ({marker.name})"
                if spared != self.digest:
                    return f"a worker of another key is starting ({marker.name})"
        return None

    def serve(self) -> None:
        self.start_up()
        parts = ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in self.startup_parts.items())
        reason = None
        try:
            # after each reply _release_memory, so that its job ends while the worker cleans up; a job that comes
            # meanwhile waits for it (its hand-over time shows that)
            reason = serve_unix(
                self.socket_path, self.registry, {"socket": self.socket_path, "pid": os.getpid(), "key": self.fields},
                f"worker pid {os.getpid()} listening on {self.socket_path} after {self.startup_s:.2f} s of "
                f"start-up ({parts})", self._serve_one, self.should_exit, after_each=self._release)
        finally:
            print(f"worker pid {os.getpid()} exits after {self.cells} cell(s): {reason}", file=sys.stderr,
                  flush=True)

    def _release(self) -> None:
        t0 = time.perf_counter()
        _release_memory()
        self.release_s = time.perf_counter() - t0

    def _serve_one(self, request: dict, conn: socket.socket, server: socket.socket) -> None:
        try:
            _send(conn, {"accepted": True, "key": self.digest, "pid": os.getpid()})
        except OSError:  # the job is gone already (killed): nothing to measure for
            return
        reply = self.handle(request)
        with contextlib.suppress(OSError):  # a job killed while its cell ran: the result file is written all the
            _send(conn, reply)              # same, and the worker serves the next

    def handle(self, request: dict) -> dict:
        from latency_sensitivity.measure import runner

        # worker_start_s: how long this cell's job waited for the worker to start (0 when it was running): a
        # one-time cost per worker, reported apart from the per-cell overhead. The rest of the hand-over in two
        # parts: picked_up_s, from the job's start to this worker taking its cell (the job's interpreter and
        # imports, reaching the worker, and waiting while it cleaned up after its cell before, which took
        # previous_release_s), and from here to the cell's start (the runner's own steps, before cell_s's clock)
        job_start = request.get("job_start")
        picked_up_s = time.time() - job_start if job_start is not None else None
        record = {"isolation": self.fields.get("isolation", "shared"), "pid": os.getpid(), "cells_before": self.cells,
                  "picked_up_s": picked_up_s, "previous_release_s": self.release_s,
                  "process_age_s": time.time() - self.started, "startup_s": self.startup_s,
                  "startup_parts": self.startup_parts, "first_use_error": self.first_use_error,
                  "worker_start_s": float(request.get("worker_start_s") or 0.0), "compile_cache": self.compile_cache}
        if self.forked_from is not None:
            record["forked_from"] = {k: self.forked_from.get(k) for k in ("pid", "import_s", "compiler")}
        if self.claim is not None:
            record["gpu_slot"] = {"device": self.claim.device, "devices": list(self.claim.devices),
                                  "waited_s": self.claim.waited_s}
        log = io.StringIO()
        try:
            with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
                rc = runner.measure_to_file(request["argv"], worker=record, job_start=request.get("job_start"),
                                             models=self.models)
        except SystemExit as exc:  # the runner's argument errors
            rc = exc.code if isinstance(exc.code, int) else 2
        except Exception:  # noqa: BLE001 - the client writes the error row
            import traceback

            log.write(traceback.format_exc())
            rc = 1
        finally:
            self.cells += 1
        sys.stderr.write(log.getvalue())
        sys.stderr.flush()
        return {"rc": rc, "log": log.getvalue(), "worker": record}


# The first request: the worker's model on its backend, at this shape (on CUDA).
FIRST_USE_SHAPE = {"batch": 1, "seq_len": 16, "gen_tokens": 4}


def first_use(fields: dict) -> str | None:
    """What a CUDA process pays once, paid in the worker's start-up rather than by its first cell: one small
    request through the worker's model on its backend (for compiled, its own batch-1 path without a compile:
    fused projections and, where they apply, the rewritten layers' Triton kernels; then the capture), then the
    model freed and its memory handed back. It loads the kernels the model calls (CUDA loads
    each on first use), creates the cuBLAS handle and workspace, reads what the libraries need from disk the first
    time on a machine, and runs transformers' code paths once. Each cell sets up its own backend; the worker's
    first cell builds the model its later cells take (ModelKeeper), where the cell's placement puts it, so this
    one is not kept. Returns the error text where it failed (the cells then meet the same failure and record it)."""
    import torch

    from latency_sensitivity.engine import registry
    from latency_sensitivity.engine.base import Clock
    from latency_sensitivity.measure.model import CellSpec, build_model, make_prompt

    spec = CellSpec(**{k: fields[k] for k in ("model", "model_kind", "model_location", "dtype", "backend", "device",
                                              "attn_implementation", "threads")},
                    warmup=0, reps=1, seed=0, **FIRST_USE_SHAPE)
    cuda = spec.device == "cuda"
    model = backend = prompt = None
    try:
        clock = Clock(cuda)
        model = build_model(spec)
        prompt = make_prompt(spec, model.config.vocab_size)
        options = {"compile": False} if spec.backend in COMPILING_BACKENDS else {}
        backend = registry.make(spec.backend, model, prompt, spec.gen_tokens, clock, **options)
        with torch.inference_mode():
            backend.request(prompt, spec.gen_tokens, clock, "first_use")
        return None
    except Exception as exc:  # noqa: BLE001 - reported by the cells
        print(f"first use failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return f"{type(exc).__name__}: {exc}"
    finally:
        if backend is not None:
            backend.close()
        del model, backend, prompt
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def _release_memory() -> None:
    """After a cell: collect its garbage and hand freed heap back to the OS, so that the next cell's peak RSS
    starts where a fresh process's would (glibc keeps freed memory otherwise). It walks only what the cell made:
    the start-up stays frozen (Worker.start_up). What survives it outlives the cells (the model and the compiled
    step they share) and is frozen too; a cell that let a kept model go, or failed, unfroze everything, and this
    collection then walks it all once."""
    import ctypes

    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def main(argv: list[str] | None = None, forked_from: dict | None = None) -> int:
    return server_main(Worker, "python -m latency_sensitivity.measure.worker",
                       "A measurement worker (started by cell jobs; see the module docstring).", argv,
                       forked_from=forked_from)


if __name__ == "__main__":
    sys.exit(main())
