"""Findings of a sweep, computed from its table: trends beyond the noise, scaling, saturation, collapse, failures, floors, cost."""

from __future__ import annotations

import numpy as np
import pandas as pd
from typing import Sequence

from latency_sensitivity.analysis import collapse as _collapse
from latency_sensitivity.report.format import FLAT_TOLERANCE, LABELS, _fmt_mib_value, _isnan, _span, _trend_phrase, direction, format_axis_value, format_noise, format_number, format_relative
from latency_sensitivity.report.series import FAILED, _cell_where, _col, _memory_label, _text, cell_outcome, memory_mib, series_label, split_series
from latency_sensitivity.vocabulary import AXES


NOISE_THRESHOLD = 0.10


def _noise_of(rows: Sequence[pd.Series], metric: str) -> "_collapse.Noise | None":
    """The noise a change between these cells must exceed; None when no cell records any."""
    noise = _collapse.combined_noise(list(rows), metric)
    return noise if noise.known or noise.launch_bound else None


def _host_label(noise: "_collapse.Noise | None") -> str:
    return f" [launch-bound cells: {_collapse.HOST_NOISE}]" if noise is not None and noise.launch_bound else ""


def trend_finding(frame: pd.DataFrame, axis: str, metric: str, label: str | None = None,
                  unit: str = "") -> str | None:
    """How ``metric`` changes from the first to the last measured cell along ``axis``.

    ``"prefill ms/token rises 0.272 → 0.429 (+58%) from seq_len 128 to 4096; range 0.190–0.429, lowest at
    seq_len 256"``. The range clause appears when an interior cell lies more than 5% below (or above) both
    ends. None with fewer than two measured cells.
    """
    label = label or LABELS.get(metric, metric)
    frame = frame.reset_index(drop=True)
    if metric == "memory":
        values, _ = memory_mib(frame)
    else:
        values = _col(frame, metric)
    measured = ~cell_outcome(frame).isin(FAILED)
    pts = [(x, v, i) for i, (x, v, ok) in enumerate(zip(_col(frame, axis), values, measured))
           if ok and not _isnan(v) and not _isnan(x)]
    if len(pts) < 2:
        return None
    (x0, a, i0), (x1, b, i1) = pts[0], pts[-1]

    def noise(*idx: int) -> "_collapse.Noise | None":
        return None if metric == "memory" else _noise_of([frame.loc[i] for i in idx], metric)

    end_noise = noise(i0, i1)
    text = (f"{_trend_phrase(label, a, b, unit=unit, noise=end_noise)} from {axis} {format_axis_value(x0)} "
            f"to {format_axis_value(x1)}")
    vals = [v for _, v, _ in pts]
    lo, hi = min(vals), max(vals)
    extras = []

    def beyond(value: float, value_at: int, end: float, end_at: int) -> bool:
        n = noise(value_at, end_at)
        if n is not None and n.known:
            return _collapse.beyond_noise(end, value, n)
        return abs(value - end) > abs(end) * FLAT_TOLERANCE

    lo_at, hi_at = pts[vals.index(lo)][2], pts[vals.index(hi)][2]
    lo_end = (a, i0) if a <= b else (b, i1)
    hi_end = (a, i0) if a >= b else (b, i1)
    if lo < lo_end[0] and beyond(lo, lo_at, *lo_end):
        extras.append(f"lowest at {axis} {format_axis_value(pts[vals.index(lo)][0])}")
    if hi > hi_end[0] and beyond(hi, hi_at, *hi_end):
        extras.append(f"highest at {axis} {format_axis_value(pts[vals.index(hi)][0])}")
    if extras:
        text += f"; range {format_number(lo)}–{format_number(hi)}, " + ", ".join(extras)
    return text + _host_label(end_noise)


def _measured_points(frame: pd.DataFrame, axis: str, metric: str) -> list[tuple[float, float]]:
    values = _col(frame, metric)
    measured = ~cell_outcome(frame).isin(FAILED)
    return [(x, v) for x, v, ok in zip(_col(frame, axis), values, measured) if ok and not _isnan(v) and not _isnan(x)]


