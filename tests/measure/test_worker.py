"""Cells that share a measurement worker (measure.isolation: shared), on the CPU with the tiny model."""

import contextlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY_ARCHITECTURE
from latency_sensitivity.measure import runner, worker, worker_pool

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory of its own (workers are per working directory), the package importable from it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    yield tmp_path
    worker_pool.stop_all()


def argv(out, seq=8, replicate=1, isolation="shared"):
    return ["--model", "tiny", "--model-kind", "architecture", "--model-location", TINY_ARCHITECTURE,
            "--dtype", "fp32", "--device", "cpu", "--seq", str(seq), "--batch", "1", "--gen-tokens", "3",
            "--warmup", "0", "--reps", "2", "--replicate", str(replicate), "--isolation", isolation,
            "--out", str(out)]


def alive(pid: int) -> bool:
    """Running (an exited worker started by this test process stays a zombie until reaped: not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_gone(pid: int, timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def one_reply_server(path: str, reply: dict):
    """A socket at `path` that answers one request with `reply` and closes the connection."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    server.bind(path)
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall((json.dumps(reply) + "\n").encode())
        conn.close()

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        yield
    finally:
        thread.join(10)
        server.close()
        os.unlink(path)


def test_cells_of_one_replicate_share_a_worker_and_replicates_do_not(workdir):
    for seq in (8, 16):
        assert runner.main(argv(workdir / f"seq{seq}.json", seq=seq)) == 0
    first, second = (json.loads((workdir / f"seq{seq}.json").read_text()) for seq in (8, 16))
    assert first["status"] == second["status"] == "ok", (first["error"], second["error"])
    assert first["worker"]["isolation"] == "shared" and first["cell"]["isolation"] == "shared"
    assert first["worker"]["pid"] == second["worker"]["pid"] != os.getpid()
    assert (first["metrics"]["cells_before"], second["metrics"]["cells_before"]) == (0, 1)
    # the worker's first cell built the model; its second took it
    assert (first["model_from"], second["model_from"]) == ("built", "kept")
    # the first job waited for the worker to start (a one-time cost, recorded apart); the second did not
    assert first["metrics"]["worker_start_s"] > 0 and second["metrics"]["worker_start_s"] == 0
    parts = first["worker"]["startup_parts"]
    assert set(parts) == {"gpu_claim_s", "import_s", "model_code_s", "cuda_init_s"}
    assert sum(parts.values()) <= first["worker"]["startup_s"] + 1e-6 and parts["import_s"] > 0
    assert second["metrics"]["job_s"] >= second["metrics"]["measured_s"] > 0
    # another replicate is another process; the idle worker of replicate 1 exits when it starts
    assert runner.main(argv(workdir / "r2.json", replicate=2)) == 0
    other = json.loads((workdir / "r2.json").read_text())
    assert other["status"] == "ok" and other["worker"]["pid"] != first["worker"]["pid"]
    assert wait_gone(first["worker"]["pid"])
    assert worker_pool.stop_all() == 1
    assert wait_gone(other["worker"]["pid"])
    assert list((workdir / "logs" / "workers").glob("*.log"))


def test_an_idle_worker_exits_for_a_process_waiting_for_a_gpu(workdir):
    """A calibration (or any GPU job that is no worker) waiting for the GPU an idle worker holds: the worker exits
    at once instead of after IDLE_S, and the request is withdrawn once answered."""
    assert runner.main(argv(workdir / "first.json")) == 0
    pid = json.loads((workdir / "first.json").read_text())["worker"]["pid"]
    withdraw = worker_pool.ask_idle_workers_to_exit("cpu")
    try:
        assert wait_gone(pid, timeout_s=10) and worker_pool.IDLE_S > 10
    finally:
        withdraw()
    assert not list(worker_pool.STATE_DIR.glob("claiming-*"))
    log = "".join(p.read_text() for p in (workdir / "logs" / "workers").glob("*.log"))
    assert "exits after 1 cell(s): another process waits for a GPU (claiming-cpu-" in log
    assert runner.main(argv(workdir / "next.json")) == 0  # the next cell job starts a worker again
    assert json.loads((workdir / "next.json").read_text())["worker"]["pid"] != pid


