"""The host side of a cell: what can explain noise in launch-bound cells, recorded around the measured reps.

A launch-bound step is set by how fast the host issues kernels, so a cell moves with the CPU's clock, with
other load on the machine, with time stolen by a hypervisor and with the CPUs the process may run on. Each
cell records, at the start and the end of its measured reps, the mean current clock of the CPUs it may run
on, the load average, and the CPU time stolen in between (from /proc/stat), beside its CPU affinity.
``measure.cpu_affinity`` pins the measuring process to given CPUs before anything is measured.

Every reading is best effort: a value the machine does not expose is None, never an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

PROC_STAT = Path("/proc/stat")
CPUFREQ = Path("/sys/devices/system/cpu")
CPUINFO = Path("/proc/cpuinfo")


def process_age_s() -> float | None:
    """Seconds since this process started, as Linux records it (/proc/self/stat's start time against
    /proc/uptime, to the clock tick); None elsewhere."""
    try:
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def affinity() -> list[int] | None:
    """The CPUs this process may run on (None where the platform does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def pin(cpus: Sequence[int]) -> list[int]:
    """Restrict this process (and the threads it starts later) to `cpus`; returns the affinity now in force.
    Raises ValueError naming the CPUs this machine does not have."""
    wanted = sorted(set(int(c) for c in cpus))
    available = set(range(os.cpu_count() or 0))
    missing = [c for c in wanted if c not in available]
    if not wanted or missing:
        raise ValueError(f"cpu_affinity {wanted}: CPUs {missing or wanted} do not exist on this machine "
                         f"({len(available)} CPUs, 0-{len(available) - 1})")
    os.sched_setaffinity(0, wanted)
    return affinity() or wanted


def steal_ticks(stat: Path = PROC_STAT) -> int | None:
    """Clock ticks stolen from this machine's CPUs so far (the 8th value of /proc/stat's `cpu` line)."""
    try:
        for line in stat.read_text().splitlines():
            if line.startswith("cpu "):
                fields = line.split()
                return int(fields[8]) if len(fields) > 8 else None
    except (OSError, ValueError):
        return None
    return None


def cpu_mhz(cpus: Sequence[int] | None, sysfs: Path = CPUFREQ, cpuinfo: Path = CPUINFO) -> float | None:
    """Mean current clock (MHz) of `cpus` (all when None): cpufreq's scaling_cur_freq, else /proc/cpuinfo."""
    values = []
    for cpu in cpus if cpus is not None else range(os.cpu_count() or 0):
        try:
            values.append(int((sysfs / f"cpu{cpu}" / "cpufreq" / "scaling_cur_freq").read_text()) / 1000.0)
        except (OSError, ValueError):
            continue
    if values:
        return sum(values) / len(values)
    try:
        mhz = [float(line.split(":", 1)[1]) for line in cpuinfo.read_text().splitlines()
               if line.lower().startswith("cpu mhz")]
    except (OSError, ValueError, IndexError):
        return None
    if cpus is not None:
        mhz = [m for i, m in enumerate(mhz) if i in set(cpus)] or mhz
    return sum(mhz) / len(mhz) if mhz else None


def load_average() -> float | None:
    """The one-minute load average."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def snapshot() -> dict[str, Any]:
    """One reading of the host: clock of the process's CPUs, load average, stolen ticks."""
    cpus = affinity()
    return {"cpu_mhz": cpu_mhz(cpus), "load_1m": load_average(), "steal_ticks": steal_ticks()}


def summary(start: dict[str, Any], end: dict[str, Any], requested: Sequence[int] | None = None) -> dict[str, Any]:
    """The cell's host record from the readings before and after its measured reps."""
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stolen = None
    if start.get("steal_ticks") is not None and end.get("steal_ticks") is not None:
        stolen = (end["steal_ticks"] - start["steal_ticks"]) / ticks_per_s
    cpus = affinity()
    return {
        "cpu_affinity": cpus,
        "cpu_affinity_requested": list(requested) if requested else None,
        "cpus_allowed": len(cpus) if cpus is not None else None,
        "cpu_mhz_start": start.get("cpu_mhz"),
        "cpu_mhz_end": end.get("cpu_mhz"),
        "load_1m_start": start.get("load_1m"),
        "load_1m_end": end.get("load_1m"),
        "steal_s": stolen,
    }
