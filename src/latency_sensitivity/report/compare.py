"""Backends compared cell by cell, and this run beside other devices' runs of the same sweeps."""

from __future__ import annotations

import math
import pandas as pd
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

from latency_sensitivity.analysis import collapse as _collapse
from latency_sensitivity.vocabulary import BACKENDS
from latency_sensitivity.report.findings import _ratio_range
from latency_sensitivity.report.format import _isnan, _span, fmt_ms, format_noise, markdown_table
from latency_sensitivity.report.series import FAILED, SweepInput, _text, cell_outcome


@dataclass
class _BackendGroup:
    """One (model, dtype) measured with several backends: the baseline first, each backend's measured cells
    indexed by (seq_len, batch), and the cells every backend measured."""

    title: str
    base: str
    others: list[str]
    per: dict[str, pd.DataFrame]
    cells: list[tuple]

    @property
    def backends(self) -> list[str]:
        return [self.base] + self.others


def _backend_groups(frame: pd.DataFrame) -> list[_BackendGroup]:
    """The (model, dtype) groups of ``frame`` that several backends measured, with the cells they share (ok
    ones only). The baseline is eager when present, else the first backend in `BACKENDS` order."""
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
        per = {b: sub[sub["backend"] == b].set_index(["seq_len", "batch"]) for b in [base] + others}
        cells = sorted(set.intersection(*(set(per[b].index) for b in per)))
        if not cells:
            continue
        title = " · ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)))
        out.append(_BackendGroup(title, base, others, per, cells))
    return out


# The order prefill findings take the cells' regimes in; a cell is launch-bound when any backend's prefill is.
_REGIME_ORDER = ("compute-bound", "memory-bound", "launch-bound", "regime unknown")


def _cells_regime(rows: Sequence[pd.Series]) -> str:
    """The prefill regime of one cell measured by several backends: launch-bound when any backend's is, else the
    first known one (the baseline's)."""
    regimes = [str(r.get("prefill_regime")) if not _isnan(r.get("prefill_regime")) else "" for r in rows]
    if any("launch-bound" in r for r in regimes):
        return "launch-bound"
    known = [r for r in regimes if r in _REGIME_ORDER]
    return known[0] if known else "regime unknown"


def _noise_text(noise: "_collapse.Noise") -> str:
    """``±1.2%``: one decimal below 10%, so a change of a few percent and its noise can be told apart."""
    return format_noise(noise, one_decimal_below=10)


def _percent(a: float, b: float) -> float:
    """The change from a to b in percent of a (NaN where either is missing or a is not positive)."""
    return 100 * (b - a) / a if not _isnan(a) and not _isnan(b) and a > 0 else math.nan


def _signed(pct: float) -> str:
    return "–" if _isnan(pct) else f"{pct:+.1f}%"