def test_what_makes_an_idle_worker_exit(tmp_path):
    """The markers an idle worker heeds: a worker of another key starting on its device type, or another process
    waiting for a GPU there; never its own key's start, another device type's, or a marker whose process is gone."""
    key = {"fields": fields(), "cwd": str(tmp_path)}
    w = worker.Worker(str(tmp_path / "w.sock"), key, tmp_path)
    now = time.monotonic()
    assert w.should_exit(now) is None
    me, gone = os.getpid(), 2**22 + 17  # above any pid_max default: no such process
    cases = [(f"starting-cpu-{w.digest}-{me}", None), (f"claiming-cuda-{me}", None),
             (f"starting-cuda-0123abc-{me}", None), (f"claiming-cpu-{gone}", None),
             (f"starting-cpu-0123abc-{gone}", None),
             (f"starting-cpu-0123abc-{me}", "a worker of another key is starting"),
             (f"claiming-cpu-{me}", "another process waits for a GPU")]
    for name, reason in cases:
        marker = tmp_path / name
        marker.touch()
        said = w.should_exit(now)
        assert (said if said is None else said.split(" (")[0]) == reason, name
        assert marker.exists() == (str(gone) not in name), name  # a gone process's marker is cleared
        marker.unlink(missing_ok=True)
    assert w.should_exit(now - worker_pool.IDLE_S - 1).startswith("idle for")


def test_asking_idle_workers_needs_a_directory_with_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    withdraw = worker_pool.ask_idle_workers_to_exit("cuda")
    assert not worker_pool.STATE_DIR.exists()  # no workers here: nothing asked, nothing created
    withdraw()
    worker_pool.STATE_DIR.mkdir(parents=True)
    withdraw = worker_pool.ask_idle_workers_to_exit("cuda")
    assert [p.name for p in worker_pool.STATE_DIR.iterdir()] == [f"claiming-cuda-{os.getpid()}"]
    withdraw()
    assert not list(worker_pool.STATE_DIR.iterdir())


@pytest.mark.parametrize("isolation", ["shared", "forked"])
def test_shared_and_process_records_have_the_same_columns(workdir, isolation):
    runner.main(argv(workdir / "shared.json", isolation=isolation))
    runner.main(argv(workdir / "process.json", isolation="process"))
    shared, own = (json.loads((workdir / f"{name}.json").read_text()) for name in ("shared", "process"))
    assert shared["status"] == own["status"] == "ok"
    assert set(shared["metrics"]) == set(own["metrics"])
    assert own["worker"] == {"isolation": "process", "pid": os.getpid(), "cells_before": 0}
    assert own["metrics"]["worker_start_s"] == 0


def test_a_compiling_backend_s_process_imports_the_compiler_in_its_start_up(workdir, monkeypatch):
    """The compiler's imports, which a process pays once, are part of a compiled process's start-up (a worker's,
    or a cell's own process's), not of its first cell's backend setup; an eager one never pays them. The worker's
    cell compiles its step; the cells measured here in the test's process run the compiled backend uncompiled
    (the start-up is the same)."""
    from latency_sensitivity.engine import decode_step, registry
    from latency_sensitivity.measure import cell
    from latency_sensitivity.measure.model import CellSpec

    compiled = ["--backend", "compiled", "--batch", "1"]
    assert runner.main(argv(workdir / "shared.json") + compiled) == 0
    shared = json.loads((workdir / "shared.json").read_text())
    assert shared["status"] == "ok", shared["error"]
    parts = shared["worker"]["startup_parts"]
    assert list(parts) == ["gpu_claim_s", "import_s", "model_code_s", "compiler_import_s", "cuda_init_s"]
    # the worker paid them at its start, so its cell did not
    assert shared["metrics"]["compiler_import_s"] < parts["compiler_import_s"] / 10
    # a cell's own process: within its start-up, once, and only for a compiling backend
    calls = []
    monkeypatch.setattr(decode_step, "import_compiler", lambda: calls.append(time.sleep(0.05)))
    real_make = registry.make
    monkeypatch.setattr(registry, "make", lambda name, *a, **kw: real_make(
        name, *a, **({**kw, "compile": False} if name == "compiled" else kw)))
    own = {backend: cell.measure(CellSpec(model="tiny", model_kind="architecture", model_location=TINY_ARCHITECTURE,
                                          dtype="fp32", backend=backend, device="cpu", attn_implementation="sdpa",
                                          seq_len=8, batch=1, gen_tokens=3, warmup=0, reps=2, seed=0, threads=1))
           for backend in ("compiled", "eager")}
    assert own["compiled"]["status"] == own["eager"]["status"] == "ok" and len(calls) == 1
    m = own["compiled"]["metrics"]
    assert m["startup_s"] >= m["compiler_import_s"] >= 0.05 and own["eager"]["metrics"]["compiler_import_s"] == 0


