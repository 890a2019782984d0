"""Profiler outputs turned into per-phase summaries: kernel classes, GPU idle share, Nsight Compute figures.

Three sources, one summary shape. Each summary is a dict:

- ``tool`` (nsys | ncu | torch), ``basis`` (what was timed: ``gpu kernels`` or ``cpu ops``);
- ``classes``: rows of phase, kernel_class, time_ms, share (of the phase's kernel time), count;
- ``phases``: rows of phase, ranges (how many NVTX ranges were summed), span_ms (the phase's time on the
  GPU from its first to its last operation, summed over ranges; host time for cpu ops), busy_ms (kernel
  time), idle_share (1 - busy/span: the GPU waiting between kernels), count (kernel launches);
- ``kernels`` (ncu only): per kernel name and phase, the median duration, DRAM and SM throughput (% of
  peak) and achieved occupancy over the profiled launches.

Phases come from the runner's NVTX ranges (``rep<i>.prefill``, ``rep<i>.decode`` inside ``measured``, in
domain ``latency_sensitivity``; no slash in a name, as ncu's NVTX filter reads ``/`` as nesting), so every rep's prefill is summed into ``prefill`` and so on.

Nsight Systems: ``nvtx_kern_sum`` (kernels attributed to the NVTX range that launched them, by CUDA
correlation) and ``nvtx_gpu_proj_sum`` (each range projected onto the GPU timeline). Nsight Compute: the
``details`` page exported as CSV with base units. torch.profiler: its Chrome trace (kernels attributed to
phases through the launching runtime call; on a CPU-only trace, the self time of aten ops).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

KERNEL_CLASSES = ("GEMM", "attention", "normalisation", "elementwise/activation", "copy/memset", "other")
PHASES = ("prefill", "decode")

# First match wins: order matters (cuDNN's attention kernels say "wgmma"; a copy kernel is an
# "elementwise" template; RMSNorm in eager PyTorch is pow -> mean -> rsqrt -> mul).
_CLASS_RULES: tuple[tuple[str, re.Pattern], ...] = tuple(
    (cls, re.compile(pattern, re.IGNORECASE))
    for cls, pattern in (
        ("attention", r"sdpa|flash|fmha|attention|attn|softmax"),
        ("normalisation", r"rms_?norm|layer_?norm|group_?norm|batch_?norm|MeanOps|rsqrt|pow_tensor_scalar"
                          r"|^aten::(mean|rsqrt|pow|var|var_mean)$"),
        ("GEMM", r"gemm|gemv|nvjet|cublas|cutlass|xmma|wgmma|splitKreduce|^aten::(mm|addmm|bmm|baddbmm|matmul"
                 r"|linear|_addmm_activation)$"),
        ("copy/memset", r"memcpy|memset|copy|CatArray|gather_kernel|scatter|index_put|indexSelect"
                        r"|^aten::(copy_|cat|clone|contiguous|_to_copy|to|fill_|zero_|zeros|ones|full"
                        r"|index_select|index_put_|index|embedding|gather|scatter_?|masked_fill_?|where)$"),
        ("elementwise/activation", r"elementwise|silu|gelu|relu|act_and_mul|tanh|sigmoid|vectorized"
                                   r"|^aten::(mul|mul_|add|add_|sub|div|div_|neg|cos|sin|exp|silu|gelu|relu"
                                   r"|tanh|sigmoid|sum|clamp|abs|sqrt)$"),
    )
)


def classify_kernel(name: str) -> str:
    """The class of a GPU kernel name (or of an aten op name, for CPU traces)."""
    for cls, pattern in _CLASS_RULES:
        if pattern.search(name):
            return cls
    return "other"


def phase_of(range_name: str) -> str | None:
    """'latency_sensitivity:rep3/decode' -> 'decode'; ranges outside the measured reps -> None."""
    name = range_name.strip()
    if ":" in name:
        name = name.split(":", 1)[1]
    m = re.fullmatch(r"rep\d+[./](prefill|decode)", name)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------- helpers


def _number(text) -> float:
    """A number from a profiler CSV cell ('17,984', '1.5', '' -> nan)."""
    if text is None:
        return math.nan
    if isinstance(text, (int, float)):
        return float(text)
    t = str(text).strip().replace(",", "")
    if not t or t.lower() in ("n/a", "nan", "-"):
        return math.nan
    try:
        return float(t)
    except ValueError:
        return math.nan


def _rows(path: str | Path) -> list[dict]:
    """A profiler CSV's rows; lines before the header (tool banners such as '==PROF==') are skipped."""
    text = Path(path).read_text(errors="replace")
    lines = text.splitlines()
    start = 0
    for i, line in enumerate(lines):
        if line.startswith('"') or ("," in line and not line.startswith("==")):
            start = i
            break
    return list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))