def prefill_time_finding(frame: pd.DataFrame, axis: str) -> str | None:
    """Prefill p50 growth against the growth of prompt tokens in the batch (batch × seq_len)."""
    frame = frame.reset_index(drop=True)
    measured = ~cell_outcome(frame).isin(FAILED)
    pf = _col(frame, "prefill_p50_ms")
    tokens = _col(frame, "batch") * _col(frame, "seq_len")
    pts = [(x, v, t, i) for i, (x, v, t, ok) in enumerate(zip(_col(frame, axis), pf, tokens, measured))
           if ok and not _isnan(v) and not _isnan(x)]
    if len(pts) < 2:
        return None
    (x0, a, t0, i0), (x1, b, t1, i1) = pts[0], pts[-1]
    noise = _noise_of([frame.loc[i0], frame.loc[i1]], "prefill_p50_ms")
    text = (f"{_trend_phrase('prefill p50', a, b, unit='ms', noise=noise)} from {axis} {format_axis_value(x0)} "
            f"to {format_axis_value(x1)}")
    if not _isnan(t0) and not _isnan(t1) and t0 > 0 and t1 != t0:
        word = direction(t0, t1, ("grow", "shrink", "stay flat"))
        text += f", while prompt tokens per batch {word} {format_relative(t0, t1)}"
    return text + _host_label(noise)


def decode_scaling_finding(frame: pd.DataFrame, axis: str = "batch") -> str | None:
    """Decode throughput against decode step time along ``axis``.

    ``"decode tok/s scales 37.6 → 996.6 (26.5x) from batch 1 to 64 while decode ms/step rises 26.6 → 64.2 (2.4x)"``.
    """
    frame = frame.reset_index(drop=True)
    measured = ~cell_outcome(frame).isin(FAILED)
    tps = _col(frame, "decode_tok_s")
    ms = _col(frame, "decode_p50_ms_per_tok")
    pts = [(x, t, m, i) for i, (x, t, m, ok) in enumerate(zip(_col(frame, axis), tps, ms, measured))
           if ok and not _isnan(t) and not _isnan(x)]
    if len(pts) < 2:
        return None
    (x0, t0, m0, i0), (x1, t1, m1, i1) = pts[0], pts[-1]
    noise = _noise_of([frame.loc[i0], frame.loc[i1]], "decode_tok_s")
    text = (f"{_trend_phrase('decode tok/s', t0, t1, words=('scales', 'falls', 'stays flat'), noise=noise)} "
            f"from {axis} {format_axis_value(x0)} to {format_axis_value(x1)}")
    if not _isnan(m0) and not _isnan(m1):
        text += f" while {_trend_phrase('decode ms/step', m0, m1, noise=noise)}"
    return text + _host_label(noise)


def saturation_finding(frame: pd.DataFrame, metric: str = "decode_tok_s", axis: str = "batch") -> str | None:
    """Where a throughput stops growing by more than the noise per doubling of the batch
    (`latency_sensitivity.analysis.collapse.saturation`)."""
    sat = _collapse.saturation(frame, metric, axis)
    if sat is None:
        return None
    label = LABELS.get(metric, metric)
    if sat.at is None:
        return (f"{label} does not saturate up to {axis} {format_axis_value(sat.last)}: the last step along the "
                f"{axis} still raises it by more than the noise")
    if sat.noise is not None and sat.noise.known:
        within = f"within noise ({format_noise(sat.noise)})"
    else:
        within = "no noise recorded"
    return (f"{label} saturates at {axis} {format_axis_value(sat.at)}: {100 * sat.growth_per_doubling:+.0f}% per "
            f"doubling to {axis} {format_axis_value(sat.next_at)}, {within}" + _host_label(sat.noise))


