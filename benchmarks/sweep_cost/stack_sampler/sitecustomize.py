"""Where a Python process's main thread is, sampled: put this folder first on PYTHONPATH and set
STACK_SAMPLE_DIR, and every Python process started so (a pipeline's workers among them) samples its main thread's
stack every STACK_SAMPLE_MS milliseconds (default 2) from a daemon thread, and writes the samples to
STACK_SAMPLE_DIR/<pid>.txt every 5 s and at exit: one line per sample, `wall-clock time<TAB>stack`, the stack as
`file name:function:line` frames, innermost last, joined by ` < `. `stack_windows.py` reads them. With
STACK_SAMPLE_MATCH set, only processes whose command line contains it are sampled. With STACK_SAMPLE_SCHED set,
each line also has, after another tab, the main thread's counters at that moment: nanoseconds on a CPU and waiting
for one (/proc's schedstat), minor and major page faults, and user and system CPU time in clock ticks (its stat).

With NATIVE_SAMPLE_DIR set (and STACK_SAMPLE_MATCH, as above), a matching process instead has py-spy record its
own threads, native frames included, idle ones too (`py-spy record --native --idle --threads --format raw`, the
`py-spy` on PATH or NATIVE_SAMPLE_PYSPY; NATIVE_SAMPLE_RATE samples a second, default 200): NATIVE_SAMPLE_DIR/<pid>.raw
(collapsed stacks: frames joined by `;`, outermost first, then a space and the count) beside <pid>.json (its start
time and command line). The process lets any process trace it (prctl PR_SET_PTRACER), which py-spy needs under
Yama's ptrace scope 1; py-spy's own messages go to <pid>.log. `native_stacks.py` reads them.

Either way only processes started as interpreters of their own are sampled: with `measure.isolation: forked` a worker
is forked from the fork server, which ran this at its own start (its command line names the fork server).

Without STACK_SAMPLE_DIR it does nothing. A sitecustomize found later on sys.path still runs."""

import os
import sys


def _chain() -> None:
    """Run the sitecustomize this one shadows, if any."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        path = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return


def _start(folder: str) -> None:
    import atexit
    import threading
    import time

    period = float(os.environ.get("STACK_SAMPLE_MS", "2")) / 1000
    main = threading.main_thread().ident
    samples: list[str] = []
    path = os.path.join(folder, f"{os.getpid()}.txt")
    lock = threading.Lock()

    def stack(frame) -> str:
        frames = []  # every frame: the reader finds a sample's window by its outer frames
        while frame is not None:
            code = frame.f_code
            frames.append(f"{os.path.basename(code.co_filename)}:{code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        return " < ".join(reversed(frames))

    def dump() -> None:
        with lock:
            text = "".join(samples)
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)

    task = f"/proc/self/task/{threading.main_thread().native_id}"

    def sched() -> str:
        """The main thread's CPU time and time waiting for a CPU (ns, schedstat), minor and major page faults and
        user and system CPU time (clock ticks, stat)."""
        try:
            with open(f"{task}/schedstat") as fh:
                run_ns, wait_ns = fh.read().split()[:2]
            with open(f"{task}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return "\t" + " ".join([run_ns, wait_ns, fields[7], fields[9], fields[11], fields[12]])
        except (OSError, IndexError, ValueError):
            return ""

    with_sched = bool(os.environ.get("STACK_SAMPLE_SCHED"))

    def run() -> None:
        last = time.monotonic()
        while True:
            time.sleep(period)
            frame = sys._current_frames().get(main)
            if frame is not None:
                line = f"{time.time():.4f}\t{stack(frame)}{sched() if with_sched else ''}\n"
                with lock:
                    samples.append(line)
            if time.monotonic() - last > 5:
                dump()
                last = time.monotonic()

    os.makedirs(folder, exist_ok=True)
    threading.Thread(target=run, name="stack-sampler", daemon=True).start()
    atexit.register(dump)


def _start_native(folder: str) -> None:
    import ctypes
    import json
    import subprocess
    import time

    os.makedirs(folder, exist_ok=True)
    pid = os.getpid()
    with open("/proc/self/cmdline", "rb") as fh:
        cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    with open(os.path.join(folder, f"{pid}.json"), "w") as fh:
        json.dump({"pid": pid, "start": time.time(), "cmdline": cmdline}, fh)
    pr_set_ptracer, any_process = 0x59616D61, ctypes.c_ulong(-1)
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_ptracer, any_process, 0, 0, 0)
    command = [os.environ.get("NATIVE_SAMPLE_PYSPY", "py-spy"), "record", "--native", "--idle", "--threads",
               "--rate", os.environ.get("NATIVE_SAMPLE_RATE", "200"), "--format", "raw", "--pid", str(pid),
               "--output", os.path.join(folder, f"{pid}.raw")]
    with open(os.path.join(folder, f"{pid}.log"), "w") as log:
        subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    time.sleep(0.2)  # py-spy attached before the process goes on


def _matches() -> bool:
    match = os.environ.get("STACK_SAMPLE_MATCH")
    if not match:
        return True
    try:
        with open("/proc/self/cmdline", "rb") as fh:
            return match in fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


_chain()
if os.environ.get("NATIVE_SAMPLE_DIR") and _matches():
    _start_native(os.environ["NATIVE_SAMPLE_DIR"])
elif os.environ.get("STACK_SAMPLE_DIR") and _matches():
    _start(os.environ["STACK_SAMPLE_DIR"])
