"""Render the markdown report of one or more merged sweeps.

The report follows the reference study's layout: per sweep and per series (model, dtype, backend) a
"Prefill + memory" table and a "Decode + throughput" table (one compact table for a grid sweep), the
sweep's figures, and findings. Every finding is computed from the data (report/findings.py, worded by
report/format.py); none is written in advance. This module assembles the sections.

Conventions of the findings:

* a timing (or a throughput derived from one) *rises* / *falls* only when the change is larger than the
  noise of the cells involved (`latency_sensitivity.analysis.collapse.relative_noise`: the replicates' spread where a
  cell was measured more than once, else its within-run bootstrap interval); otherwise it stays flat
  *within noise (±x%)*. Launch-bound cells are labelled host-noise-dominated. Without any noise recorded
  (and for memory) the threshold is 5% (`FLAT_TOLERANCE`);
* a change below 2x is written in percent (``+58%``), a larger one as a factor (``26.5x``; ``3.0x lower``
  for a fall);
* a cell is *noisy* when the bootstrap 95% interval of its median is wider than 10% of the median
  (`NOISE_THRESHOLD`).
"""

from __future__ import annotations

import os
import pandas as pd
from pathlib import Path
from typing import Sequence

from latency_sensitivity.atomic import write_text
from latency_sensitivity.report.compare import OtherDevice, backend_comparison, devices_section, prefill_comparison
from latency_sensitivity.report.findings import cost_finding, memory_model_finding, roofline_finding, series_findings
from latency_sensitivity.report.format import _clean, _shorten, format_axis_value, markdown_table
from latency_sensitivity.report.model_loading import loading_section
from latency_sensitivity.report.profiles import profiles_section
from latency_sensitivity.report.series import SERIES_KEYS, SweepInput, _col, _text, cell_outcome, series_label, split_series
from latency_sensitivity.report.setup import environment_section, how_to_read_section, settings_section
from latency_sensitivity.report.tables import _Notes, anatomy_table, decode_table, grid_table, prefill_table, roofline_table
from latency_sensitivity.vocabulary import AXES


def failures_section(sweeps: Sequence[SweepInput]) -> str:
    rows = []
    total = len(unique_cells(pd.concat([sw.frame for sw in sweeps], ignore_index=True))) if sweeps else 0
    for sw in sweeps:
        frame = sw.frame.reset_index(drop=True)
        out = cell_outcome(frame)
        for idx, row in frame[out != "ok"].iterrows():
            o = out[idx]
            detail = _text(frame.loc[[idx]], "flag_detail").iloc[0] if o == "collapse" else \
                _text(frame.loc[[idx]], "error").iloc[0]
            rows.append([sw.name] + [_clean(row.get(k, "")) for k in SERIES_KEYS]
                        + [format_axis_value(row.get("seq_len")), format_axis_value(row.get("batch")),
                           o, _shorten(_clean(detail)) or "–"])
    if not rows:
        return f"None of the {total} cells was flagged or failed."
    return markdown_table(["sweep", "model", "dtype", "backend", "seq_len", "batch", "flag", "detail"], rows,
                          [False] * 4 + [True, True, False, False])


CELL_KEYS = ("model", "dtype", "backend", "device", "seq_len", "batch")