def _signed_span(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return _signed(lo) if f"{lo:+.1f}" == f"{hi:+.1f}" else f"{_signed(lo)} to {_signed(hi)}"


def _cell_name(cell: tuple) -> str:
    return f"seq_len {cell[0]} × batch {cell[1]}"


class _PrefillChange(NamedTuple):
    """One backend's prefill in one cell against the baseline's: percent changes of the p50 and the kernel time."""

    regime: str
    cell: tuple
    change: float
    noise: "_collapse.Noise"
    beyond: bool
    kernel_change: float


def _prefill_finding(backend: str, base: str, regime: str, changes: list[_PrefillChange]) -> str:
    """``backend``'s prefill against ``base``'s over the cells of one regime: the range of the changes and of the
    kernels', each change beyond the noise named, and whether the kernels explain it."""
    text = (f"{backend} prefill against {base}'s in the {len(changes)} {regime} cell"
            f"{'s' if len(changes) > 1 else ''}: {_signed_span([c.change for c in changes])}")
    kernels = [c.kernel_change for c in changes if not _isnan(c.kernel_change)]
    if kernels:
        text += f"; its GPU kernels {_signed_span(kernels)}"
    beyond = [c for c in changes if c.beyond]
    unknown = [c for c in changes if not c.noise.known]
    if beyond:
        parts = []
        for c in beyond:
            kernel = f", kernels {_signed(c.kernel_change)}" if not _isnan(c.kernel_change) else ""
            parts.append(f"{_cell_name(c.cell)} {_signed(c.change)} (noise {_noise_text(c.noise)}{kernel})")
        sources = " / ".join(sorted({c.noise.source for c in beyond}))
        text += f"; beyond the noise ({sources}) at {', '.join(parts)}"
        if all(not _isnan(c.kernel_change) and abs(c.kernel_change) < abs(c.change) / 2 for c in beyond):
            text += ": the kernels moved by less than half as much, so the difference lies outside the GPU's work"
    elif len(unknown) < len(changes):
        text += ", within the noise" + (" of the cells that record it" if unknown else "")
    else:
        text += " (no noise recorded)"
    if regime == "launch-bound":
        text += f" [{_collapse.HOST_NOISE}]"
    return text


def _speedup_finding(backend: str, base: str, vals: list[tuple]) -> str:
    """How much faster (or slower) ``backend`` decodes than ``base`` over the cells, from (speed-up, cell, beyond
    the noise, noise) per cell; the cells where the difference is within the two cells' noise are named."""
    beyond = [v for v in vals if v[2]]
    within = [v for v in vals if not v[2]]
    if not beyond:
        speeds = _span(min(v[0] for v in vals), max(v[0] for v in vals), ".2f")
        widest = _collapse.Noise(max(v[3].fraction for v in within), "")
        return (f"{backend} decodes within noise of {base} per step in every cell ({speeds}x {base}'s speed; "
                f"noise up to {_noise_text(widest)})")
    lo, hi = min(beyond), max(beyond)
    if lo[0] >= 1:
        what = f"{_span(lo[0], hi[0])}x faster than {base}"
    elif hi[0] < 1:
        what, lo, hi = f"{_span(1 / hi[0], 1 / lo[0])}x slower than {base}", hi, lo
    else:
        what = f"at {_span(lo[0], hi[0], '.2f')}x {base}'s speed"
    where = (_cell_name(lo[1]) if len(beyond) == 1 else
             f"least at {_cell_name(lo[1])}, most at {_cell_name(hi[1])}")
    text = f"{backend} decodes {what} per step ({where})"
    if within:
        text += "; within noise at " + ", ".join(_cell_name(v[1]) for v in sorted(within, key=lambda v: v[1]))
    return text


def backend_comparison(frame: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """Per (model, dtype) measured with several backends: (title, table, findings) comparing decode.

    Rows are the cells (seq_len, batch) that every backend measured; the first backend (eager when present)
    is the baseline. Columns: decode ms/step per backend, each other backend's speed-up over the baseline,
    and each backend's decode time as a multiple of the roofline floor (1 / decode_efficiency).
    """
    out = []
    for group in _backend_groups(frame):
        base, others, backends, per, cells = group.base, group.others, group.backends, group.per, group.cells
        headers = ["seq_len", "batch"] + [f"{b} decode ms/step" for b in backends]
        headers += [f"{b} speed-up" for b in others] + [f"{b} × floor" for b in backends]
        rows, speedups = [], {b: [] for b in others}
        for cell in cells:
            dec = {b: float(per[b].loc[cell, "decode_p50_ms_per_tok"]) for b in backends}
            row = [str(cell[0]), str(cell[1])] + [fmt_ms(dec[b]) for b in backends]
            for b in others:
                ratio = dec[base] / dec[b] if dec[b] > 0 else math.nan
                noise = _collapse.combined_noise([per[base].loc[cell], per[b].loc[cell]], "decode_p50_ms_per_tok")
                speedups[b].append((ratio, cell, _collapse.beyond_noise(dec[base], dec[b], noise), noise))
                row.append(f"{ratio:.2f}x" if not _isnan(ratio) else "–")
            for b in backends:
                eff = per[b].loc[cell].get("decode_efficiency", math.nan)
                row.append(f"{1 / float(eff):.1f}x" if not _isnan(eff) and float(eff) > 0 else "–")
            rows.append(row)
        table = markdown_table(headers, rows, [True] * len(headers))
        findings = []
        for b in others:
            vals = [v for v in speedups[b] if not _isnan(v[0])]
            if not vals:
                continue
            findings.append(_speedup_finding(b, base, vals))
        for b in backends:
            eff = pd.to_numeric(per[b].loc[cells, "decode_efficiency"], errors="coerce").dropna() \
                if "decode_efficiency" in per[b].columns else pd.Series(dtype=float)
            if not eff.empty and (eff > 0).all():
                findings.append(f"{b} decode takes {_span(1 / eff.max(), 1 / eff.min())}x its roofline floor")
        out.append((group.title, table, findings))
    return out


def prefill_comparison(frame: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """Per (model, dtype) measured with several backends: (title, table, findings) comparing the prefill.

    Every backend runs the same prefill computation, so its prefill should match the baseline's (eager when
    present). Per cell every backend measured: each backend's prefill p50, the cell's regime (from the GPU's
    busy share and the roofline; launch-bound when any backend's prefill is), each other backend's change
    against the baseline with the two cells' noise combined (`analysis.collapse.combined_noise`: replicate
    spread, else the within-run interval), and, where both cells profiled their kernels, the change of the
    prefill's GPU kernel time. The findings give the changes by regime and name each change beyond the noise;
    where the kernels moved by less than half as much, the difference lies outside the GPU's work.
    """
    out = []
    for group in _backend_groups(frame):
        base, others, per, cells = group.base, group.others, group.per, group.cells
        if not all("prefill_p50_ms" in per[b].columns for b in group.backends):
            continue
        kernels = all("prefill_kernel_ms" in per[b].columns for b in group.backends)
        headers = ["seq_len", "batch", "regime"] + [f"{b} prefill ms" for b in group.backends]
        headers += [f"{b} vs {base} (noise)" for b in others]
        if kernels:
            headers += [f"{b} kernels vs {base}" for b in others]
        rows, changes = [], {b: [] for b in others}
        for cell in cells:
            row_of = {b: per[b].loc[cell] for b in group.backends}
            regime = _cells_regime([row_of[b] for b in group.backends])
            row = [str(cell[0]), str(cell[1]), regime] + [fmt_ms(row_of[b].get("prefill_p50_ms"))
                                                         for b in group.backends]
            kernel_cells = []
            for b in others:
                a, v = float(row_of[base]["prefill_p50_ms"]), float(row_of[b]["prefill_p50_ms"])
                change = _percent(a, v)
                noise = _collapse.combined_noise([row_of[base], row_of[b]], "prefill_p50_ms")
                beyond = not _isnan(change) and noise.known and _collapse.beyond_noise(a, v, noise)
                k_change = (_percent(float(row_of[base]["prefill_kernel_ms"]), float(row_of[b]["prefill_kernel_ms"]))
                            if kernels and not _isnan(row_of[base]["prefill_kernel_ms"])
                            and not _isnan(row_of[b]["prefill_kernel_ms"]) else math.nan)
                if not _isnan(change):
                    changes[b].append(_PrefillChange(regime, cell, change, noise, beyond, k_change))
                row.append(f"{_signed(change)} ({_noise_text(noise)})" if noise.known else _signed(change))
                kernel_cells.append(_signed(k_change))
            rows.append(row + (kernel_cells if kernels else []))
        table = markdown_table(headers, rows, [True, True, False] + [True] * (len(headers) - 3))
        findings = [_prefill_finding(b, base, regime, [c for c in changes[b] if c.regime == regime])
                    for b in others for regime in _REGIME_ORDER if any(c.regime == regime for c in changes[b])]
        out.append((group.title, table, findings))
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
