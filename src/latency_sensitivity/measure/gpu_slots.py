"""One GPU per measurement process: concurrent jobs of a sweep never share a device.

Snakemake counts GPUs (`resources: gpu=1` per job, `--resources gpu=N` in all) but does not say *which*
GPU a job may use. Each GPU job therefore claims a device itself, before CUDA starts: it takes an exclusive,
non-blocking lock on one file per device (``<lock_dir>/gpu-<host>-<id>.lock``), the first free one in order, and
narrows ``CUDA_VISIBLE_DEVICES`` to that device. The lock is held until the process exits (the kernel
releases it even when the process is killed), so a device is free again exactly when its job has ended.
When every device is taken (more concurrent GPU jobs than devices), the claim waits for one, and asks the idle
measurement workers of the working directory to exit meanwhile (worker_pool.py), as they hold their GPUs between
cells.

The devices are those this process may see: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set (indices
or UUIDs, kept as written), else every device NVML counts. The lock directory is shared by the jobs of one
workflow run: ``LATENCY_SENSITIVITY_GPU_LOCKS``, by default ``.snakemake/gpu-locks`` under the working
directory. ``LATENCY_SENSITIVITY_GPU_SLOTS=off`` turns claiming off (the process keeps what it was given).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_DIR_ENV = "LATENCY_SENSITIVITY_GPU_LOCKS"
SWITCH_ENV = "LATENCY_SENSITIVITY_GPU_SLOTS"
DEFAULT_LOCK_DIR = ".snakemake/gpu-locks"

_held: list = []  # open lock files of this process (kept open, and so locked, until exit)


@dataclass(frozen=True)
class Claim:
    device: str  # the CUDA_VISIBLE_DEVICES entry this process now uses
    devices: tuple[str, ...]  # the devices it chose from
    lock_file: str
    waited_s: float


def visible_devices(environ: dict | None = None) -> list[str]:
    """The devices this process may use, as CUDA_VISIBLE_DEVICES entries (empty: none or unknown)."""
    from latency_sensitivity.measure.telemetry import parse_visible_devices

    environ = os.environ if environ is None else environ
    parsed = parse_visible_devices(environ.get("CUDA_VISIBLE_DEVICES"))
    if parsed is not None:
        return [str(d) for d in parsed]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML (CPU machine): nothing to claim
        return []


def _lock_name(device: str) -> str:
    """One lock file per host and device: a lock folder on a shared file system serves every node."""
    import socket

    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{socket.gethostname()}-{device}")
    return f"gpu-{safe}.lock"


def try_claim(devices: list[str], lock_dir: str | os.PathLike) -> tuple[str, object] | None:
    """The first device whose lock file could be locked now, with the open (locked) file; None if all are taken."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        fh = open(lock_dir / _lock_name(device), "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        return device, fh
    return None


def claim_gpu(lock_dir: str | os.PathLike | None = None, devices: list[str] | None = None,
              poll_s: float = 0.5, timeout_s: float | None = None, environ: dict | None = None,
              on_wait=None) -> Claim | None:
    """Claim one device for this process and narrow CUDA_VISIBLE_DEVICES to it (see the module docstring).

    Returns None when claiming is off or there is no device to claim. Waits while all devices are taken;
    raises TimeoutError after `timeout_s` if given. on_wait: called once where every device is taken, before
    waiting; the function it returns is called when the wait ends, claimed or not.
    """
    environ = os.environ if environ is None else environ
    if environ.get(SWITCH_ENV, "on").lower() in ("0", "off", "false", "no"):
        return None
    devices = visible_devices(environ) if devices is None else list(devices)
    if not devices:
        return None
    lock_dir = Path(lock_dir or environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    start = time.monotonic()
    end_wait = None
    try:
        while True:
            got = try_claim(devices, lock_dir)
            if got is not None:
                device, fh = got
                _held.append(fh)
                environ["CUDA_VISIBLE_DEVICES"] = device
                return Claim(device, tuple(devices), str(lock_dir / _lock_name(device)), time.monotonic() - start)
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"no free GPU among {devices} after {timeout_s:.0f} s (locks in {lock_dir})")
            if end_wait is None and on_wait is not None:
                end_wait = on_wait()
            time.sleep(poll_s)
    finally:
        if end_wait is not None:
            end_wait()


def claim_for(device: str, ask_idle_workers: bool = True) -> Claim | None:
    """What a GPU job calls first: on device "cuda" claim a GPU (and say which on stderr); else nothing.

    An explicit "cuda:N" keeps the device it names. ask_idle_workers: while every GPU is taken, ask the idle
    measurement workers of this working directory to exit (worker_pool.ask_idle_workers_to_exit), which would
    otherwise hold their GPUs until they have been idle for a while; a worker's own claim does not.
    """
    if device != "cuda":
        return None
    import sys

    from latency_sensitivity.measure import worker_pool

    claim = claim_gpu(on_wait=(lambda: worker_pool.ask_idle_workers_to_exit(device)) if ask_idle_workers else None)
    if claim is not None:
        print(f"GPU slot: CUDA_VISIBLE_DEVICES={claim.device} (of {', '.join(claim.devices)}; "
              f"waited {claim.waited_s:.1f} s)", file=sys.stderr)
    return claim