def _column(row: dict, *candidates: str) -> str:
    for c in candidates:
        if c in row:
            return row[c]
    raise KeyError(f"none of the columns {candidates} in {sorted(row)}")


def _classes_table(per_phase: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Rows of phase, class, time_ms, share, count from {phase: {class: [time_ms, count]}}."""
    rows = []
    for phase in sorted(per_phase, key=_phase_order):
        total = sum(v[0] for v in per_phase[phase].values())
        for cls in KERNEL_CLASSES:
            time_ms, count = per_phase[phase].get(cls, [0.0, 0])
            rows.append({
                "phase": phase,
                "kernel_class": cls,
                "time_ms": time_ms,
                "share": time_ms / total if total > 0 else math.nan,
                "count": int(count),
            })
    return rows


def _phase_order(phase: str) -> tuple[int, str]:
    return (PHASES.index(phase) if phase in PHASES else len(PHASES), phase)


def _phase_row(phase: str, ranges: int, span_ms: float, busy_ms: float, count: int) -> dict:
    return {
        "phase": phase,
        "ranges": ranges,
        "span_ms": span_ms,
        "busy_ms": busy_ms,
        "idle_share": max(0.0, 1.0 - busy_ms / span_ms) if span_ms > 0 else math.nan,
        "count": count,
    }


def _union_ms(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length of a set of [start, end) intervals, overlaps counted once."""
    total = 0.0
    cur_start = cur_end = None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


# ------------------------------------------------------------------------------------ Nsight Systems

#: The `nsys stats` reports the workflow exports (each becomes <name>.csv).
NSYS_REPORTS = ("cuda_gpu_kern_sum", "cuda_api_sum", "nvtx_sum", "nvtx_kern_sum", "nvtx_gpu_proj_sum")


def nsys_summary(nvtx_kern_sum: str | Path, nvtx_gpu_proj_sum: str | Path) -> dict:
    """Per-phase kernel classes and GPU idle share from two `nsys stats` CSV exports."""
    per_phase: dict[str, dict[str, list[float]]] = defaultdict(dict)
    busy: dict[str, float] = defaultdict(float)
    launches: dict[str, int] = defaultdict(int)
    for row in _rows(nvtx_kern_sum):
        phase = phase_of(_column(row, "NVTX Range", "Range"))
        if phase is None:
            continue
        time_ms = _number(_column(row, "Total Time (ns)")) / 1e6
        count = int(_number(_column(row, "Kern Inst", "Instances")))
        cls = classify_kernel(_column(row, "Kernel Name", "Name"))
        slot = per_phase[phase].setdefault(cls, [0.0, 0])
        slot[0] += time_ms
        slot[1] += count
        busy[phase] += time_ms
        launches[phase] += count
    span: dict[str, float] = defaultdict(float)
    ranges: dict[str, int] = defaultdict(int)
    for row in _rows(nvtx_gpu_proj_sum):
        phase = phase_of(_column(row, "Range", "NVTX Range"))
        if phase is None:
            continue
        span[phase] += _number(_column(row, "Total Proj Time (ns)")) / 1e6
        ranges[phase] += int(_number(_column(row, "Range Instances", "Instances")))
    phases = [
        _phase_row(p, ranges.get(p, 0), span.get(p, math.nan), busy.get(p, 0.0), launches.get(p, 0))
        for p in sorted(set(span) | set(busy), key=_phase_order)
    ]
    if not phases:
        raise ValueError(f"no prefill/decode NVTX ranges in {nvtx_kern_sum}: was the capture range "
                         "'measured@latency_sensitivity' reached, and the nvtx package installed?")
    return {"tool": "nsys", "basis": "gpu kernels", "classes": _classes_table(per_phase), "phases": phases}


# ------------------------------------------------------------------------------------ Nsight Compute

_NCU_METRICS = {
    "Duration": "duration_us",
    "DRAM Throughput": "dram_throughput_pct",
    "Memory Throughput": "memory_throughput_pct",
    "Compute (SM) Throughput": "sm_throughput_pct",
    "Achieved Occupancy": "achieved_occupancy_pct",
}
_TIME_UNITS_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3,
                  "s": 1e6, "second": 1e6}


