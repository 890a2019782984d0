"""Measurement workers, the cell job's side: find or start the worker of a cell, hand it the cell, stop them all.

Cells that share a process (``measure.isolation: shared``); the worker process itself is worker.py.

A cell job costs the machine its start-up before it measures anything: the interpreter, torch and transformers
imports, the CUDA context. With ``isolation: shared`` the cell job is a thin client: it hands its runner command
line to a worker process that has paid that start-up once, waits for the result file, and exits. One worker
serves one *key*: the model, dtype, backend, device, attention implementation, thread count, CPU affinity and
replicate index, the Python interpreter, the environment variables that change what torch does, the package's
source files, and the working directory. A cell's backend and KV cache are set up per cell and freed after it,
as in its own process. What carries over is the imported code, the CUDA context, the on-disk compile caches, the
compiled step (engine/decode_step.py) and the model: the worker's first cell builds it and its later cells take
it, the same weights, where its form is the one it was built with (model.ModelKeeper). Each replicate has its own
worker, so a cell's replicates still come from separate processes.

Protocol (one Unix socket per worker, one JSON line each way): the client sends ``{"argv": [...], "job_start":
<epoch>}``; the worker answers ``{"accepted": true, "key": ...}`` at once, then ``{"rc": 0, "log": ...}`` once
the result file is written. A worker that dies after accepting leaves the client to write an ``error`` result
(a failed cell is a recorded row). A client that finds no worker (or a dead one) starts it under a lock, so
concurrent jobs of one key do not start two for the same slot; jobs of one key running at the same time (on
several GPUs) each get a slot of their own (``<key>-<n>``).

With ``isolation: forked`` a worker is forked by a fork server that has made a worker's imports once
(fork_server.py, started like a worker, under a lock, and stopped by ``stop_all`` too) instead of started as a
fresh interpreter; the worker is otherwise the same, and its key says which way it started.

A worker lives until it has been idle for ``IDLE_S`` seconds, until a client starts a worker of another key on
the same device type (an idle worker then exits at once, so two idle processes never hold one GPU), until
another process of its working directory waits for a GPU while every one is taken (a calibration or a loading
measurement after the cells: an idle worker exits at once rather than hold the GPU for ``IDLE_S``), until
``stop_all`` asks it to (the workflow does so when it ends), or until its working directory is gone. On CUDA it
claims its GPU as a cell job would (gpu_slots) and holds it while it lives.

This module imports only the standard library: the cell job's side must start in milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

IDLE_S = float(os.environ.get("LATENCY_SENSITIVITY_WORKER_IDLE_S", "120"))
STATE_DIR = Path(".snakemake/workers")  # under the working directory: locks, start and claim markers, the registry
LOG_DIR = Path("logs/workers")
START_TIMEOUT_S = 600.0  # a worker's start-up (imports, CUDA context, a GPU to become free)
# Environment variables that change what a measuring process does: a worker serves only clients that agree.
ENV_IN_KEY = ("CUDA_VISIBLE_DEVICES", "PYTHONPATH", "PYTORCH_", "TORCH", "TRITON", "OMP_", "MKL_", "CUDA_",
              "NCCL_", "HF_", "TRANSFORMERS_", "LATENCY_SENSITIVITY_", "LD_PRELOAD", "LD_LIBRARY_PATH")
PACKAGE_DIR = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """The worker could not be started, or died while measuring."""


def code_fingerprint(package_dir: Path = PACKAGE_DIR) -> str:
    """A digest of the package's source files (path, size, modification time): a worker started before the code
    changed does not serve a client of the new code."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*")):
        if path.suffix in (".py", ".json", ".yaml") and "__pycache__" not in path.parts:
            st = path.stat()
            digest.update(f"{path.relative_to(package_dir)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def worker_key(fields: dict, environ: dict | None = None, cwd: str | None = None) -> dict:
    """Everything a worker must agree on with a client: the cell's process-wide settings (`fields`: model, dtype,
    backend, device, attn_implementation, threads, cpu_affinity, replicate, ...), the interpreter, the environment
    variables of ENV_IN_KEY, the code and the working directory."""
    environ = dict(os.environ if environ is None else environ)
    env = {k: v for k, v in sorted(environ.items()) if k.startswith(ENV_IN_KEY)}
    return {"fields": dict(sorted(fields.items())), "python": sys.executable, "env": env,
            "code": code_fingerprint(), "cwd": os.path.realpath(cwd or os.getcwd())}


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def socket_path(digest: str, slot: int) -> str:
    """A short path (Unix socket paths are limited to about 100 bytes), private to this user."""
    folder = Path(tempfile.gettempdir()) / f"latency-sensitivity-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return str(folder / f"{digest}-{slot}.sock")


def _label(fields: dict) -> str:
    parts = [fields.get(k) for k in ("model", "dtype", "backend", "device")]
    label = "_".join(str(p) for p in parts if p) + f"_r{fields.get('replicate', 1)}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


# -- the client side


def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall((json.dumps(message) + "\n").encode())


def _receive(reader) -> dict | None:
    """The next message; None where the other side closed the connection, broke it or sent no JSON."""
    try:
        line = reader.readline()
        return json.loads(line) if line else None
    except (ConnectionError, json.JSONDecodeError):
        return None


def serve_unix(socket_path: str, registry: Path, record: dict, announce: str, handle, should_exit,
               after_each=None) -> str:
    """The serving loop of a worker and of the fork server: listen at `socket_path` (clients see the socket only
    once it listens), register `record` in `registry`, print `announce`, then call handle(request, conn, server)
    for each request line and `after_each()` once its connection is closed, until a client asks to stop or
    should_exit(idle_since) gives a reason, which it returns. The socket and the registry entry go with it."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = socket_path + f".{os.getpid()}.tmp"
    server.bind(tmp)
    os.replace(tmp, socket_path)
    server.listen(8)
    server.settimeout(0.2)
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(json.dumps(record))
    print(announce, file=sys.stderr, flush=True)
    idle_since = time.monotonic()
    reason = None
    try:
        while reason is None:
            try:
                conn, _ = server.accept()
            except socket.timeout:
                reason = should_exit(idle_since)
                continue
            conn.settimeout(None)
            with conn, conn.makefile("r") as reader:
                request = _receive(reader)
                if request is None:
                    continue
                if request.get("stop"):
                    reason = "asked to stop"
                    continue
                handle(request, conn, server)
            if after_each is not None:
                after_each()
            idle_since = time.monotonic()
            reason = should_exit(idle_since)
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        registry.unlink(missing_ok=True)
    return reason


def server_main(server_class, prog: str, description: str, argv: list[str] | None = None, **options) -> int:
    """The command line of a worker and of the fork server: --socket, --key (JSON), --state-dir; serves until
    it exits. options: further keyword arguments of server_class."""
    import argparse

    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--socket", required=True)
    p.add_argument("--key", required=True, help="the key as JSON")
    p.add_argument("--state-dir", default=str(STATE_DIR))
    a = p.parse_args(argv)
    server_class(a.socket, json.loads(a.key), Path(a.state_dir), **options).serve()
    return 0


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def _start_marker(state: Path, device: str, digest: str) -> Path:
    return state / f"starting-{device}-{digest}-{os.getpid()}"


def claim_markers(state: Path, device: str):
    """The markers asking the idle workers on `device` to exit: one per worker start (``starting-<device>-<key
    digest>-<pid>``, which spares the workers of that key) and per other process waiting for a GPU
    (``claiming-<device>-<pid>``, see ask_idle_workers_to_exit), as (marker, the key digest it spares or None).
    A marker whose process is gone is removed, not returned: it asks nothing any more."""
    for marker in [*state.glob(f"starting-{device}-*"), *state.glob(f"claiming-{device}-*")]:
        rest, _, pid = marker.name.rpartition("-")
        if not pid.isdigit() or not _pid_alive(int(pid)):
            marker.unlink(missing_ok=True)
            continue
        yield marker, (rest.removeprefix(f"starting-{device}-") if rest.startswith("starting-") else None)


def ask_idle_workers_to_exit(device: str, state: Path = STATE_DIR):
    """For a process that waits for a GPU and is no worker (a calibration, a loading measurement, a cell in a
    process of its own): the idle workers of this working directory on `device` exit, as for a worker of another
    key starting, instead of holding their GPUs until IDLE_S has passed. Returns the function that withdraws the
    request (call it once the GPU is claimed); nothing is asked where this directory has no workers."""
    if not state.is_dir():
        return lambda: None
    marker = state / f"claiming-{device}-{os.getpid()}"
    marker.touch()
    return lambda: marker.unlink(missing_ok=True)


def _start_worker(key: dict, digest: str, slot: int, path: str, state: Path) -> float:
    """Start a worker for `key` in slot `slot` (a fresh interpreter, or forked by the fork server with isolation
    forked) and wait until it listens; returns the seconds that took."""
    fields = key["fields"]
    marker = _start_marker(state, fields.get("device", "cpu"), digest)
    marker.touch()  # idle workers of other keys on this device type exit (see Worker.should_exit)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{_label(fields)}-{digest[:8]}-{slot}.log"
    t0 = time.monotonic()
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with open(log_path, "a") as log:
            log.write(f"--- worker started {time.strftime('%Y-%m-%d %H:%M:%S')} for {json.dumps(fields)}\n")
        argv = ["--socket", path, "--key", json.dumps(key), "--state-dir", str(state)]
        if fields.get("isolation") == "forked":
            pid = _fork_worker(key, argv, log_path, state)
            _wait_listening(path, lambda: None if _pid_alive(pid) else "", lambda: os.kill(pid, 9),
                            "measurement worker", log_path, t0)
        else:
            proc = _start_module("latency_sensitivity.measure.worker", argv, log_path)
            _wait_listening(path, lambda: _exit_code(proc), proc.kill, "measurement worker", log_path, t0)
        return time.monotonic() - t0
    finally:
        marker.unlink(missing_ok=True)


def _start_module(module: str, argv: list[str], log_path: Path) -> subprocess.Popen:
    """`python -m module argv` in a session of its own, its output appended to `log_path`."""
    import subprocess  # only where a worker starts: a cell job that finds its worker running does without it

    with open(log_path, "a") as log:
        return subprocess.Popen([sys.executable, "-m", module, *argv], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _exit_code(proc: subprocess.Popen) -> str | None:
    return None if proc.poll() is None else f" with code {proc.returncode}"


def _wait_listening(path: str, exited, kill, what: str, log_path: Path, t0: float) -> None:
    """Until a process listens at `path` (`exited()`: None while it runs, else how it exited); WorkerError where
    it exits first or takes longer than START_TIMEOUT_S (then `kill()`)."""
    while True:
        if os.path.exists(path):
            sock = _connect(path)
            if sock is not None:
                sock.close()
                return
        how = exited()
        if how is not None:
            raise WorkerError(f"the {what} exited{how} before it listened; its log {log_path} ends:\n"
                              f"{_tail(log_path)}")
        if time.monotonic() - t0 > START_TIMEOUT_S:
            with contextlib.suppress(OSError):
                kill()
            raise WorkerError(f"the {what} did not listen within {START_TIMEOUT_S:.0f} s (log: {log_path})")
        time.sleep(0.05)


def _pid_alive(pid: int) -> bool:
    """Whether a process runs (a forked worker is the fork server's child, which reaps it: no zombies)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        pass
    return True


def server_key(key: dict) -> dict:
    """The fork server's key (fork_server.py): the parts of a worker's key that its imports depend on, and
    whether its workers compile (a compiling backend's server imports torch's compiler too)."""
    from latency_sensitivity.vocabulary import COMPILING_BACKENDS

    fields = key["fields"]
    return {"python": key["python"], "env": key["env"], "code": key["code"], "cwd": key["cwd"],
            "device": fields.get("device", "cpu"), "compile_cache": fields.get("compile_cache"),
            "compiler": fields.get("backend") in COMPILING_BACKENDS}


def _fork_worker(key: dict, argv: list[str], log_path: Path, state: Path) -> int:
    """Ask the fork server of `key` (started if needed, under a lock) to fork a worker running `argv`, its output
    appended to `log_path`; returns the worker's pid."""
    skey = server_key(key)
    digest = key_digest(skey)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ()
    path = socket_path(f"fork-{digest}", 0)
    server_log = LOG_DIR / f"fork-server-{digest[:8]}.log"
    for _ in range(2):  # a server that was exiting when asked: start another
        with open(state / f"fork-{digest}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = _connect(path)
            if sock is None:
                t0 = time.monotonic()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                with open(server_log, "a") as log:
                    log.write(f"--- fork server started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                proc = _start_module("latency_sensitivity.measure.fork_server",
                                     ["--socket", path, "--key", json.dumps(skey), "--state-dir", str(state)],
                                     server_log)
                _wait_listening(path, lambda: _exit_code(proc), proc.kill, "fork server", server_log, t0)
                sock = _connect(path)
        if sock is None:
            continue
        with sock, sock.makefile("r") as reader:
            # the CPUs this job may run on, which a worker started fresh by it would inherit
            _send(sock, {"spawn": {"argv": argv, "log": str(Path(log_path).resolve()), "cpus": sorted(cpus)}})
            reply = _receive(reader)
        if reply is None:
            continue
        if "pid" not in reply:
            raise WorkerError(f"the fork server at {path} forked no worker: {reply.get('error')} (log: {server_log})")
        return int(reply["pid"])
    raise WorkerError(f"no fork server could be reached at {path} (log: {server_log})")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def measure_in_worker(fields: dict, argv: list[str], job_start: float, state: Path = STATE_DIR) -> dict:
    """Hand the runner command line `argv` to the worker of `fields`' key (started if needed), wait for it to
    measure and write the result file; returns its reply (rc, log, worker). Raises WorkerError when no worker
    could be started or it died while measuring."""
    state.mkdir(parents=True, exist_ok=True)
    key = worker_key(fields)
    digest = key_digest(key)
    slot = 0
    while True:  # the first slot of this key that no other job is using now
        client_lock = open(state / f"{digest}-{slot}.client", "a+")
        try:
            fcntl.flock(client_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            client_lock.close()
            slot += 1
    with client_lock:
        path = socket_path(digest, slot)
        started_s = 0.0
        for _ in range(3):
            sock = _connect(path)
            if sock is None:
                started_s += _start_worker(key, digest, slot, path, state)
                continue
            with sock, sock.makefile("r") as reader:
                _send(sock, {"argv": argv, "job_start": job_start, "key": digest, "worker_start_s": started_s})
                accepted = _receive(reader)
                if not accepted or not accepted.get("accepted"):
                    continue  # it was exiting: start another
                if accepted.get("key") != digest:
                    raise WorkerError(f"the worker at {path} serves another key ({accepted.get('key')})")
                reply = _receive(reader)
                if reply is None:
                    raise WorkerError(f"the measurement worker (pid {accepted.get('pid')}) died while measuring; "
                                      f"see logs/workers/ for its output")
                return reply
        raise WorkerError(f"no measurement worker could be reached at {path} after 3 attempts")


def stop_all(state: Path = STATE_DIR, timeout_s: float = 30.0) -> int:
    """Ask every worker of this working directory to exit once idle (the workflow calls this when it ends);
    returns how many were asked."""
    asked = 0
    registry = Path(state) / "registry"
    for entry in sorted(registry.glob("*.json")) if registry.is_dir() else []:
        try:
            path = json.loads(entry.read_text())["socket"]
        except (OSError, ValueError, KeyError):
            entry.unlink(missing_ok=True)
            continue
        sock = _connect(path)
        if sock is None:
            entry.unlink(missing_ok=True)
            continue
        with sock:
            sock.settimeout(timeout_s)
            with contextlib.suppress(OSError):
                _send(sock, {"stop": True})
                sock.recv(1)  # the worker closes the connection once it has stopped listening
        asked += 1
    return asked
