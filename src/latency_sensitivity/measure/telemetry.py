"""Read-only GPU telemetry around a measurement (the NVTX ranges for profilers are in engine/nvtx.py).

`GpuSampler` polls NVML (the `pynvml` module of nvidia-ml-py) from a daemon thread while a cell is
measured: utilisation, clocks, power, temperature and device memory, plus the board's energy counter at
start and stop. It only reads; it never changes clocks, power limits or any other setting.

It never breaks a measurement: a field the GPU or driver does not support (``NVMLError_NotSupported`` and
kin) is None in every sample while the other fields go on being sampled, and when NVML cannot start at all
(no driver, a CPU machine, no `pynvml`) the sampler is a no-op with ``available == False`` and a ``reason``.

The torch device index is mapped to the NVML device it really is. CUDA numbers the devices it can see
(after ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER``), NVML numbers every GPU in PCI order, so the two
indices differ whenever only some GPUs are visible. The sampler first asks torch for the device's UUID and
finds the NVML device with that UUID; without torch CUDA it reads ``CUDA_VISIBLE_DEVICES`` (integers or
``GPU-``/``MIG-`` UUIDs, prefixes allowed as CUDA allows them).
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from typing import Any, Callable


# Keys of one entry of GpuSampler.samples.
SAMPLE_FIELDS: tuple[str, ...] = (
    "t",
    "gpu_util_pct",
    "mem_util_pct",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "power_w",
    "temperature_c",
    "device_used_mb",
)


# Keys of GpuSampler.summary(), in order.
SUMMARY_KEYS: tuple[str, ...] = (
    "gpu_util_p50_pct",
    "gpu_util_max_pct",
    "sm_clock_p50_mhz",
    "sm_clock_min_mhz",
    "sm_clock_start_mhz",
    "sm_clock_end_mhz",
    "mem_clock_p50_mhz",
    "power_p50_w",
    "power_max_w",
    "temperature_max_c",
    "device_used_max_mb",
    "energy_j",
    "n_samples",
)


# NVML errors that mean "this query will never work on this device": the field is not asked again.
_PERMANENT_ERRORS = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission")


def parse_visible_devices(value: str | None) -> list[int | str] | None:
    """The devices named by a ``CUDA_VISIBLE_DEVICES`` value, in CUDA's order; None when unset.

    Entries are NVML indices (ints) or UUID strings (``GPU-…``/``MIG-…``, possibly only a prefix). As in
    CUDA, the first invalid entry (or a negative index) ends the list, and a repeated entry hides all devices.
    """
    if value is None:
        return None
    out: list[int | str] = []
    for raw in value.split(","):
        tok = raw.strip()
        if not tok:
            break
        if tok.upper().startswith(("GPU-", "MIG-")):
            entry: int | str = tok
        else:
            m = re.match(r"[+-]?\d+", tok)
            if not m:
                break
            n = int(m.group())
            if n < 0:
                break
            entry = n
        if entry in out:
            return []
        out.append(entry)
    return out


def _norm_uuid(u: Any) -> str:
    if isinstance(u, bytes):
        u = u.decode(errors="replace")
    s = str(u).strip().lower()
    for prefix in ("gpu-", "mig-"):
        if s.startswith(prefix):
            return s[len(prefix) :]
    return s


def _nvml_uuids(nvml: Any) -> list[tuple[int, Any, str]]:
    """(index, handle, normalised uuid) of every device NVML enumerates; devices that fail are left out."""
    out = []
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except Exception:
        return out
    for i in range(count):
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            out.append((i, h, _norm_uuid(nvml.nvmlDeviceGetUUID(h))))
        except Exception:
            continue
    return out


def _handle_for_uuid(nvml: Any, uuid: str) -> tuple[Any, int | None]:
    """Handle and NVML index of the device whose UUID is (or starts with) `uuid`; raises LookupError."""
    want = _norm_uuid(uuid)
    if want:
        matches = [(i, h) for i, h, u in _nvml_uuids(nvml) if u == want]
        if not matches:
            matches = [(i, h) for i, h, u in _nvml_uuids(nvml) if u.startswith(want)]
        if len(matches) == 1:
            return matches[0][1], matches[0][0]
        if len(matches) > 1:
            raise LookupError(f"UUID {uuid!r} is ambiguous among NVML devices")
    # Not a top-level GPU (e.g. a MIG instance): ask NVML by full UUID, with either prefix.
    original = str(uuid).strip()
    candidates = [original] if original.upper().startswith(("GPU-", "MIG-")) else []
    candidates += [f"GPU-{want}", f"MIG-{want}"]
    for cand in candidates:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(cand), None
        except Exception:
            continue
    raise LookupError(f"no NVML device has UUID {uuid!r}")


def _torch_uuid(device_index: int) -> str | None:
    """UUID of torch CUDA device `device_index`, or None without torch CUDA."""
    try:
        import torch

        if not torch.cuda.is_available() or device_index >= torch.cuda.device_count():
            return None
        u = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
        return str(u) if u is not None and str(u) else None
    except Exception:
        return None


def resolve_nvml_device(
    nvml: Any,
    device_index: int,
    visible_devices: str | None = None,
    torch_uuid: Callable[[int], str | None] | None = _torch_uuid,
) -> tuple[Any, int | None, str]:
    """(handle, NVML index or None, how it was found) for torch CUDA device `device_index`.

    NVML must be initialised. Tries the UUID torch reports for the device, then `visible_devices` (the
    value of ``CUDA_VISIBLE_DEVICES``), then takes `device_index` as the NVML index. Raises LookupError or
    the NVML error when no device fits.
    """
    if device_index < 0:
        raise LookupError(f"device index {device_index} is negative")
    uuid = torch_uuid(device_index) if torch_uuid is not None else None
    if uuid:
        try:
            handle, idx = _handle_for_uuid(nvml, uuid)
            return handle, idx, f"torch device uuid {uuid}"
        except LookupError:
            pass  # fall back on the environment
    visible = parse_visible_devices(visible_devices)
    if visible is None:
        return nvml.nvmlDeviceGetHandleByIndex(device_index), device_index, "device index (CUDA_VISIBLE_DEVICES unset)"
    if device_index >= len(visible):
        raise LookupError(
            f"device index {device_index} is beyond CUDA_VISIBLE_DEVICES={visible_devices!r} ({len(visible)} visible)"
        )
    entry = visible[device_index]
    if isinstance(entry, int):
        how = f"CUDA_VISIBLE_DEVICES={visible_devices!r} entry {device_index}"
        if os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") != "PCI_BUS_ID":
            how += " (assumes CUDA and NVML order devices alike)"
        return nvml.nvmlDeviceGetHandleByIndex(entry), entry, how
    handle, idx = _handle_for_uuid(nvml, entry)
    return handle, idx, f"CUDA_VISIBLE_DEVICES={visible_devices!r} uuid {entry}"


def _num(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None]


def _p50(values: list[Any]) -> float | None:
    v = _num(values)
    return float(statistics.median(v)) if v else None


def _max(values: list[Any]) -> float | None:
    v = _num(values)
    return max(v) if v else None


def _min(values: list[Any]) -> float | None:
    v = _num(values)
    return min(v) if v else None


def summarize_samples(
    samples: list[dict[str, Any]],
    energy_start_mj: float | None = None,
    energy_end_mj: float | None = None,
) -> dict[str, Any]:
    """The summary columns (SUMMARY_KEYS) of a list of samples; absent values are None.

    sm_clock_start_mhz / sm_clock_end_mhz are the SM clock of the first and last sample (the sampler takes
    those when it starts and when it stops).
    """
    col = {f: [s.get(f) for s in samples] for f in SAMPLE_FIELDS}
    energy_j = None
    if energy_start_mj is not None and energy_end_mj is not None and energy_end_mj >= energy_start_mj:
        energy_j = (float(energy_end_mj) - float(energy_start_mj)) / 1000.0
    first = samples[0].get("sm_clock_mhz") if samples else None
    last = samples[-1].get("sm_clock_mhz") if samples else None
    return {
        "gpu_util_p50_pct": _p50(col["gpu_util_pct"]),
        "gpu_util_max_pct": _max(col["gpu_util_pct"]),
        "sm_clock_p50_mhz": _p50(col["sm_clock_mhz"]),
        "sm_clock_min_mhz": _min(col["sm_clock_mhz"]),
        "sm_clock_start_mhz": float(first) if first is not None else None,
        "sm_clock_end_mhz": float(last) if last is not None else None,
        "mem_clock_p50_mhz": _p50(col["mem_clock_mhz"]),
        "power_p50_w": _p50(col["power_w"]),
        "power_max_w": _max(col["power_w"]),
        "temperature_max_c": _max(col["temperature_c"]),
        "device_used_max_mb": _max(col["device_used_mb"]),
        "energy_j": energy_j,
        "n_samples": len(samples),
    }


def empty_summary() -> dict[str, Any]:
    """The summary of a sampler that took nothing: every value None, n_samples 0."""
    return summarize_samples([])


def energy_per_token_j(summary: dict[str, Any], tokens: float) -> float | None:
    """summary["energy_j"] / tokens, or None when energy is unknown or tokens is not positive."""
    e = summary.get("energy_j") if summary else None
    if e is None or not tokens or tokens <= 0:
        return None
    return float(e) / float(tokens)


class GpuSampler:
    """Polls NVML for one GPU from a daemon thread; read only.

    ``with GpuSampler(0) as s: run(); row.update(s.summary())`` — or ``start()`` / ``stop()``.
    One sample is taken on start and one on stop, besides one every `interval_s` in between.

    Attributes: ``available`` / ``reason`` (why not), ``nvml_index`` (None for a MIG instance or when
    unavailable), ``mapping`` (how the device was found), ``samples`` (dicts with SAMPLE_FIELDS keys),
    ``unsupported_fields`` (fields NVML refused for good), ``energy_start_mj`` / ``energy_end_mj``.
    `nvml` may be given a module-like object standing in for `pynvml` (tests).
    """

    def __init__(
        self,
        device_index: int = 0,
        interval_s: float = 0.02,
        *,
        nvml: Any = None,
        visible_devices: str | None | object = ...,
        use_torch: bool = True,
    ) -> None:
        self.device_index = int(device_index)
        self.interval_s = max(float(interval_s), 0.0005)
        self.samples: list[dict[str, Any]] = []
        self.available = False
        self.reason: str | None = None
        self.nvml_index: int | None = None
        self.mapping: str | None = None
        self.unsupported_fields: set[str] = set()
        self.energy_start_mj: float | None = None
        self.energy_end_mj: float | None = None
        self.t_start: float | None = None
        self.t_stop: float | None = None
        self._visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible_devices is ... else visible_devices
        self._use_torch = use_torch
        self._nvml = nvml
        self._handle: Any = None
        self._open = False
        self._running = False
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._open_nvml()

    # -- NVML session ------------------------------------------------------------------------------

    def _open_nvml(self) -> None:
        if self._open:
            return
        if self._nvml is None:
            try:
                import pynvml  # type: ignore[import-not-found]

                self._nvml = pynvml
            except Exception as e:  # noqa: BLE001
                self._set_unavailable(f"pynvml not importable: {type(e).__name__}: {e}")
                return
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as e:  # noqa: BLE001
            self._set_unavailable(f"NVML init failed: {type(e).__name__}: {e}")
            return
        self._open = True
        try:
            self._handle, self.nvml_index, self.mapping = resolve_nvml_device(
                nvml,
                self.device_index,
                self._visible,  # type: ignore[arg-type]
                _torch_uuid if self._use_torch else None,
            )
        except Exception as e:  # noqa: BLE001
            self._close_nvml()
            self._set_unavailable(f"no NVML device for torch device {self.device_index}: {type(e).__name__}: {e}")
            return
        self.available = True
        self.reason = None

    def _set_unavailable(self, reason: str) -> None:
        self.available = False
        self.reason = reason
        self._handle = None
        self.nvml_index = None

    def _close_nvml(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass

    # -- reading -----------------------------------------------------------------------------------

    def _is_permanent(self, err: BaseException) -> bool:
        for name in _PERMANENT_ERRORS:
            cls = getattr(self._nvml, name, None)
            if isinstance(cls, type) and isinstance(err, cls):
                return True
        return False

    def _read(self, field: str, fn: Callable[[], Any]) -> Any:
        if field in self.unsupported_fields:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - never break a measurement
            if self._is_permanent(e):
                self.unsupported_fields.add(field)
            return None

    def _read_energy(self) -> float | None:
        nvml, h = self._nvml, self._handle
        v = self._read("energy", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(h))
        return float(v) if v is not None else None

    def poll(self) -> dict[str, Any] | None:
        """Take one sample now and append it to `samples` (the thread calls this); None when unavailable."""
        if not self.available or not self._open:
            return None
        nvml, h = self._nvml, self._handle
        t = time.monotonic()
        util = self._read("utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(h))
        sm = self._read("sm_clock", lambda: nvml.nvmlDeviceGetClockInfo(h, getattr(nvml, "NVML_CLOCK_SM", 1)))
        mem = self._read("mem_clock", lambda: nvml.nvmlDeviceGetClockInfo(h, getattr(nvml, "NVML_CLOCK_MEM", 2)))
        power = self._read("power", lambda: nvml.nvmlDeviceGetPowerUsage(h))
        temp = self._read(
            "temperature", lambda: nvml.nvmlDeviceGetTemperature(h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        )
        meminfo = self._read("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(h))
        sample = {
            "t": t,
            "gpu_util_pct": getattr(util, "gpu", None) if util is not None else None,
            "mem_util_pct": getattr(util, "memory", None) if util is not None else None,
            "sm_clock_mhz": sm,
            "mem_clock_mhz": mem,
            "power_w": power / 1000.0 if power is not None else None,
            "temperature_c": temp,
            "device_used_mb": meminfo.used / 2**20 if getattr(meminfo, "used", None) is not None else None,
        }
        self.samples.append(sample)
        return sample

    def _loop(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001
                pass

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> GpuSampler:
        """Read the energy counter, take a first sample and start polling. A no-op when unavailable."""
        if self._running:
            return self
        if not self._open and self.reason is None:
            self._open_nvml()  # restarted after stop()
        self.samples = []
        self.energy_start_mj = self.energy_end_mj = None
        self.t_start, self.t_stop = time.monotonic(), None
        if not self.available:
            return self
        self.energy_start_mj = self._read_energy()
        self.poll()
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._loop, name="GpuSampler", daemon=True)
        self._running = True
        self._thread.start()
        return self

    def stop(self) -> GpuSampler:
        """Stop polling, take a last sample, read the energy counter and release NVML."""
        self.t_stop = time.monotonic()
        if not self._running:
            self._close_nvml()
            return self
        self._running = False
        self._stop_event.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=max(2.0, 10 * self.interval_s))
        self.poll()
        self.energy_end_mj = self._read_energy()
        if thread is None or not thread.is_alive():
            self._close_nvml()
        return self

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if not self._running:
                self._close_nvml()
        except Exception:
            pass

    def summary(self) -> dict[str, Any]:
        """SUMMARY_KEYS → value; every value None and n_samples 0 when NVML was not available."""
        if not self.available:
            return empty_summary()
        return summarize_samples(list(self.samples), self.energy_start_mj, self.energy_end_mj)
