"""Where a Python process's main thread is, sampled: put this folder first on PYTHONPATH and set
STACK_SAMPLE_DIR, and every Python process started so (a pipeline's workers among them) samples its main thread's
stack every STACK_SAMPLE_MS milliseconds (default 2) from a daemon thread, and writes the samples to
STACK_SAMPLE_DIR/<pid>.txt every 5 s and at exit: one line per sample, `wall-clock time<TAB>stack`, the stack as
`file name:function:line` frames, innermost last, joined by ` < `. `stack_windows.py` reads them. With
STACK_SAMPLE_MATCH set, only processes whose command line contains it are sampled.

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

    def run() -> None:
        last = time.monotonic()
        while True:
            time.sleep(period)
            frame = sys._current_frames().get(main)
            if frame is not None:
                line = f"{time.time():.4f}\t{stack(frame)}\n"
                with lock:
                    samples.append(line)
            if time.monotonic() - last > 5:
                dump()
                last = time.monotonic()

    os.makedirs(folder, exist_ok=True)
    threading.Thread(target=run, name="stack-sampler", daemon=True).start()
    atexit.register(dump)


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
if os.environ.get("STACK_SAMPLE_DIR") and _matches():
    _start(os.environ["STACK_SAMPLE_DIR"])