def peak_finding(frame: pd.DataFrame, axis: str, metric: str = "total_tok_s") -> str | None:
    """Where ``metric`` is highest along the axis: ``"total tok/s peaks at 1436 at seq_len 3072 (...)"``."""
    label = LABELS.get(metric, metric)
    pts = _measured_points(frame, axis, metric)
    if len(pts) < 2:
        return None
    vals = [v for _, v in pts]
    i = int(np.argmax(vals))
    x, v = pts[i]
    last_x, last_v = pts[-1]
    if i == len(pts) - 1:
        prev_x, prev_v = pts[-2]
        return (f"{label} is highest at the last measured cell: {format_number(v)} at {axis} "
                f"{format_axis_value(x)} ({format_relative(prev_v, v)} over {axis} {format_axis_value(prev_x)})")
    text = f"{label} peaks at {format_number(v)} at {axis} {format_axis_value(x)}"
    if i == 0:
        text += " (the first measured cell)"
    text += (f"; at {axis} {format_axis_value(last_x)} it is {format_number(last_v)} "
             f"({format_relative(v, last_v)})")
    return text


def memory_finding(frame: pd.DataFrame, axis: str) -> str | None:
    """``"memory (VRAM reserved) grows 5974 → 10716 MiB (+79%) from batch 1 to 64; largest step +2374 MiB ..."``."""
    values, source = memory_mib(frame)
    measured = ~cell_outcome(frame).isin(FAILED)
    pts = [(x, v, s) for x, v, s, ok in zip(_col(frame, axis), values, source, measured)
           if ok and not _isnan(v) and not _isnan(x)]
    if len(pts) < 2:
        return None
    label = f"memory ({_memory_label(s for _, _, s in pts)})"
    (x0, a, _), (x1, b, _) = pts[0], pts[-1]
    text = (f"{_trend_phrase(label, a, b, words=('grows', 'shrinks', 'stays flat'), unit='MiB')} "
            f"from {axis} {format_axis_value(x0)} to {format_axis_value(x1)}")
    if len(pts) >= 3:
        steps = [(pts[i + 1][1] - pts[i][1], pts[i][0], pts[i + 1][0]) for i in range(len(pts) - 1)]
        d, xa, xb = max(steps, key=lambda s: s[0])
        if d > 0:
            text += (f"; largest step +{d:.0f} MiB, from {axis} {format_axis_value(xa)} "
                     f"to {format_axis_value(xb)}")
    return text


def collapse_finding(frame: pd.DataFrame, axis: str) -> str | None:
    """The first collapse cell along the axis with its detail, and how many there are."""
    out = cell_outcome(frame)
    rows = frame[out == "collapse"]
    if rows.empty:
        return None
    detail = _text(rows, "flag_detail")
    where = _cell_where(rows.iloc[0], axis)
    first = detail.iloc[0].strip() or "no flag_detail recorded"
    text = f"first collapse at {where}: {first}"
    if len(rows) > 1:
        others = ", ".join(_cell_where(r, axis, with_name=False) for _, r in rows.iloc[1:].iterrows())
        text += f" (also flagged: {others})"
    return text


def oom_finding(frame: pd.DataFrame, axis: str) -> str | None:
    """Largest cell that fit and the first OOM: ``"largest batch that fit: 64; out of memory from batch 128 on"``.

    For a 1-D sweep only; None when no cell ran out of memory.
    """
    out = cell_outcome(frame).tolist()
    xs = _col(frame, axis).tolist()
    oom_idx = [i for i, o in enumerate(out) if o == "oom"]
    if not oom_idx:
        return None
    first = oom_idx[0]
    fit_any = [xs[i] for i, o in enumerate(out) if o not in FAILED]
    parts = []
    if fit_any:
        parts.append(f"largest {axis} that fit: {format_axis_value(max(fit_any))}")
    else:
        parts.append(f"no {axis} fit")
    if all(out[i] == "oom" for i in range(first, len(out))):
        parts.append(f"out of memory from {axis} {format_axis_value(xs[first])} on")
    else:
        parts.append("out of memory at " + axis + " " + ", ".join(format_axis_value(xs[i]) for i in oom_idx))
    return "; ".join(parts)


def error_finding(frame: pd.DataFrame, axis: str) -> str | None:
    out = cell_outcome(frame)
    rows = frame[out == "error"]
    if rows.empty:
        return None
    where = "; ".join(_cell_where(r, axis) for _, r in rows.iterrows())
    n = len(rows)
    return f"{n} cell{'s' if n > 1 else ''} failed with an error: {where} (see Collapse and failures)"