def ncu_launches(details_csv: str | Path | Sequence[str | Path]) -> list[dict]:
    """One row per profiled kernel launch from `ncu --import R --csv --page details --print-units base`.

    Several exports (one per phase) are read in order; their launches keep their file's order.
    """
    if isinstance(details_csv, (str, Path)):
        details_csv = [details_csv]
    out = []
    for path in details_csv:
        for launch in _ncu_launches_one(path):
            launch["id"] = len(out)
            out.append(launch)
    return out


def _ncu_launches_one(details_csv: str | Path) -> list[dict]:
    launches: dict[str, dict] = {}
    for row in _rows(details_csv):
        launch_id = row.get("ID")
        if launch_id in (None, ""):
            continue
        entry = launches.get(launch_id)
        if entry is None:
            stack = " ".join(v for k, v in row.items() if k and "Push/Pop" in k and v)
            m = re.search(r"rep\d+[./](prefill|decode)", stack)
            entry = launches[launch_id] = {
                "id": int(_number(launch_id)),
                "kernel": row.get("Kernel Name", ""),
                "kernel_class": classify_kernel(row.get("Kernel Name", "")),
                "phase": m.group(1) if m else None,
                "grid": row.get("Grid Size", ""),
                "block": row.get("Block Size", ""),
                **{v: math.nan for v in _NCU_METRICS.values()},
            }
        key = _NCU_METRICS.get(row.get("Metric Name", ""))
        if key is None:
            continue
        value = _number(row.get("Metric Value"))
        if key == "duration_us":
            unit = (row.get("Metric Unit") or "ns").strip()
            if unit not in _TIME_UNITS_US:
                raise ValueError(f"{details_csv}: unknown duration unit {unit!r}")
            value *= _TIME_UNITS_US[unit]
        entry[key] = value
    return sorted(launches.values(), key=lambda r: r["id"])


def ncu_summary(details_csv: str | Path | Sequence[str | Path]) -> dict:
    """Median Nsight Compute figures per (phase, kernel) over the profiled launches."""
    launches = ncu_launches(details_csv)
    if not launches:
        raise ValueError(f"no kernel launches in {details_csv}: did the kernel regex match any kernel "
                         "inside the measured NVTX range?")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for launch in launches:
        groups[(launch["phase"] or "", launch["kernel"])].append(launch)
    kernels = []
    for (phase, kernel), rows in groups.items():
        out = {"phase": phase or None, "kernel": kernel, "kernel_class": rows[0]["kernel_class"],
               "launches": len(rows)}
        for key in _NCU_METRICS.values():
            values = [r[key] for r in rows if not math.isnan(r[key])]
            out[key] = statistics.median(values) if values else math.nan
        kernels.append(out)
    kernels.sort(key=lambda k: (_phase_order(k["phase"] or "~"), -k["duration_us"]))
    return {"tool": "ncu", "basis": "gpu kernels", "kernels": kernels, "launches": launches}


# ------------------------------------------------------------------------------------- torch.profiler


def load_chrome_trace(path: str | Path) -> dict:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        return json.load(fh)


_GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
_LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}


