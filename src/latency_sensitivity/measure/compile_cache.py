"""Where compiled code is cached between cells and runs: one folder per device and versions, under results/.

The compiled backend spends most of its setup in torch.compile: inductor's FX graph compilation and kernel
autotuning, and Triton's kernel compilation (also of this package's own Triton kernels). Each keeps an on-disk
cache, by default under /tmp, shared by everything the user ever ran and lost with /tmp. The measure rule points
them instead at ``results/cache/compile/<device>-torch<v>-triton<v>/`` (``inductor/``, ``triton/``): a second
replicate, a rerun, or a cell of a shape compiled before, finds its code there, and a new device or a new torch or
Triton version starts a folder of its own (the caches also check versions themselves; the folder makes the
separation visible and lets a user delete one). Triton's autotuning results are cached too
(``TRITON_CACHE_AUTOTUNING``). The cache changes how long a compile takes, not the code a cell runs: each cell
records the cache hits and misses of its compile (``backend_info.compile_stats``).

A cache folder set by the user (``TORCHINDUCTOR_CACHE_DIR``, ``TRITON_CACHE_DIR``) is kept, and recorded as such.

One more setting makes compiled code the same whatever ran before it in the process: the ``ptxas`` that turns
Triton's kernels into GPU code. inductor, the first time it compiles, points Triton at the ptxas that ships
with torch (``TRITON_PTXAS_PATH``); until then Triton uses its own. So this package's Triton kernels (the
compiled backend's batch-1 layers) were built by one ptxas in a process that had run torch.compile before and by
the other in one that had not: different GPU code, and a different key in Triton's cache, which then missed.
``configure`` makes the choice at the start, the one inductor would make (torch's ptxas where torch has one),
unless the user set ``TRITON_PTXAS_PATH``; the cell records it.

Python's own compiled code, the bytecode of every module a process imports, is cached the same way where Python
would otherwise compile torch's and transformers' sources again in every process: where writing bytecode is
turned off (``PYTHONDONTWRITEBYTECODE``, as container images often set) and torch was installed without it. The
workflow's jobs, and a measuring process started otherwise, then write and read it under
``results/cache/compile/bytecode/`` (Python's ``sys.pycache_prefix``), never beside the installed sources; a
prefix set by the user (``PYTHONPYCACHEPREFIX``) is kept, and anywhere else Python's own bytecode is used as it
is. The bytecode changes how long an import takes, not what runs (Python checks each file against its source).

This module must run before torch is imported, and imports neither torch nor Triton (only their versions).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata, util
from pathlib import Path

ENV_DIRS = {"inductor": "TORCHINDUCTOR_CACHE_DIR", "triton": "TRITON_CACHE_DIR"}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


def device_name(device: str, environ: dict | None = None) -> str:
    """The device the process will measure on: the GPU's name from NVML (the first of CUDA_VISIBLE_DEVICES), or
    the CPU's architecture. Best effort: 'cuda-unknown' when NVML cannot say."""
    environ = os.environ if environ is None else environ
    if device != "cuda":
        return f"cpu-{platform.machine() or 'unknown'}"
    try:
        import pynvml

        from latency_sensitivity.measure.telemetry import resolve_nvml_device

        pynvml.nvmlInit()
        try:
            # the process's first visible device, as the telemetry finds it (indices, UUIDs, MIG), without torch
            handle = resolve_nvml_device(pynvml, 0, environ.get("CUDA_VISIBLE_DEVICES"), torch_uuid=None)[0]
            name = pynvml.nvmlDeviceGetName(handle)
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML, or a device it does not know
        return "cuda-unknown"


def torch_ptxas() -> str | None:
    """The ptxas that ships with torch (its CUDA builds: torch/bin/ptxas), found without importing torch; None
    where there is none (CPU builds)."""
    spec = util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "bin" / "ptxas"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def has_bytecode(module: str) -> bool:
    """Whether `module`'s installed source has its bytecode beside it (its __pycache__), found without importing
    it; True where it is not installed or has no source (nothing to compile)."""
    spec = util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return True
    return Path(util.cache_from_source(spec.origin)).is_file()


