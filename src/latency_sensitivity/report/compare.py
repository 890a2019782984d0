"""Backends compared cell by cell, and this run beside other devices' runs of the same sweeps."""

from __future__ import annotations

import math
import pandas as pd
from dataclasses import dataclass, field
from typing import Sequence

from latency_sensitivity.vocabulary import BACKENDS
from latency_sensitivity.report.findings import _ratio_range
from latency_sensitivity.report.format import _isnan, _span, fmt_ms, markdown_table
from latency_sensitivity.report.series import FAILED, SweepInput, _text, cell_outcome


def backend_comparison(frame: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """Per (model, dtype) measured with several backends: (title, table, findings) comparing decode.

    Rows are the cells (seq_len, batch) that every backend measured; the first backend (eager when present)
    is the baseline. Columns: decode ms/step per backend, each other backend's speed-up over the baseline,
    and each backend's decode time as a multiple of the roofline floor (1 / decode_efficiency).
    """
    if "backend" not in frame.columns or frame.empty:
        return []
    ok = frame[~cell_outcome(frame).isin(FAILED)].copy()
    ok["backend"] = _text(ok, "backend")
    out = []
    group_keys = [k for k in ("model", "dtype") if k in ok.columns]
    groups = ok.groupby(group_keys, sort=True) if group_keys else [((), ok)]
    for key, sub in groups:
        # eager, graph, compiled (the order of backends.BACKENDS), then any other in order of appearance
        backends = sorted(dict.fromkeys(sub["backend"]),
                          key=lambda b: BACKENDS.index(b) if b in BACKENDS else len(BACKENDS))
        if len(backends) < 2:
            continue
        base = "eager" if "eager" in backends else backends[0]
        others = [b for b in backends if b != base]
        backends = [base] + others
        per = {b: sub[sub["backend"] == b].set_index(["seq_len", "batch"]) for b in backends}
        cells = sorted(set.intersection(*(set(per[b].index) for b in backends)))
        if not cells:
            continue
        headers = ["seq_len", "batch"] + [f"{b} decode ms/step" for b in backends]
        headers += [f"{b} speed-up" for b in others] + [f"{b} × floor" for b in backends]
        rows, speedups = [], {b: [] for b in others}
        for cell in cells:
            dec = {b: float(per[b].loc[cell, "decode_p50_ms_per_tok"]) for b in backends}
            row = [str(cell[0]), str(cell[1])] + [fmt_ms(dec[b]) for b in backends]
            for b in others:
                ratio = dec[base] / dec[b] if dec[b] > 0 else math.nan
                speedups[b].append((ratio, cell))
                row.append(f"{ratio:.2f}x" if not _isnan(ratio) else "–")
            for b in backends:
                eff = per[b].loc[cell].get("decode_efficiency", math.nan)
                row.append(f"{1 / float(eff):.1f}x" if not _isnan(eff) and float(eff) > 0 else "–")
            rows.append(row)
        title = " · ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        table = markdown_table(headers, rows, [True] * len(headers))
        findings = []
        for b in others:
            vals = [(r, c) for r, c in speedups[b] if not _isnan(r)]
            if not vals:
                continue
            lo, hi = min(vals), max(vals)
            where = (f"seq_len {lo[1][0]} × batch {lo[1][1]}" if len(vals) == 1 else
                     f"least at seq_len {lo[1][0]} × batch {lo[1][1]}, most at seq_len {hi[1][0]} × batch {hi[1][1]}")
            findings.append(f"{b} decodes {_span(lo[0], hi[0])}x faster than {base} per step ({where})")
        for b in backends:
            eff = pd.to_numeric(per[b].loc[cells, "decode_efficiency"], errors="coerce").dropna() \
                if "decode_efficiency" in per[b].columns else pd.Series(dtype=float)
            if not eff.empty and (eff > 0).all():
                findings.append(f"{b} decode takes {_span(1 / eff.max(), 1 / eff.min())}x its roofline floor")
        out.append((title, table, findings))
    return out


@dataclass
class OtherDevice:
    """Another run of the same sweeps (config key compare_devices): its label, sweeps and ceilings."""

    label: str
    sweeps: dict[str, pd.DataFrame]
    ceilings: dict = field(default_factory=dict)  # {(device, dtype): calibration}


def device_label(frame: pd.DataFrame, fallback: str) -> str:
    """The GPU (or CPU) a frame's cells ran on, from their device_name; fallback when absent or mixed."""
    names = _text(frame, "device_name").dropna().unique() if "device_name" in frame.columns else []
    names = [n for n in names if n and n != "nan"]
    return names[0] if len(names) == 1 else fallback


def device_comparison(this: pd.DataFrame, other: pd.DataFrame, this_label: str, other_label: str
                      ) -> list[tuple[str, str, list[str]]]:
    """(title, table, findings) per (model, dtype, backend) over the cells both runs measured (ok in both).

    Time ratios are the other run's p50 over this run's: below 1 the other device is faster. "× floor" is a
    cell's measured time over its own device's roofline floor (1 / efficiency).
    """
    keys = [k for k in ("model", "dtype", "backend") if k in this.columns and k in other.columns]
    ok_a = this[~cell_outcome(this).isin(FAILED)]
    ok_b = other[~cell_outcome(other).isin(FAILED)]
    out = []
    groups = ok_a.groupby(keys, sort=True) if keys else [((), ok_a)]
    for key, sub_a in groups:
        key = key if isinstance(key, tuple) else (key,)
        sub_b = ok_b
        for k, v in zip(keys, key):
            sub_b = sub_b[_text(sub_b, k) == str(v)]
        a = sub_a.drop_duplicates(["seq_len", "batch"]).set_index(["seq_len", "batch"])
        b = sub_b.drop_duplicates(["seq_len", "batch"]).set_index(["seq_len", "batch"])
        cells = sorted(set(a.index) & set(b.index))
        if not cells:
            continue
        headers = ["seq_len", "batch",
                   f"prefill ms: {this_label}", f"prefill ms: {other_label}", "prefill ratio",
                   f"decode ms/step: {this_label}", f"decode ms/step: {other_label}", "decode ratio",
                   f"decode × floor: {this_label}", f"decode × floor: {other_label}"]
        rows, ratios = [], {"prefill": [], "decode": []}
        floors = {this_label: [], other_label: []}
        for cell in cells:
            row = [str(cell[0]), str(cell[1])]
            for phase, column in (("prefill", "prefill_p50_ms"), ("decode", "decode_p50_ms_per_tok")):
                va, vb = float(a.loc[cell, column]), float(b.loc[cell, column])
                ratio = vb / va if va > 0 else math.nan
                if not _isnan(ratio):
                    ratios[phase].append((ratio, cell))
                row += [fmt_ms(va), fmt_ms(vb), f"{ratio:.2f}x" if not _isnan(ratio) else "–"]
            for label, frame in ((this_label, a), (other_label, b)):
                eff = float(pd.to_numeric(frame.loc[cell].get("decode_efficiency", math.nan), errors="coerce"))
                if eff > 0:  # False for NaN too
                    floors[label].append(1 / eff)
                row.append(f"{1 / eff:.1f}x" if eff > 0 else "–")
            rows.append(row)
        findings = []
        for phase in ("prefill", "decode"):
            if ratios[phase]:
                lo, hi = min(ratios[phase]), max(ratios[phase])
                findings.append(f"{phase}: {other_label} takes {_ratio_range(ratios[phase])} of {this_label}'s "
                                f"time (lowest at seq_len {lo[1][0]} × batch {lo[1][1]}, highest at seq_len "
                                f"{hi[1][0]} × batch {hi[1][1]})")
        if floors[this_label] and floors[other_label]:
            findings.append(f"decode as a multiple of each device's own roofline floor: {this_label} "
                            f"{_span(min(floors[this_label]), max(floors[this_label]))}x, {other_label} "
                            f"{_span(min(floors[other_label]), max(floors[other_label]))}x")
        title = " · ".join(str(k) for k in key)
        out.append((title, markdown_table(headers, rows, [True] * len(headers)), findings))
    return out


def _ceilings_text(ceilings: dict) -> str:
    return "; ".join(f"{cal['bandwidth_gb_s']:.0f} GB/s copy, {cal['matmul_tflops']:.3g} TFLOP/s matmul ({dev}, {dt})"
                     for (dev, dt), cal in sorted(ceilings.items())) or "not calibrated"


def devices_section(sweeps: Sequence["SweepInput"], others: Sequence[OtherDevice], ceilings: dict | None = None) -> str:
    """This run's sweeps beside other runs of the same sweeps (other devices), cell by cell."""
    parts = ["Each other run's cells beside this run's, matched by model, dtype, backend, seq_len and batch (cells "
             "that failed in either run are left out). Ratio = the other run's p50 / this run's: below 1 the "
             "other device is faster. × floor = measured time / that device's own roofline floor."]
    this_label = device_label(pd.concat([s.frame for s in sweeps], ignore_index=True), "this run") \
        if sweeps else "this run"
    parts += ["", f"- {this_label} (this run): {_ceilings_text(ceilings or {})}"]
    for od in others:
        parts += [f"- {od.label}: {_ceilings_text(od.ceilings)}"]
    for od in others:
        frames = [f for f in od.sweeps.values() if not f.empty]
        other_label = od.label
        if frames and device_label(pd.concat(frames, ignore_index=True), od.label) == this_label:
            other_label = f"{od.label} (same device name)"
        for sw in sweeps:
            frame = od.sweeps.get(sw.name)
            if frame is None or sw.frame.empty or frame.empty:
                parts += ["", f"### {od.label}: sweep `{sw.name}`", "", f"No cells of sweep `{sw.name}` in {od.label}."]
                continue
            comparisons = device_comparison(sw.frame, frame, this_label, other_label)
            if not comparisons:
                parts += ["", f"### {od.label}: sweep `{sw.name}`", "", "No cells measured by both runs."]
            for title, table, findings in comparisons:
                parts += ["", f"### {od.label}: sweep `{sw.name}` · {title}", "", table, "", "Findings:", ""]
                parts += [f"- {f}" for f in findings]
    return "\n".join(parts)