def torch_summary(trace: dict | str | Path) -> dict:
    """Per-phase classes from a torch.profiler Chrome trace.

    With GPU activity: kernels, memcpys and memsets are attributed to the phase whose record_function
    range encloses the runtime call that launched them (matched by correlation id); the span is from
    the phase's first to its last GPU operation. Without (a CPU run): the self time of every aten op
    inside the phase's range, and the span is the range's host time, so idle_share is the share of
    host time outside aten ops (Python and framework overhead).
    """
    if not isinstance(trace, dict):
        trace = load_chrome_trace(trace)
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    annotations = []  # (start, end, phase, rep)
    for e in events:
        if e.get("cat") == "user_annotation":
            phase = phase_of(e.get("name", ""))
            if phase is not None:
                annotations.append((float(e["ts"]), float(e["ts"]) + float(e["dur"]), phase, e["name"], e.get("tid")))
    if not annotations:
        raise ValueError("no rep<i>/prefill or rep<i>/decode record_function ranges in the trace")
    annotations.sort()

    def phase_at(ts: float, tid=None) -> tuple[str, str] | None:
        for start, end, phase, name, a_tid in annotations:
            if start <= ts <= end and (tid is None or a_tid == tid):
                return phase, name
        return None

    gpu = [e for e in events if e.get("cat") in _GPU_CATS]
    per_phase: dict[str, dict[str, list[float]]] = defaultdict(dict)
    if gpu:
        launch_phase: dict = {}
        for e in events:
            if e.get("cat") in _LAUNCH_CATS:
                corr = (e.get("args") or {}).get("correlation")
                hit = phase_at(float(e["ts"]))
                if corr is not None and hit is not None:
                    launch_phase[corr] = hit
        intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        by_range: dict[str, list[tuple[float, float]]] = defaultdict(list)
        counts: dict[str, int] = defaultdict(int)
        for e in gpu:
            hit = launch_phase.get((e.get("args") or {}).get("correlation"))
            if hit is None:
                continue
            phase, range_name = hit
            start, dur = float(e["ts"]), float(e["dur"])
            name = e.get("name", "")
            if e.get("cat") == "gpu_memcpy" and "memcpy" not in name.lower():
                name = f"Memcpy {name}"
            if e.get("cat") == "gpu_memset" and "memset" not in name.lower():
                name = f"Memset {name}"
            slot = per_phase[phase].setdefault(classify_kernel(name), [0.0, 0])
            slot[0] += dur / 1000.0
            slot[1] += 1
            intervals[phase].append((start, start + dur))
            by_range[range_name].append((start, start + dur))
            counts[phase] += 1
        span: dict[str, float] = defaultdict(float)
        ranges: dict[str, int] = defaultdict(int)
        for range_name, ivs in by_range.items():
            phase = phase_of(range_name)
            span[phase] += (max(b for _, b in ivs) - min(a for a, _ in ivs)) / 1000.0
            ranges[phase] += 1
        phases = [_phase_row(p, ranges[p], span[p], _union_ms(intervals[p]) / 1000.0, counts[p])
                  for p in sorted(span, key=_phase_order)]
        basis = "gpu kernels"
    else:
        ops = [e for e in events if e.get("cat") == "cpu_op"]
        busy: dict[str, float] = defaultdict(float)
        counts = defaultdict(int)
        for tid in {e.get("tid") for e in ops}:
            thread_ops = sorted((e for e in ops if e.get("tid") == tid), key=lambda e: (float(e["ts"]), -float(e["dur"])))
            child_time: dict[int, float] = defaultdict(float)
            stack: list[tuple[float, int]] = []  # (end, index)
            for i, e in enumerate(thread_ops):
                start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
                while stack and stack[-1][0] < start:
                    stack.pop()
                if stack:
                    child_time[stack[-1][1]] += float(e["dur"])
                stack.append((end, i))
            for i, e in enumerate(thread_ops):
                hit = phase_at(float(e["ts"]), tid)
                if hit is None:
                    continue
                phase = hit[0]
                self_ms = max(0.0, float(e["dur"]) - child_time[i]) / 1000.0
                slot = per_phase[phase].setdefault(classify_kernel(e.get("name", "")), [0.0, 0])
                slot[0] += self_ms
                slot[1] += 1
                busy[phase] += self_ms
                counts[phase] += 1
        span = defaultdict(float)
        ranges = defaultdict(int)
        for start, end, phase, _, _ in annotations:
            span[phase] += (end - start) / 1000.0
            ranges[phase] += 1
        phases = [_phase_row(p, ranges[p], span[p], busy[p], counts[p]) for p in sorted(span, key=_phase_order)]
        basis = "cpu ops"
    return {"tool": "torch", "basis": basis, "classes": _classes_table(per_phase), "phases": phases}


# ------------------------------------------------------------------------------------------ tables


def class_shares(summary: dict) -> dict[str, dict[str, float]]:
    """{phase: {class: share}} of a summary with classes."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for row in summary.get("classes", []):
        out[row["phase"]][row["kernel_class"]] = row["share"]
    return dict(out)


def tidy_rows(summaries: list[tuple[str, dict]], table: str) -> list[dict]:
    """One table over many cells: [(cell label, summary)] -> rows with tool and cell prepended."""
    rows = []
    for cell, summary in summaries:
        for row in summary.get(table, []):
            rows.append({"cell": cell, "tool": summary["tool"], "basis": summary.get("basis", ""), **row})
    return rows