def noisy_cells(frame: pd.DataFrame, axis: str, threshold: float = NOISE_THRESHOLD) -> list[tuple[str, str, float]]:
    """(phase, where, relative width) for cells whose bootstrap interval is wider than ``threshold`` × p50."""
    frame = frame.reset_index(drop=True)
    out = []
    for phase, p50, lo, hi in (
        ("prefill", "prefill_p50_ms", "prefill_p50_ci_low_ms", "prefill_p50_ci_high_ms"),
        ("decode", "decode_p50_ms_per_tok", "decode_p50_ci_low_ms", "decode_p50_ci_high_ms"),
    ):
        if lo not in frame.columns or hi not in frame.columns:
            continue
        width = (_col(frame, hi) - _col(frame, lo)) / _col(frame, p50)
        for idx, w in width.items():
            if not _isnan(w) and w > threshold:
                out.append((phase, _cell_where(frame.loc[idx], axis), float(w)))
    return out


def noise_finding(frame: pd.DataFrame, axis: str) -> str | None:
    cells = noisy_cells(frame, axis)
    if not cells:
        return None
    listed = ", ".join(f"{phase} at {where} ({w:.0%})" for phase, where, w in cells)
    return (f"noisy (bootstrap 95% interval wider than {NOISE_THRESHOLD:.0%} of the median): {listed}")


def _series_findings_1d(frame: pd.DataFrame, axis: str) -> list[str]:
    items: list[str | None] = [prefill_time_finding(frame, axis), trend_finding(frame, axis, "prefill_ms_per_tok")]
    if axis == "batch":
        items += [decode_scaling_finding(frame, "batch"), saturation_finding(frame, "decode_tok_s"),
                  saturation_finding(frame, "prefill_tok_s")]
    else:
        items.append(trend_finding(frame, axis, "decode_p50_ms_per_tok"))
    items += [
        peak_finding(frame, axis, "total_tok_s"),
        memory_finding(frame, axis),
        collapse_finding(frame, axis),
        oom_finding(frame, axis),
        error_finding(frame, axis),
        noise_finding(frame, axis),
    ]
    return [i for i in items if i]


def _series_findings_grid(frame: pd.DataFrame) -> list[str]:
    items: list[str | None] = []
    seq = _col(frame, "seq_len")
    batch = _col(frame, "batch")
    for s in sorted(seq.dropna().unique()):
        sub = frame[seq == s].sort_values("batch", kind="stable")
        for f in (decode_scaling_finding(sub, "batch"), saturation_finding(sub, "decode_tok_s")):
            if f:
                items.append(f"at seq_len {format_axis_value(s)}: {f}")
    for b in sorted(batch.dropna().unique()):
        sub = frame[batch == b].sort_values("seq_len", kind="stable")
        f = trend_finding(sub, "seq_len", "prefill_ms_per_tok")
        if f:
            items.append(f"at batch {format_axis_value(b)}: {f}")
    out = cell_outcome(frame)
    measured = frame[~out.isin(FAILED)]
    for metric in ("total_tok_s", "decode_tok_s"):
        vals = _col(measured, metric)
        if vals.notna().any():
            idx = vals.idxmax()
            items.append(f"{LABELS[metric]} is highest at {format_number(vals[idx])} at "
                         f"{_cell_where(frame.loc[idx], 'grid')}")
    mem, source = memory_mib(measured)
    if mem.notna().sum() >= 2:
        lo, hi = mem.idxmin(), mem.idxmax()
        items.append(f"memory ({_memory_label(source[mem.notna()])}) ranges {_fmt_mib_value(mem[lo])} MiB "
                     f"({_cell_where(frame.loc[lo], 'grid')}) to {_fmt_mib_value(mem[hi])} MiB "
                     f"({_cell_where(frame.loc[hi], 'grid')})")
    for s in sorted(seq.dropna().unique()):
        sub = frame[seq == s].sort_values("batch", kind="stable")
        f = oom_finding(sub, "batch")
        if f:
            items.append(f"at seq_len {format_axis_value(s)}: {f}")
    items += [collapse_finding(frame, "grid"), error_finding(frame, "grid"), noise_finding(frame, "grid")]
    return [i for i in items if i]