def unique_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per measured cell: a cell shared by several sweeps (config ``all_cells``) counts once."""
    keys = [k for k in CELL_KEYS if k in frame.columns]
    if not keys or frame.empty:
        return frame
    return frame.loc[~frame[keys].astype(str).duplicated()]


def _counts(frame: pd.DataFrame, dedupe: bool = False) -> str:
    """``9 cells: 9 ok``; with ``dedupe`` a cell in several sweeps counts once and the sharing is said."""
    rows = len(frame)
    if dedupe:
        frame = unique_cells(frame)
    out = cell_outcome(frame)
    parts = [f"{int((out == k).sum())} {k}" for k in ("ok", "collapse", "oom", "error") if (out == k).any()]
    n = len(frame)
    text = f"{n} cell{'s' if n != 1 else ''}" + (": " + ", ".join(parts) if parts else "")
    if rows > n:
        text += f" ({rows - n} shared by several sweeps, counted once)"
    return text


def _axis_description(sw: SweepInput) -> str:
    f = sw.frame
    if sw.axis == "grid":
        return "Both seq_len and batch vary."
    other = "batch" if sw.axis == "seq_len" else "seq_len"
    values = sorted(_col(f, other).dropna().unique())
    fixed = ", ".join(format_axis_value(v) for v in values) if values else "n/a"
    word = "fixed at" if len(values) <= 1 else "takes"
    return f"{sw.axis} varies; {other} {word} {fixed}."


def sweep_section(sw: SweepInput) -> str:
    if sw.axis not in AXES:
        raise ValueError(f"sweep {sw.name!r}: unknown axis {sw.axis!r}; expected one of {AXES}")
    parts = [f"## Sweep `{sw.name}` (axis: {sw.axis})", "", f"{_axis_description(sw)} {_counts(sw.frame)}."]
    if sw.frame.empty:
        parts += ["", "No cells."]
    for key, sub in split_series(sw.frame, sw.axis) if not sw.frame.empty else []:
        notes = _Notes()
        parts += ["", f"### {series_label(key)}", ""]
        if sw.axis == "grid":
            parts += ["Prefill, decode and memory:", "", grid_table(sub, notes)]
        else:
            parts += ["Prefill + memory:", "", prefill_table(sub, sw.axis, notes), "",
                      "Decode + throughput:", "", decode_table(sub, sw.axis, notes)]
        anatomy = anatomy_table(sub, sw.axis)
        if anatomy:
            parts += ["", "Request anatomy (p50 ms per stage, text in and text out; decode = end-to-end minus TTFT; "
                      "model loading is not part of a request):", "", anatomy[0]]
        roof = roofline_table(sub, sw.axis)
        if roof:
            parts += ["", "Roofline (floor: fewest bytes over the measured copy bandwidth, or FLOPs over the measured "
                      "matmul rate, whichever is larger; efficiency = floor / measured p50; the peak floor, where "
                      "shown, uses the device's theoretical bandwidth and tensor FLOP/s instead):", "", roof]
        if notes.items:
            parts += ["", "Notes:", "", notes.render()]
        findings = series_findings(sub, sw.axis)
        findings = findings + [f for f in (roofline_finding(sub), memory_model_finding(sub),
                                           anatomy[1] if anatomy else None, cost_finding(sub)) if f]
        parts += ["", "Findings:", ""]
        parts += [f"- {f}" for f in findings] if findings else ["- too few measured cells for findings"]
    prefills = {title: (table, findings) for title, table, findings in prefill_comparison(sw.frame)} \
        if not sw.frame.empty else {}
    for title, table, findings in backend_comparison(sw.frame) if not sw.frame.empty else []:
        parts += ["", f"### Backends compared: {title}", "",
                  "Decode per step of the cells every backend measured; speed-up = baseline time / backend time; "
                  "× floor = measured time / roofline floor.", "", table, "", "Findings:", ""]
        parts += [f"- {f}" for f in findings]
        if title in prefills:
            p_table, p_findings = prefills[title]
            kernels = ("; kernels: the change of the prefill's GPU kernel time (profiled once per replicate, their "
                       "median)") if "kernels vs" in p_table else ""
            parts += ["", "Prefill of the same cells, the same computation in every backend: each backend's p50 "
                      "against the baseline's, with the two cells' noise combined (replicate spread, else the "
                      f"within-run interval of the p50){kernels}. A cell is launch-bound when any backend's "
                      "prefill is.",
                      "", p_table, "", "Findings:", ""]
            parts += [f"- {f}" for f in p_findings]
    if sw.figures:
        parts += ["", "### Figures", ""]
        for caption, path in sw.figures:
            parts += [f"![{caption}]({path})", ""]
        parts.pop()
    return "\n".join(parts)


def build_report(sweeps: list[SweepInput], environments: list[dict], settings: dict,
                 title: str = "Latency sensitivity report", profiles: Sequence[dict] = (),
                 claims_text: str | None = None, claims_label: str | None = None,
                 loading: Sequence[dict] = (), other_devices: Sequence[OtherDevice] = (),
                 ceilings: dict | None = None) -> str:
    """The whole report as markdown: summary, Setup, How to read this, one section per sweep, failures."""
    total = pd.concat([s.frame for s in sweeps], ignore_index=True) if sweeps else pd.DataFrame()
    lines = [f"# {title}", ""]
    names = ", ".join(f"`{s.name}` ({s.axis})" for s in sweeps) or "none"
    lines += [f"Sweeps: {names}. {_counts(total, dedupe=True)}.", ""]
    lines += ["## Setup", "", "### Environment", "", environment_section(environments), "",
              "### Settings", "", settings_section(settings), ""]
    lines += ["## How to read this", "", how_to_read_section(settings), ""]
    for sw in sweeps:
        lines += [sweep_section(sw), ""]
    if other_devices:
        lines += ["## Devices compared", "", devices_section(sweeps, other_devices, ceilings), ""]
    if loading:
        lines += ["## Model loading", "", loading_section(loading, total), ""]
    lines += ["## Collapse and failures", "", failures_section(sweeps), ""]
    if claims_text:
        lines += [f"## The reference study's claims ({claims_label})", "", claims_text, ""]
    if profiles:
        lines += ["## Profiles", "", profiles_section(profiles, heading_level=3), ""]
    return "\n".join(lines)


def write_report(text: str, out_path: str | os.PathLike[str]) -> Path:
    """Write ``text`` to ``out_path`` atomically (a temp file in the same folder, then ``os.replace``)."""
    write_text(out_path, text)
    return Path(out_path)
