"""The report's profile sections: kernel classes, GPU idle share and Nsight Compute figures per profiled cell."""

from __future__ import annotations

import math
import re
from typing import Sequence

from latency_sensitivity.report.format import _clean, _isnan, _pct, _shorten, format_number, markdown_table


PROFILE_TOOLS = {"nsys": "Nsight Systems", "ncu": "Nsight Compute", "torch": "torch.profiler"}


def profile_label(summary: dict) -> str:
    """'qwen2.5-3b fp16 eager seq 128 x batch 32' from a profile summary's cell."""
    c = summary.get("cell", {})
    return (f"{c.get('model', '?')} {c.get('dtype', '?')} {c.get('backend', '?')} "
            f"seq {c.get('seq_len', '?')} x batch {c.get('batch', '?')}")


def _short_cell(summary: dict, with_backend: bool = False) -> str:
    c = summary.get("cell", {})
    text = f"s{c.get('seq_len', '?')}×b{c.get('batch', '?')}"
    return f"{text} {c.get('backend', '?')}" if with_backend else text


def _several_backends(summaries: Sequence[dict]) -> bool:
    return len({s.get("cell", {}).get("backend") for s in summaries}) > 1


def profile_classes_table(summaries: Sequence[dict]) -> str | None:
    """Kernel classes (rows) by cell and phase (columns): share of the phase's kernel time, GPU idle share."""
    from latency_sensitivity.analysis.profiling import KERNEL_CLASSES

    columns = []  # (header, shares {class: share}, phase row)
    with_backend = _several_backends(summaries)
    for s in summaries:
        shares: dict[str, dict[str, float]] = {}
        for row in s.get("classes", []):
            shares.setdefault(row["phase"], {})[row["kernel_class"]] = row["share"]
        phases = {row["phase"]: row for row in s.get("phases", [])}
        for phase in ("prefill", "decode"):
            if phase in shares or phase in phases:
                columns.append((f"{_short_cell(s, with_backend)} {phase}", shares.get(phase, {}), phases.get(phase, {})))
    if not columns:
        return None
    basis = {s.get("basis") for s in summaries}
    idle_label = "GPU idle between kernels" if basis == {"gpu kernels"} else "idle (GPU: between kernels; CPU: outside ops)"
    rows = [[cls] + [_pct(col[1].get(cls, math.nan)) for col in columns] for cls in KERNEL_CLASSES]
    rows.append([f"*{idle_label}, share of span*"] + [_pct(col[2].get("idle_share", math.nan)) for col in columns])
    rows.append(["*kernel time per rep (ms)*"]
                + [format_number(col[2]["busy_ms"] / col[2]["ranges"]) if col[2].get("ranges") else "–"
                   for col in columns])
    rows.append(["*span per rep (ms)*"]
                + [format_number(col[2]["span_ms"] / col[2]["ranges"]) if col[2].get("ranges") else "–"
                   for col in columns])
    rows.append(["*launches per rep*"]
                + [format_number(col[2]["count"] / col[2]["ranges"]) if col[2].get("ranges") else "–"
                   for col in columns])
    return markdown_table(["class"] + [c[0] for c in columns], rows, [False] + [True] * len(columns))


def _short_kernel(name: str, limit: int = 60) -> str:
    name = re.sub(r"^void\s+", "", name)
    return name if len(name) <= limit else name[: limit - 1] + "…"


def ncu_table(summaries: Sequence[dict]) -> str | None:
    rows = []
    with_backend = _several_backends(summaries)
    for s in summaries:
        for k in s.get("kernels", []):
            rows.append([_short_cell(s, with_backend), k.get("phase") or "–", f"`{_short_kernel(k['kernel'])}`", k["kernel_class"],
                         str(k["launches"]), format_number(k["duration_us"]),
                         format_number(k["dram_throughput_pct"]), format_number(k["sm_throughput_pct"]),
                         format_number(k["achieved_occupancy_pct"])])
    if not rows:
        return None
    return markdown_table(["cell", "phase", "kernel", "class", "launches", "duration µs (p50)", "DRAM % of peak",
                           "SM % of peak", "achieved occupancy %"], rows,
                          [False, False, False, False, True, True, True, True, True])


def profile_findings(summaries: Sequence[dict]) -> list[str]:
    """Per profiled cell and phase: the class that takes most kernel time and how idle the GPU is."""
    out = []
    for s in summaries:
        if s.get("tool") == "ncu" or s.get("status") != "ok":
            continue
        phases = {row["phase"]: row for row in s.get("phases", [])}
        for phase in ("prefill", "decode"):
            rows = [r for r in s.get("classes", []) if r["phase"] == phase and not _isnan(r["share"])]
            if not rows:
                continue
            top = max(rows, key=lambda r: r["share"])
            text = (f"{PROFILE_TOOLS.get(s['tool'], s['tool'])}, {profile_label(s)}, {phase}: {top['kernel_class']} "
                    f"takes {_pct(top['share'])} of kernel time")
            idle = phases.get(phase, {}).get("idle_share")
            if idle is not None and not _isnan(idle):
                where = "the GPU idles" if s.get("basis") == "gpu kernels" else "the host spends"
                tail = "between kernels" if s.get("basis") == "gpu kernels" else "outside aten ops"
                text += f"; {where} {_pct(idle)} of the phase's span {tail}"
            out.append(text)
    return out


def profiles_section(summaries: Sequence[dict], heading_level: int = 3) -> str:
    """Profiled cells side by side: kernel classes per phase (per tool), Nsight Compute figures, findings."""
    h = "#" * heading_level
    parts = [
        "Profiled cells run the measure rule's runner command line under the profiler (fewer reps; the "
        "profiler slows the host, so the timings under it are not measurements). Kernels are attributed to "
        "the prefill or decode NVTX range of each measured rep that launched them and classified by name "
        "(latency_sensitivity.analysis.profiling.classify_kernel); shares are of the phase's total kernel time.",
    ]
    failed = [s for s in summaries if s.get("status") != "ok"]
    for tool in ("nsys", "torch"):
        group = [s for s in summaries if s.get("tool") == tool and s.get("status") == "ok"]
        table = profile_classes_table(group)
        if table:
            basis = " / ".join(sorted({s.get("basis", "") for s in group}))
            parts += ["", f"{h} Kernel classes by phase ({PROFILE_TOOLS[tool]}, {basis})", "", table]
    table = ncu_table([s for s in summaries if s.get("tool") == "ncu" and s.get("status") == "ok"])
    if table:
        parts += ["", f"{h} Nsight Compute (medians over the profiled launches; clocks not locked)", "", table]
    findings = profile_findings(summaries)
    if findings:
        parts += ["", f"{h} Findings", ""] + [f"- {f}" for f in findings]
    if failed:
        parts += ["", f"{h} Profiles of failed cells", ""]
        parts += [f"- {PROFILE_TOOLS.get(s.get('tool'), s.get('tool'))}, {profile_label(s)}: {s.get('status')}: "
                  f"{_shorten(_clean(s.get('error') or ''))}" for s in failed]
    if not summaries:
        parts += ["", "No profiles: profile.cells is empty."]
    return "\n".join(parts)