def series_findings(frame: pd.DataFrame, axis: str) -> list[str]:
    """Findings of one series (rows of one model, dtype and backend), computed from its rows only."""
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r}; expected one of {AXES}")
    if frame.empty:
        return []
    if axis == "grid":
        return _series_findings_grid(frame.sort_values(["seq_len", "batch"], kind="stable").reset_index(drop=True))
    return _series_findings_1d(frame.sort_values(axis, kind="stable").reset_index(drop=True), axis)


def sweep_findings(frame: pd.DataFrame, axis: str) -> list[str]:
    """Findings of a whole sweep; with several series each finding starts with ``[series label]``."""
    groups = split_series(frame, axis)
    if len(groups) == 1:
        return series_findings(groups[0][1], axis)
    out = []
    for key, sub in groups:
        label = series_label(key)
        out += [f"[{label}] {f}" for f in series_findings(sub, axis)]
    return out


def roofline_finding(frame: pd.DataFrame) -> str | None:
    """How far the measured phases are from their floors, as a range over the series' cells: against the
    measured ceilings ("x measured floor") and against the device's theoretical peak ("x peak floor")."""
    parts = []
    any_peak = False
    for phase, measured in (("prefill", "prefill_p50_ms"), ("decode", "decode_p50_ms_per_tok")):
        eff = _col(frame, f"{phase}_efficiency").dropna()
        if eff.empty:
            continue
        bounds = sorted(set(_text(frame, f"{phase}_bound").dropna()) - {""})
        text = (f"{phase} runs at {_span(100 * eff.min(), 100 * eff.max())}% of its roofline floor "
                f"({'/'.join(bounds)}-bound), i.e. {_span(1 / eff.max(), 1 / eff.min())}x the measured floor")
        peak_ratio = (_col(frame, measured) / _col(frame, f"{phase}_floor_peak_ms")).dropna()
        if not peak_ratio.empty:
            any_peak = True
            text += f", {_span(peak_ratio.min(), peak_ratio.max())}x the peak floor"
        parts.append(text)
    if parts and not any_peak:
        cpu = "device" in frame.columns and set(_text(frame, "device")) <= {"cpu", ""}
        parts.append("no peak floor: " + ("the CPU has no theoretical peak in this tool" if cpu else
                                          "the calibration recorded no theoretical peak of the device"))
    return "; ".join(parts) or None


def memory_model_finding(frame: pd.DataFrame) -> str | None:
    """Measured peak allocated memory against the predicted budget (weights + KV cache + logits + activations)."""
    if "predicted_memory_mb" not in frame.columns or "vram_allocated_mb" not in frame.columns:
        return None
    ok = ~cell_outcome(frame).isin(FAILED)
    pred, alloc = _col(frame, "predicted_memory_mb")[ok], _col(frame, "vram_allocated_mb")[ok]
    keep = pred.notna() & alloc.notna() & (pred > 0) & (alloc > 0)
    if not keep.any():
        return None
    ratio = alloc[keep] / pred[keep]
    text = (f"peak allocated memory is {_span(100 * ratio.min(), 100 * ratio.max(), '.0f')}% of the predicted budget "
            f"(weights + KV cache + kept logits + activation estimate)")
    reserved = _col(frame, "vram_reserved_mb")[ok][keep]
    if reserved.notna().all():
        extra = reserved - alloc[keep]
        text += f"; the allocator reserves {_span(extra.min(), extra.max(), '.0f')} MiB more than that peak"
    return text


def _ratio_range(pairs: list[tuple[float, tuple]]) -> str:
    vals = sorted(r for r, _ in pairs)
    return f"{_span(vals[0], vals[-1], '.2f')}x (median {float(np.median(vals)):.2f}x)"


