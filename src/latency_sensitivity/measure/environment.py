"""What a cell ran on: host, software versions and device, recorded next to every measurement.

`collect` never raises: anything it cannot find out is None.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from datetime import datetime, timezone
from typing import Any

from latency_sensitivity.engine.probe import dist_version, module_version, versions

ENVIRONMENT_KEYS: tuple[str, ...] = (
    "hostname",
    "platform",
    "python",
    "torch",
    "transformers",
    "triton",
    "snakemake",
    "numpy",
    "cuda_runtime",
    "cudnn",
    "device",
    "device_name",
    "device_count",
    "gpu_uuid",
    "driver",
    "gpu_memory_total_mb",
    "cpu_model",
    "cpu_count",
    "torch_num_threads",
    "cuda_visible_devices",
    "timestamp",
)


def _safe(fn: Any, default: Any = None) -> Any:
    try:
        v = fn()
    except Exception:  # noqa: BLE001 - never raise
        return default
    return default if v is None or v == "" else v


def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str | None:
    """The CPU model: /proc/cpuinfo's "model name" (or an ARM equivalent), else platform.processor()."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            fields: dict[str, str] = {}
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() and value.strip():
                    fields.setdefault(key.strip().lower(), value.strip())
        for key in ("model name", "hardware", "processor", "cpu model", "uarch"):
            v = fields.get(key)
            if v and not v.isdigit():  # "processor : 0" on x86 is an index, not a name
                return v
    except Exception:  # noqa: BLE001
        pass
    return _safe(platform.processor) or _safe(platform.machine)


def _parse_device(device: str) -> tuple[str, int]:
    kind, _, idx = str(device or "cpu").strip().lower().partition(":")
    kind = "cuda" if kind in ("cuda", "gpu") else kind
    try:
        index = int(idx) if idx else 0
    except ValueError:
        index = 0
    return kind, index


def driver_version(nvml: Any = None) -> str | None:
    """The NVIDIA driver version from NVML, or None (no driver, no pynvml)."""
    try:
        if nvml is None:
            import pynvml as nvml  # type: ignore[import-not-found,no-redef]
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001
        return None
    try:
        v = nvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else (str(v) if v else None)
    except Exception:  # noqa: BLE001
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def collect(device: str) -> dict[str, Any]:
    """Host, software and device facts for a cell run on `device` ("cpu", "cuda", "cuda:1"). Never raises.

    device is the kind ("cpu"/"cuda"); device_name the GPU name or the CPU model; device_count the CUDA
    devices torch sees for cuda and 1 for cpu; gpu_memory_total_mb the GPU's total memory (None on cpu).
    """
    kind, index = _parse_device(device)
    try:
        import torch
    except Exception:  # noqa: BLE001
        torch = None  # type: ignore[assignment]

    cpu = cpu_model()
    info: dict[str, Any] = {
        "hostname": _safe(socket.gethostname),
        "platform": _safe(platform.platform),
        "python": _safe(platform.python_version),
        "torch": _safe(lambda: str(torch.__version__)) if torch is not None else dist_version("torch"),
        "transformers": module_version("transformers"),
        "triton": versions()["triton"],
        "snakemake": module_version("snakemake"),
        "numpy": module_version("numpy"),
        "cuda_runtime": _safe(lambda: torch.version.cuda) if torch is not None else None,
        "cudnn": _safe(lambda: torch.backends.cudnn.version()) if torch is not None else None,
        "device": kind,
        "device_name": None,
        "device_count": None,
        "driver": driver_version(),
        "gpu_memory_total_mb": None,
        "cpu_model": cpu,
        "cpu_count": _safe(os.cpu_count),
        "torch_num_threads": _safe(torch.get_num_threads) if torch is not None else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if kind == "cuda" and torch is not None:
        info["device_name"] = _safe(lambda: torch.cuda.get_device_name(index))
        info["device_count"] = _safe(torch.cuda.device_count)
        info["gpu_uuid"] = _safe(lambda: str(torch.cuda.get_device_properties(index).uuid))
        info["gpu_memory_total_mb"] = _safe(
            lambda: round(torch.cuda.get_device_properties(index).total_memory / 2**20, 1)
        )
    elif kind == "cpu":
        info["device_name"] = cpu
        info["device_count"] = 1
    return {k: info.get(k) for k in ENVIRONMENT_KEYS}


if __name__ == "__main__":  # python -m latency_sensitivity.measure.environment [device]
    import json

    print(json.dumps(collect(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2))