def test_a_worker_that_cannot_start_leaves_an_error_row(workdir, monkeypatch):
    monkeypatch.setattr(worker_pool.sys, "executable", "/bin/false")
    assert runner.main(argv(workdir / "cell.json")) == 0
    r = json.loads((workdir / "cell.json").read_text())
    assert r["status"] == "error" and r["error"]["phase"] == "worker"
    assert "exited with code 1 before it listened" in r["error"]["message"]
    assert r["cell"]["seq_len"] == 8 and r["metrics"]["job_s"] > 0


def test_a_worker_that_dies_while_measuring_leaves_an_error_row(workdir):
    """A worker that accepts the cell and then vanishes (killed, crashed): the cell is an error row."""
    spec = runner.parse_args(argv(workdir / "cell.json"))[0]
    key = worker_pool.worker_key({**runner.worker_fields(spec), "compile_cache": None})
    digest = worker_pool.key_digest(key)
    path = worker_pool.socket_path(digest, 0)
    with one_reply_server(path, {"accepted": True, "key": digest, "pid": 1}):  # accepts, then vanishes
        assert runner.main(argv(workdir / "cell.json")) == 0
    r = json.loads((workdir / "cell.json").read_text())
    assert r["status"] == "error" and "died while measuring" in r["error"]["message"]


def test_profiling_refuses_a_shared_worker(workdir):
    with pytest.raises(SystemExit, match="profile with --isolation process"):
        runner.main(argv(workdir / "cell.json") + ["--profile-mode", "external"])


def test_the_key_changes_with_what_a_process_depends_on(tmp_path):
    fields = {"model": "m", "dtype": "fp16", "backend": "graph", "device": "cuda", "replicate": 1}
    base = worker_pool.worker_key(fields, environ={"HOME": "/x"}, cwd=str(tmp_path))
    assert worker_pool.key_digest(base) == worker_pool.key_digest(
        worker_pool.worker_key(dict(reversed(list(fields.items()))), environ={"HOME": "/y"}, cwd=str(tmp_path)))
    for changed in ({**fields, "replicate": 2}, {**fields, "backend": "compiled"}):
        assert worker_pool.key_digest(worker_pool.worker_key(changed, environ={}, cwd=str(tmp_path))) != \
            worker_pool.key_digest(base)
    for env in ({"CUDA_VISIBLE_DEVICES": "1"}, {"TORCHINDUCTOR_CACHE_DIR": "/c"}, {"OMP_NUM_THREADS": "4"}):
        assert worker_pool.key_digest(worker_pool.worker_key(fields, environ=env, cwd=str(tmp_path))) != \
            worker_pool.key_digest(base)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    assert worker_pool.key_digest(worker_pool.worker_key(fields, environ={"HOME": "/x"}, cwd=str(other_dir))) != \
        worker_pool.key_digest(base)
    assert len(worker_pool.socket_path(worker_pool.key_digest(base), 3)) < 100


def test_changed_code_is_a_different_worker(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    before = worker_pool.code_fingerprint(package)
    (package / "a.py").write_text("x = 22\n")
    assert worker_pool.code_fingerprint(package) != before


def test_the_cell_job_side_imports_no_torch():
    """A cell job with isolation shared must start in milliseconds: the runner and the pool import no torch."""
    import subprocess

    code = ("import sys; import latency_sensitivity.measure.runner, latency_sensitivity.measure.worker_pool; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": SRC}).stdout.split()
    assert out == ["False", "False"]