def cost_finding(frame: pd.DataFrame) -> str | None:
    """What the cells cost: their measuring jobs' wall time (all replicates) against the measured reps', with the
    one-time start-up of shared measurement workers apart."""
    def summed(name: str) -> pd.Series | None:  # a cost column over all replicates where combined, else as is
        column = f"{name}_total" if f"{name}_total" in frame.columns else name
        return _col(frame, column) if column in frame.columns else None

    job, measured = summed("job_s"), summed("measured_s")
    if job is None or measured is None:
        return None
    ok = job.notna() & measured.notna()
    if not ok.any():
        return None
    job_s, measured_s = float(job[ok].sum()), float(measured[ok].sum())
    processes = int(_col(frame, "replicates")[ok].fillna(1).sum()) if "replicates" in frame.columns else int(ok.sum())
    ratio = f" ({job_s / measured_s:.1f}x)" if measured_s > 0 else ""
    text = (f"cost: {processes} measuring job(s) for {int(ok.sum())} cell(s) took {job_s:.1f} s of wall time "
            f"for {measured_s:.1f} s of measured reps{ratio}")
    started = summed("worker_start_s")
    once = float(started[ok].fillna(0.0).sum()) if started is not None else 0.0
    if once > 0 and measured_s > 0:
        text += (f"; {once:.1f} s of it were shared measurement workers starting up (once per worker, not per "
                 f"cell), and the rest is {(job_s - once) / measured_s:.1f}x the measured reps")
    setup_s = summed("backend_setup_s")
    setup = float(setup_s[ok].fillna(0.0).sum()) if setup_s is not None else 0.0
    compile_s = summed("backend_compile_s")
    compiled = float(compile_s[ok].fillna(0.0).sum()) if compile_s is not None else 0.0
    if setup >= 0.25 * job_s:  # worth naming: compiling and autotuning, cached for a later run on this machine
        text += f"; {setup:.1f} s were backend setup (graph capture, compiling, autotuning)"
        if compiled > 0:
            text += (f", {compiled:.1f} s of it making the compiled step (compiled once and saved, then loaded "
                     "by each process; or, with compiled_step traced, traced in each process and compiled shape "
                     "even where its compiled code is cached: the cells' compile_stats step says which)")
        text += ("; a later run of the same shapes on this machine loads compiled code and tuned kernels from "
                 "results/cache/compile/")
    return text + _cost_parts(summed, ok, job_s - measured_s - once, compiled)


# The parts of a job besides its reps and its worker's start-up, as the cost line names them: {name: columns}.
COST_LINE_PARTS = {"start-up": ("import_s", "startup_s"), "backend setup": ("backend_setup_s",),
                   "warmup": ("warmup_s",), "the GPU kernel-time profile": ("kernel_time_s",),
                   "timing tokenization": ("tokenization_s",)}


def _cost_parts(summed, ok: pd.Series, besides_s: float, compile_s: float = 0.0) -> str:
    """'; besides the reps: warmup 6.8 s, ...' from the cells' recorded parts, largest first, and what is left
    (model build, handing the cell over, recording it); the generic sentence where cells recorded no parts.
    compile_s: torch.compile's seconds, named apart from the rest of backend setup (which includes them)."""
    parts = {}
    for name, columns in COST_LINE_PARTS.items():
        series = [summed(c) for c in columns]
        if any(s is not None for s in series):
            parts[name] = sum(float(s[ok].fillna(0.0).sum()) for s in series if s is not None)
    if compile_s > 0 and "backend setup" in parts:
        parts["backend setup"] -= compile_s
        parts["torch.compile"] = compile_s
    if not parts:
        return ("; besides the reps a job spends its time on start-up, model build, backend setup, warmup and "
                "side measurements")
    rest = besides_s - sum(parts.values())
    shown = [f"{name} {seconds:.1f} s" for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1])
             if round(seconds, 1) > 0]  # a part these cells did not have (no kernel-time profile on the CPU) is left out
    return (f"; besides the reps: {''.join(f'{part}, ' for part in shown)}and {max(rest, 0.0):.1f} s else (model "
            "build, handing the cell over, recording it)")