def bytecode_cache(root: str | os.PathLike, environ: dict | None = None, module: str = "torch") -> dict:
    """Cache this process's bytecode under `root`/bytecode/ where it would otherwise compile what it imports
    again: writing bytecode is off and `module` (torch) has none installed (module docstring). Sets
    sys.pycache_prefix and lets this process write there, and sets PYTHONPYCACHEPREFIX (and unsets
    PYTHONDONTWRITEBYTECODE) in `environ`, so that the processes it starts do the same; returns the record. The
    workflow calls it for every job, each measuring process for itself."""
    environ = os.environ if environ is None else environ
    folder = (Path(root) / "bytecode").resolve()
    prefix = sys.pycache_prefix or environ.get("PYTHONPYCACHEPREFIX")
    if prefix:  # the user's, or ours where a process of this workflow started this one
        return {"dir": prefix, "set_by": "workflow" if Path(prefix) == folder else "user"}
    if not sys.dont_write_bytecode or has_bytecode(module):
        return {"dir": None, "set_by": "default"}  # Python writes its own, or reads what was installed
    sys.pycache_prefix = environ["PYTHONPYCACHEPREFIX"] = str(folder)  # Python makes the folders as it writes
    sys.dont_write_bytecode = False  # only under the prefix: the installed sources stay as they are
    environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return {"dir": str(folder), "set_by": "workflow"}


def cache_key(device: str, environ: dict | None = None, versions: dict | None = None) -> str:
    """The folder name: device and the versions of torch and Triton, as a safe file name."""
    versions = versions or {"torch": _version("torch"), "triton": _version("triton")}
    raw = f"{device_name(device, environ)}-torch{versions['torch']}-triton{versions['triton']}"
    return "".join(c if c.isalnum() or c in ".+-" else "-" for c in raw.lower().replace(" ", "-"))


def configure(root: str | os.PathLike | None, device: str, environ: dict | None = None,
              versions: dict | None = None) -> dict:
    """Point inductor's and Triton's caches at `root`/<cache_key>/ (unless the user set them); returns the record
    (folders and whether each was ours or the user's). `root` None: leave torch's defaults, and say so."""
    environ = os.environ if environ is None else environ
    record: dict = {"root": None if root is None else str(root)}
    key = cache_key(device, environ, versions) if root is not None else None
    record["key"] = key
    # compiled steps saved ahead of time (engine/decode_step.SavedStep): always ours, beside the other two
    record["steps"] = None if root is None else str((Path(root) / key / "steps").resolve())
    for name, var in ENV_DIRS.items():
        if environ.get(var):
            record[name] = {"dir": environ[var], "set_by": "user"}
        elif root is not None:
            folder = Path(root) / key / name
            folder.mkdir(parents=True, exist_ok=True)
            environ[var] = str(folder.resolve())
            record[name] = {"dir": environ[var], "set_by": "workflow"}
        else:
            record[name] = {"dir": None, "set_by": "default"}
    if root is not None:
        environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
        record["bytecode"] = bytecode_cache(root, environ)
    else:
        record["bytecode"] = {"dir": None, "set_by": "default"}
    record["triton_autotuning_cached"] = environ.get("TRITON_CACHE_AUTOTUNING") == "1"
    if environ.get("TRITON_PTXAS_PATH"):
        record["ptxas"] = {"path": environ["TRITON_PTXAS_PATH"], "set_by": "user"}
    elif (ptxas := torch_ptxas()) is not None:
        environ["TRITON_PTXAS_PATH"] = ptxas
        record["ptxas"] = {"path": ptxas, "set_by": "workflow"}
    else:  # no torch ptxas: Triton uses its own, and so would inductor
        record["ptxas"] = {"path": None, "set_by": "default"}
    return record
