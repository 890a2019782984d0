"""The fork server of ``measure.isolation: forked``: one process that has paid a worker's imports once, and
forks each measurement worker from there instead of starting it as a fresh interpreter.

A worker's start-up is mostly imports: torch, transformers and transformers' model code, paid again by every
worker (one per model, dtype, backend and replicate; benchmarks/sweep_cost/NOTES.md has the seconds). The
fork server makes those imports once, with the compile caches configured as a worker configures them, and
then only listens. A client that needs a worker asks it to fork one; the child starts a new session, sends its
output to the worker's log and runs the worker as ``python -m latency_sensitivity.measure.worker`` would.
The child then claims its GPU, pins its CPUs, creates its CUDA context and pays its first use itself, so the
server never touches a GPU. The server of a compiling backend's workers (its key says so) imports torch's compiler
too, which a fresh worker of that backend imports in its start-up. That import asks torch.cuda.is_available()
(torch/_inductor/runtime/benchmarking.py, torch 2.11); answered through the CUDA runtime, that call leaves every
later fork unable to use CUDA ("Cannot re-initialize CUDA in forked subprocess") without creating a context, so
that server has NVML answer it instead (PYTORCH_NVML_BASED_CUDA_CHECK=1; its children inherit it). Where NVML
cannot answer (compiler_skip_reason), the server leaves the compiler to its workers, as a fresh worker imports it,
and its log says why. A child that finds itself unable to use CUDA all the same says so and stops, and the cell is
an error row. The server forks only while it runs no Python thread besides its main one and has no CUDA context (a
child could use neither); otherwise it refuses, and the cell is an error row. Native thread pools that libraries
start when imported (OpenBLAS's, through numpy) are theirs to hand over at a fork, as they do for any forking
program; the server's log says how many threads it had.

One server serves one *server key*: the interpreter, the environment variables of worker_pool.ENV_IN_KEY, the
package's code, the working directory, the device type and the compile cache's root, the parts of a worker's
key that its imports depend on, and whether its workers' backend compiles. It lives until it has been idle (no
request, and none of the workers it forked running) for ``worker_pool.IDLE_S`` seconds, until
``worker_pool.stop_all`` asks it to, or until its working directory is gone. Protocol (one Unix socket, one JSON
line each way): ``{"spawn": {"argv": [...], "log": path, "cpus": [...]}}`` is answered ``{"pid": N}`` or
``{"error": text}``; ``{"stop": true}`` makes it stop listening and close the connection.

Linux only (fork, and /proc/self/task for the thread count in its log).
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import sys
import time
from pathlib import Path

from latency_sensitivity.measure.worker_pool import IDLE_S, _pid_alive, _send, key_digest, serve_unix, server_main


def os_threads() -> int | None:
    """The threads of this process, native ones included (Python's threading module sees only its own); None
    where /proc does not say."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def fork_unsafe_reason() -> str | None:
    """Why this process must not fork a worker now, or None: a Python thread besides the main one (it would be
    missing in the child, holding whatever lock it held) or a CUDA context (a child cannot use it)."""
    import threading

    if threading.active_count() != 1:
        return f"the fork server runs {threading.active_count()} Python threads"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "the fork server has a CUDA context"
    return None


def cuda_refused_after_fork() -> bool:
    """Whether torch, imported before this process was forked, refuses CUDA here (torch marks a fork made after
    the CUDA runtime was initialised)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return bool(getattr(torch._C, "_cuda_isInBadFork", lambda: False)())


def compiler_skip_reason(device: str) -> str | None:
    """Why a compiling backend's fork server must leave torch's compiler to its workers, or None. The compiler's
    import asks torch.cuda.is_available(); the server has NVML answer (PYTORCH_NVML_BASED_CUDA_CHECK), but where
    NVML cannot count the visible devices (no NVML; CUDA_VISIBLE_DEVICES naming MIG instances) torch asks the CUDA
    runtime instead, and its forked workers could not use CUDA. Call after torch is imported."""
    if device != "cuda":
        return None
    import torch

    count = getattr(torch.cuda, "_device_count_nvml", None)
    try:
        answered = count is not None and count() >= 0
    except Exception:  # noqa: BLE001 - NVML missing or failing: the same answer
        answered = False
    if answered:
        return None
    return ("NVML cannot answer torch's CUDA check here, and the CUDA runtime's answer would leave forked workers "
            "unable to use CUDA; each worker imports it")


class ForkServer:
    def __init__(self, socket_path: str, key: dict, state: Path):
        self.socket_path, self.key, self.state = socket_path, key, Path(state)
        self.digest = key_digest(key)
        self.cwd = key["cwd"]
        self.compile_cache = None
        self.import_s = None
        self.forked = 0
        self.compiler_skipped: str | None = None  # why a compiling backend's server did not import the compiler
        self.children: set[int] = set()  # the workers it forked that still ran when it last looked
        self.child_seen = time.monotonic()  # when it last saw one of them running
        self.registry = self.state / "registry" / f"fork-{self.digest}.json"

    @property
    def compiler_imported(self) -> bool:
        return bool(self.key.get("compiler")) and self.compiler_skipped is None

    def start_up(self) -> None:
        """A worker's imports, without its GPU claim, CPU pinning, CUDA context and first use (the children's)."""
        t0 = time.perf_counter()
        from latency_sensitivity.measure import compile_cache

        # before torch is imported, as a worker does; the children keep this record (their environment has it)
        self.compile_cache = compile_cache.configure(self.key["compile_cache"], self.key["device"])
        from latency_sensitivity.measure import worker

        worker.import_measuring_code()
        from transformers.models.auto import modeling_auto  # noqa: F401 - most of a model's code: its import

        if self.key.get("compiler"):
            self.compiler_skipped = compiler_skip_reason(self.key["device"])
            if self.compiler_skipped is None:
                from latency_sensitivity.engine import decode_step

                os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # read at each call: the import's check asks NVML
                decode_step.import_compiler()

        gc.collect()
        gc.freeze()  # the imports are never garbage: the children's collections do not walk (and copy) them
        self.import_s = time.perf_counter() - t0

    def spawn(self, argv: list[str], log_path: str, conn: socket.socket, server: socket.socket,
              cpus: list[int] | None = None) -> int:
        """Fork a worker running `argv` (the worker module's command line), its output appended to `log_path`,
        on the CPUs `cpus` (those of the job that asked, as a worker it started itself would inherit them);
        returns its pid."""
        reason = fork_unsafe_reason()
        if reason is not None:
            raise RuntimeError(f"{reason}: it forks no worker")
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        pid = os.fork()
        if pid != 0:
            os.close(log_fd)
            self.forked += 1
            self.children.add(pid)
            return pid
        # the child: a worker of its own session, as a freshly started one
        rc = 1
        try:
            # the server's sockets (the request's connection, which a reader holds open too, and the listening
            # one), closed for good: their objects no longer own a descriptor the worker may get again
            os.close(conn.detach())
            os.close(server.detach())
            os.setsid()
            if cpus:
                os.sched_setaffinity(0, cpus)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server reaps by ignoring it; a worker waits
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(null)
            os.close(log_fd)
            if self.key.get("device") == "cuda" and cuda_refused_after_fork():
                raise RuntimeError("this forked worker cannot use CUDA: its fork server's imports touched the CUDA "
                                   "runtime (torch refuses CUDA in a child forked after that)")
            from latency_sensitivity.measure import worker

            rc = worker.main(argv, forked_from={"pid": os.getppid(), "import_s": self.import_s,
                                                "compile_cache": self.compile_cache,
                                                "compiler": self.compiler_imported})
        except BaseException:  # noqa: BLE001 - the worker's log says why; the client sees it never listened
            import traceback

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(rc)

    def should_exit(self, idle_since: float) -> str | None:
        """Idle means no request and none of its workers running: a worker's cells can outlast IDLE_S (a first
        compile), and the next worker of the same imports is forked after it."""
        self.children = {pid for pid in self.children if _pid_alive(pid)}
        now = time.monotonic()
        if self.children:
            self.child_seen = now
        if now - max(idle_since, self.child_seen) > IDLE_S:
            return f"idle for {IDLE_S:.0f} s"
        if not os.path.isdir(self.cwd):
            return "its working directory is gone"
        return None

    def serve(self) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they exit: no zombies
        self.start_up()
        reason = None
        try:
            compiler = (" (torch's compiler included)" if self.compiler_imported else
                        f" (torch's compiler not included: {self.compiler_skipped})" if self.compiler_skipped else "")
            reason = serve_unix(
                self.socket_path, self.registry, {"socket": self.socket_path, "pid": os.getpid(), "fork_server": True},
                f"fork server pid {os.getpid()} listening on {self.socket_path} after {self.import_s:.2f} s of "
                f"imports{compiler} ({os_threads()} threads)", self._serve_one, self.should_exit)
        finally:
            print(f"fork server pid {os.getpid()} exits after forking {self.forked} worker(s): {reason}",
                  file=sys.stderr, flush=True)

    def _serve_one(self, request: dict, conn: socket.socket, server: socket.socket) -> None:
        spawn = request.get("spawn") or {}
        try:
            reply = {"pid": self.spawn(list(spawn["argv"]), spawn["log"], conn, server, spawn.get("cpus"))}
        except Exception as exc:  # noqa: BLE001 - the client raises it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            _send(conn, reply)


def main(argv: list[str] | None = None) -> int:
    return server_main(ForkServer, "python -m latency_sensitivity.measure.fork_server",
                       "The fork server of measurement workers (see the module docstring).", argv)


if __name__ == "__main__":
    sys.exit(main())