def test_a_job_killed_while_its_cell_runs_does_not_take_the_worker_down(workdir):
    """The worker writes the cell's result file and serves the next job, whose client is still there."""
    assert runner.main(argv(workdir / "first.json")) == 0
    pid = json.loads((workdir / "first.json").read_text())["worker"]["pid"]
    spec = runner.parse_args(argv(workdir / "gone.json", seq=16))[0]
    digest = worker_pool.key_digest(worker_pool.worker_key({**runner.worker_fields(spec), "compile_cache": None}))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(worker_pool.socket_path(digest, 0))
    sock.sendall((json.dumps({"argv": argv(workdir / "gone.json", seq=16), "job_start": time.time()}) + "\n").encode())
    assert json.loads(sock.makefile("r").readline())["accepted"]
    sock.close()  # the job is killed while its cell runs
    assert runner.main(argv(workdir / "next.json", seq=32)) == 0
    after = json.loads((workdir / "next.json").read_text())
    assert after["status"] == "ok" and after["worker"]["pid"] == pid and after["metrics"]["cells_before"] == 2
    assert json.loads((workdir / "gone.json").read_text())["status"] == "ok"


def fields(**kw):
    """A worker's fields for the tiny model on the CPU."""
    return {"model": "tiny", "model_kind": "architecture", "model_location": TINY_ARCHITECTURE, "dtype": "fp32",
            "backend": "graph", "device": "cpu", "attn_implementation": "sdpa", "threads": 1, "cpu_affinity": None,
            "replicate": 1, **kw}


@pytest.mark.parametrize("backend", ["eager", "graph", "compiled"])
def test_first_use_runs_a_request_of_the_model_on_its_backend(backend, monkeypatch):
    """A CUDA worker's start-up runs one small request of its model on its backend (compiled: nothing is
    compiled, its batch-1 path otherwise); here on the CPU, where a worker does not (no first use to pay there)."""
    from latency_sensitivity.engine import base, registry

    made, requests, compiled = [], [], []
    real_make = registry.make

    def make(name, model, prompt, gen_tokens, clock, **options):
        made.append((name, tuple(prompt.shape), len(model.model.layers), options))
        b = real_make(name, model, prompt, gen_tokens, clock, **options)
        compiled.append(b.info().get("compiled", False))
        real_request = b.request
        b.request = lambda *a: requests.append(a[3]) or real_request(*a)
        return b

    monkeypatch.setattr(registry, "make", make)
    monkeypatch.setattr(base.Clock, "sync", lambda self: None)
    assert worker.first_use(fields(backend=backend)) is None
    layers = json.loads(Path(TINY_ARCHITECTURE).read_text())["num_hidden_layers"]
    shape = (worker.FIRST_USE_SHAPE["batch"], worker.FIRST_USE_SHAPE["seq_len"])
    assert made == [(backend, shape, layers, {"compile": False} if backend == "compiled" else {})]
    assert requests == ["first_use"] and compiled == [False]


def test_first_use_that_fails_is_returned_not_raised():
    error = worker.first_use(fields(attn_implementation="flash_attention_2"))
    assert error is not None and error.startswith("ImportError")


@pytest.mark.gpu
def test_a_cuda_worker_pays_the_first_use_in_its_start_up(workdir):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cuda = [a if a != "cpu" else "cuda" for a in argv(workdir / "first.json")]
    assert runner.main(cuda) == 0
    r = json.loads((workdir / "first.json").read_text())
    assert r["status"] == "ok", r["error"]
    parts = r["worker"]["startup_parts"]
    assert set(parts) == {"gpu_claim_s", "import_s", "model_code_s", "cuda_init_s", "first_use_s"}
    assert parts["first_use_s"] > 0 and r["worker"]["first_use_error"] is None


@pytest.mark.gpu
def test_a_forked_cuda_worker_of_the_compiled_backend_starts_and_measures(workdir):
    """A compiled worker forked on a CUDA machine, from a fork server that imported torch's compiler, creates its
    CUDA context and measures (that import, with torch.cuda.is_available() answered through the CUDA runtime, left
    the server's children unable to create one)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cuda = [a if a != "cpu" else "cuda" for a in argv(workdir / "forked.json", isolation="forked")]
    assert runner.main(cuda + ["--backend", "compiled", "--batch", "1", "--compile-cache", "cache"]) == 0
    r = json.loads((workdir / "forked.json").read_text())
    assert r["status"] == "ok", r["error"]
    assert r["worker"]["isolation"] == "forked" and r["worker"]["forked_from"]["pid"] != r["worker"]["pid"]
    parts = r["worker"]["startup_parts"]
    assert r["worker"]["forked_from"]["compiler"] is True
    assert parts["compiler_import_s"] < r["worker"]["forked_from"]["import_s"] / 10
    assert parts["first_use_s"] > 0 and r["worker"]["first_use_error"] is None
    # the worker's next cell takes the model the first one built: the batch-1 changes (rewritten layers, the
    # gemv route, fused projections) were all undone
    assert r["backend_info"]["fused_layers"] > 0 and r["model_from"] == "built"
    cuda = [a if a != "cpu" else "cuda" for a in argv(workdir / "next.json", seq=16, isolation="forked")]
    assert runner.main(cuda + ["--backend", "compiled", "--batch", "1", "--compile-cache", "cache"]) == 0
    r = json.loads((workdir / "next.json").read_text())
    assert r["status"] == "ok", r["error"]
    assert r["model_from"] == "kept" and r["metrics"]["cells_before"] == 1


# An NVML library whose initialisation fails, as on a machine whose driver has no working NVML: every entry point
# torch and nvidia-ml-py call first answers NVML_ERROR_LIBRARY_NOT_FOUND (12).
NVML_STAND_IN = """
int nvmlInit(void) { return 12; }
int nvmlInit_v2(void) { return 12; }
int nvmlInitWithFlags(unsigned int flags) { return 12; }
int nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(int result) { return "NVML Shared Library Not Found"; }
"""


@pytest.mark.gpu
def test_a_forked_cuda_worker_of_the_compiled_backend_measures_where_nvml_cannot_start(workdir, monkeypatch):
    """Where NVML cannot answer torch's CUDA check, the compiled backend's fork server leaves the compiler to its
    workers (importing it there would leave them unable to use CUDA), and says so in its log; the forked worker
    imports it, creates its CUDA context and measures, and the cell records that GPU telemetry was unavailable."""
    import shutil
    import subprocess

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("needs a C compiler to build the failing NVML library")
    lib = workdir / "nvml"
    lib.mkdir()
    (lib / "nvml.c").write_text(NVML_STAND_IN)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(lib / "libnvidia-ml.so.1"), str(lib / "nvml.c")],
                   check=True)
    # the fork server and its workers load it in place of the driver's (this process has NVML loaded already)
    monkeypatch.setenv("LD_LIBRARY_PATH", os.pathsep.join([str(lib), os.environ.get("LD_LIBRARY_PATH", "")]))
    cuda = [a if a != "cpu" else "cuda" for a in argv(workdir / "no_nvml.json", isolation="forked")]
    # batch 2: the compiled step (batch 1 runs the rewritten layers uncompiled)
    assert runner.main(cuda + ["--backend", "compiled", "--batch", "2", "--compile-cache", "cache"]) == 0
    r = json.loads((workdir / "no_nvml.json").read_text())
    assert r["status"] == "ok", r["error"]
    assert r["worker"]["isolation"] == "forked" and r["worker"]["forked_from"]["compiler"] is False
    assert r["worker"]["startup_parts"]["compiler_import_s"] > 0  # the worker imported it itself
    assert r["backend_info"]["compiled"] is True and r["metrics"]["decode_p50_ms_per_tok"] > 0
    assert r["telemetry"]["available"] is False and r["telemetry"]["reason"]
    logs = [p.read_text() for p in (workdir / "logs" / "workers").glob("fork-server-*.log")]
    assert len(logs) == 1 and "torch's compiler not included: NVML cannot answer" in logs[0]


def test_forked_workers_come_from_one_fork_server(workdir):
    """isolation forked: each replicate's worker is forked from one fork server that made a worker's imports
    once; the cells measure as with shared workers and say where their worker came from; stop_all stops the
    server too."""
    cpus = os.sched_getaffinity(0)
    for replicate in (1, 2):
        # the first job (which starts the server) on one CPU, the second on all of this process's
        os.sched_setaffinity(0, {min(cpus)} if replicate == 1 else cpus)
        try:
            assert runner.main(argv(workdir / f"r{replicate}.json", replicate=replicate, isolation="forked")
                               + ["--compile-cache", "cache"]) == 0
        finally:
            os.sched_setaffinity(0, cpus)
    first, second = (json.loads((workdir / f"r{r}.json").read_text()) for r in (1, 2))
    assert first["status"] == second["status"] == "ok", (first["error"], second["error"])
    assert first["cell"]["isolation"] == first["worker"]["isolation"] == "forked"
    server = first["worker"]["forked_from"]["pid"]
    assert second["worker"]["forked_from"]["pid"] == server and first["worker"]["forked_from"]["import_s"] > 0
    assert first["worker"]["forked_from"]["compiler"] is False  # an eager worker's server imports no compiler
    assert len({server, first["worker"]["pid"], second["worker"]["pid"], os.getpid()}) == 4
    # each worker on the CPUs of the job that asked for it (as a worker that job started itself), not the server's
    assert os.sched_getaffinity(server) == {min(cpus)} and os.sched_getaffinity(second["worker"]["pid"]) == cpus
    # the worker did not import torch and transformers again: the server had
    assert first["worker"]["startup_parts"]["import_s"] < first["worker"]["forked_from"]["import_s"] / 10
    # each worker writes its own log, as a fresh one does
    logs = [p.read_text() for p in (workdir / "logs" / "workers").glob("tiny_fp32_eager_cpu_r*.log")]
    assert len(logs) == 2 and all("listening on" in text for text in logs)
    # the compile cache as a fresh worker records it in the same environment (the server set it up before its
    # imports; the child does not take the folders it inherited for a user's)
    assert runner.main(argv(workdir / "fresh.json", replicate=3) + ["--compile-cache", "cache"]) == 0
    fresh = json.loads((workdir / "fresh.json").read_text())
    assert fresh["worker"]["compile_cache"] == first["worker"]["compile_cache"] == second["worker"]["compile_cache"]
    assert "forked_from" not in fresh["worker"]
    assert alive(server)
    assert worker_pool.stop_all() == 2  # the fresh worker and the server (the forked ones exited for it)
    assert wait_gone(server) and wait_gone(second["worker"]["pid"])
    assert list((workdir / "logs" / "workers").glob("fork-server-*.log"))


def test_a_cell_job_handed_to_a_running_worker_imports_little(workdir):
    """A cell job's hand-over is mostly its interpreter and imports, paid by every job: where its worker runs
    already it imports neither torch nor the dataclasses module (with the inspect module it pulls in, the largest
    of a thin client's imports) nor subprocess (needed only to start a worker). Its record splits the hand-over:
    the job's start to the worker taking the cell, and the worker's clean-up after the cell before."""
    import subprocess

    assert runner.main(argv(workdir / "first.json")) == 0  # starts the worker
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "latency_sensitivity.measure.runner",
                           *argv(workdir / "second.json")], capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "latency_sensitivity.measure.worker_pool" in imported  # the log is what this test thinks it is
    assert not {"torch", "transformers", "dataclasses", "inspect", "subprocess"} & imported
    r = json.loads((workdir / "second.json").read_text())
    assert r["status"] == "ok", r["error"]
    w = r["worker"]
    assert w["cells_before"] == 1 and w["previous_release_s"] >= 0
    assert 0 < w["picked_up_s"] <= r["metrics"]["job_s"] - r["metrics"]["cell_s"]


def test_a_compiling_backend_s_forked_worker_comes_from_a_server_that_imported_the_compiler(workdir):
    """isolation forked: a compiling backend's workers are forked from a fork server of their own that imported
    torch's compiler (NVML answering torch.cuda.is_available() there, which the compiler's import asks), so the
    worker does not import it again (an eager worker's server imports none: see
    test_forked_workers_come_from_one_fork_server)."""
    spec = runner.parse_args(argv(workdir / "compiled.json", isolation="forked") + ["--backend", "compiled"])[0]
    eager_spec = runner.parse_args(argv(workdir / "eager.json", isolation="forked"))[0]
    keys = [worker_pool.server_key(worker_pool.worker_key({**runner.worker_fields(s), "compile_cache": None}))
            for s in (spec, eager_spec)]
    assert [k["compiler"] for k in keys] == [True, False]  # two servers
    assert runner.main(argv(workdir / "compiled.json", isolation="forked") + ["--backend", "compiled"]) == 0
    compiled = json.loads((workdir / "compiled.json").read_text())
    assert compiled["status"] == "ok", compiled["error"]
    server = compiled["worker"]["forked_from"]
    assert server["compiler"] is True
    assert compiled["worker"]["startup_parts"]["compiler_import_s"] < server["import_s"] / 10
    logs = [p.read_text() for p in (workdir / "logs" / "workers").glob("fork-server-*.log")]
    assert len(logs) == 1 and "(torch's compiler included)" in logs[0]


def test_a_forked_child_that_cannot_use_cuda_says_so(monkeypatch):
    """torch marks a child forked after the CUDA runtime was initialised: the fork server's child checks it before
    it runs a CUDA worker."""
    import torch

    from latency_sensitivity.measure import fork_server

    monkeypatch.setattr(torch._C, "_cuda_isInBadFork", lambda: False, raising=False)
    assert not fork_server.cuda_refused_after_fork()
    monkeypatch.setattr(torch._C, "_cuda_isInBadFork", lambda: True, raising=False)
    assert fork_server.cuda_refused_after_fork()


def test_a_cuda_fork_server_leaves_the_compiler_to_its_workers_where_nvml_cannot_count_the_devices(monkeypatch):
    """Where NVML cannot answer torch's CUDA check (no NVML, MIG instances), the compiler's import would ask the
    CUDA runtime and leave the forked workers unable to use CUDA: the server does not import it."""
    import torch

    from latency_sensitivity.measure import fork_server

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 2, raising=False)
    assert fork_server.compiler_skip_reason("cuda") is None
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: -1, raising=False)
    assert "each worker imports it" in fork_server.compiler_skip_reason("cuda")
    assert fork_server.compiler_skip_reason("cpu") is None  # a CPU worker never uses CUDA

    def failing():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setattr(torch.cuda, "_device_count_nvml", failing, raising=False)
    assert fork_server.compiler_skip_reason("cuda") is not None
    server = fork_server.ForkServer("s.sock", {"cwd": ".", "compiler": True}, Path("."))
    server.compiler_skipped = fork_server.compiler_skip_reason("cuda")
    assert not server.compiler_imported


def test_a_fork_server_with_a_python_thread_forks_nothing():
    from latency_sensitivity.measure import fork_server

    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        assert "Python threads" in fork_server.fork_unsafe_reason()
    finally:
        release.set()
        thread.join()


def test_a_fork_server_is_not_idle_while_a_worker_it_forked_runs(tmp_path, monkeypatch):
    """A worker's cells can outlast the idle time (a first compile): the server that forked it stays for the next
    worker of its imports, and is idle from when the last of its workers exited."""
    import subprocess

    from latency_sensitivity.measure import fork_server

    monkeypatch.setattr(fork_server, "IDLE_S", 0.5)
    server = fork_server.ForkServer(str(tmp_path / "s.sock"), {"cwd": str(tmp_path)}, tmp_path)
    child = subprocess.Popen(["sleep", "30"])
    try:
        server.children.add(child.pid)
        long_ago = time.monotonic() - 60
        assert server.should_exit(long_ago) is None  # no request for a minute, but its worker runs
    finally:
        child.kill()
        child.wait()
    assert server.should_exit(long_ago) is None  # the worker just exited: idle from now
    assert server.children == set()
    time.sleep(0.6)
    assert server.should_exit(long_ago).startswith("idle for")


def test_a_fork_server_that_forks_no_worker_leaves_an_error_row(workdir):
    """A fork server that refuses to fork (it found a Python thread or a CUDA context): the cell is an error row
    that says why."""
    spec = runner.parse_args(argv(workdir / "cell.json", isolation="forked"))[0]
    key = worker_pool.worker_key({**runner.worker_fields(spec), "compile_cache": None})
    path = worker_pool.socket_path("fork-" + worker_pool.key_digest(worker_pool.server_key(key)), 0)
    with one_reply_server(path, {"error": "RuntimeError: the fork server runs 2 Python threads"}):
        assert runner.main(argv(workdir / "cell.json", isolation="forked")) == 0
    r = json.loads((workdir / "cell.json").read_text())
    assert r["status"] == "error" and r["error"]["phase"] == "worker"
    assert "forked no worker: RuntimeError: the fork server runs 2 Python threads" in r["error"]["message"]
