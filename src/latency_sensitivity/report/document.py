"""Render the markdown report of one or more merged sweeps.

The report follows the reference study's layout: per sweep and per series (model, dtype, backend) a
"Prefill + memory" table and a "Decode + throughput" table (one compact table for a grid sweep), the
sweep's figures, and findings. Every finding is computed from the data by the small functions below
(`format_change`, `trend_finding`, `sweep_findings`, ...); none is written in advance.

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

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from latency_sensitivity.analysis import collapse as _collapse
from latency_sensitivity.atomic import write_text
from latency_sensitivity.engine.backends import BACKENDS
from latency_sensitivity.columns import COLUMNS_BY_NAME, LATENCY_METRICS, THROUGHPUT_METRICS
from latency_sensitivity.config import ARCHITECTURE_SUMMARY

FLAT_TOLERANCE = 0.05
NOISE_THRESHOLD = 0.10
AXES = ("seq_len", "batch", "grid")
SERIES_KEYS = ("model", "dtype", "backend")
FAILED = ("oom", "error")
ERROR_NOTE_CHARS = 300

ENVIRONMENT_KEYS = (
    "hostname",
    "platform",
    "python",
    "torch",
    "transformers",
    "cuda_runtime",
    "driver",
    "device_name",
    "gpu_count",
    "cpu_model",
    "cpu_count",
)
SETTINGS_KEYS = (
    "models",
    "dtypes",
    "backends",
    "device",
    "attn_implementation",
    "gen_tokens",
    "warmup",
    "reps",
    "seed",
    "threads",
    "collapse_factor",
)
# The settings each cell records (runner.py's `cell`): {report setting: the cell's key}. A list setting (dtypes,
# backends) lists the values; a scalar one shows its value, or each value with its count where cells differ.
CELL_SETTINGS = {"dtypes": "dtype", "backends": "backend", "device": "device",
                 "attn_implementation": "attn_implementation", "gen_tokens": "gen_tokens", "warmup": "warmup",
                 "reps": "reps", "seed": "seed", "threads": "threads"}
CELL_LIST_SETTINGS = ("dtypes", "backends")


# Labels of metrics in the findings.
LABELS = {
    "prefill_p50_ms": "prefill p50",
    "prefill_ms_per_tok": "prefill ms/token",
    "prefill_tok_s": "prefill tok/s",
    "decode_p50_ms_per_tok": "decode ms/step",
    "decode_tok_s": "decode tok/s",
    "total_tok_s": "total tok/s",
    "memory": "memory",
}


@dataclass
class SweepInput:
    """One sweep to report: its name, axis ("seq_len", "batch" or "grid"), merged frame and figures.

    ``figures`` holds (caption, path) pairs; the path is relative to the report's folder.
    """

    name: str
    axis: str
    frame: pd.DataFrame
    figures: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# number formatting


def _span(lo: float, hi: float, spec: str = ".1f") -> str:
    """`lo–hi` in the given format, or one number where both print the same (a single cell)."""
    a, b = format(lo, spec), format(hi, spec)
    return a if a == b else f"{a}–{b}"


def _isnan(x: Any) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def format_sig(x: Any, digits: int) -> str:
    """``x`` with ``digits`` significant digits, trailing zeros kept; integer digits are never dropped."""
    if _isnan(x):
        return "n/a"
    x = float(x)
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def format_number(x: Any) -> str:
    """A value in a finding: no decimals from 1000 up, one from 100 up, else 3 significant digits."""
    if _isnan(x):
        return "n/a"
    x = float(x)
    if abs(x) >= 1000:
        return f"{x:.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return format_sig(x, 3)


def format_ratio(r: float) -> str:
    """A growth factor: ``26.5x``; from 100 up without decimals (``128x``)."""
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x"


def format_relative(a: Any, b: Any) -> str:
    """The change from ``a`` to ``b``: ``+58%`` below 2x, ``26.5x`` from 2x up, ``3.0x lower`` below 0.5x."""
    if _isnan(a) or _isnan(b):
        return "n/a"
    a, b = float(a), float(b)
    if a == 0:
        return "from 0" if b != 0 else "+0%"
    r = b / a
    if r >= 2:
        return format_ratio(r)
    if 0 < r <= 0.5:
        return f"{format_ratio(1 / r)} lower"
    pct = (b - a) / abs(a) * 100
    text = f"{pct:+.0f}%"
    return "+0%" if text == "-0%" else text


def format_change(a: Any, b: Any, unit: str = "") -> str:
    """``0.272 → 0.429 (+58%)``; with a unit ``5974 → 10716 MiB (+79%)`` (MiB always without decimals)."""
    fmt = _fmt_mib_value if unit == "MiB" else format_number
    u = f" {unit}" if unit else ""
    return f"{fmt(a)} → {fmt(b)}{u} ({format_relative(a, b)})"


def _fmt_mib_value(x: Any) -> str:
    return "n/a" if _isnan(x) else f"{float(x):.0f}"


def direction(a: Any, b: Any, words: Sequence[str] = ("rises", "falls", "stays flat"),
              tol: float = FLAT_TOLERANCE) -> str:
    """``words[0]`` when b exceeds a by more than ``tol`` (relative to a), ``words[1]`` when it is that much
    lower, else ``words[2]``."""
    a, b = float(a), float(b)
    scale = abs(a) if a != 0 else max(abs(b), 1e-300)
    rel = (b - a) / scale
    if rel > tol:
        return words[0]
    if rel < -tol:
        return words[1]
    return words[2]


def format_noise(noise: "_collapse.Noise") -> str:
    """``±4%`` (one decimal below 1%)."""
    pct = 100 * noise.fraction
    return f"±{pct:.1f}%" if pct < 1 else f"±{pct:.0f}%"


def _noise_of(rows: Sequence[pd.Series], metric: str) -> "_collapse.Noise | None":
    """The noise a change between these cells must exceed; None when no cell records any."""
    noise = _collapse.combined_noise(list(rows), metric)
    return noise if noise.known or noise.launch_bound else None


def _host_label(noise: "_collapse.Noise | None") -> str:
    return f" [launch-bound cells: {_collapse.HOST_NOISE}]" if noise is not None and noise.launch_bound else ""


def _trend_phrase(label: str, a: float, b: float, words: Sequence[str] = ("rises", "falls", "stays flat"),
                  unit: str = "", noise: "_collapse.Noise | None" = None) -> str:
    """``label rises a → b (+x%)``, or, where the change is not larger than the cells' noise (when known,
    else `FLAT_TOLERANCE`), ``label stays flat, within noise (±x%): a → b (+y%)``."""
    change = format_change(a, b, unit)
    if noise is not None and noise.known:
        lo = min(abs(float(a)), abs(float(b)))
        rel = abs(float(b) - float(a)) / lo if lo else (0.0 if a == b else math.inf)
        word = words[2] if rel <= noise.fraction else direction(a, b, words, tol=0.0)
        if word == words[2]:
            return f"{label} {word}, within noise ({format_noise(noise)}): {change}"
        return f"{label} {word} {change}"
    word = direction(a, b, words)
    if word == words[2]:
        return f"{label} {word} (within ±{FLAT_TOLERANCE:.0%}): {change}"
    return f"{label} {word} {change}"


def format_axis_value(v: Any) -> str:
    if _isnan(v):
        return "n/a"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() else format_number(f)


# table formats: ms 2 decimals, ms/token 4 significant, tok/s 1 decimal, MiB 0 decimals
def fmt_ms(x: Any) -> str:
    return "–" if _isnan(x) else f"{float(x):.2f}"


def fmt_ms_per_tok(x: Any) -> str:
    return "–" if _isnan(x) else format_sig(x, 4)


def fmt_tok_s(x: Any) -> str:
    return "–" if _isnan(x) else f"{float(x):.1f}"


def fmt_mib(x: Any) -> str:
    return "–" if _isnan(x) else f"{float(x):.0f}"


# --------------------------------------------------------------------------------------------------
# frame helpers


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, or all NaN when the frame lacks it."""
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce").astype(float)


def _text(frame: pd.DataFrame, name: str) -> pd.Series:
    """A text column with missing values as "", or all "" when the frame lacks it."""
    if name not in frame.columns:
        return pd.Series([""] * len(frame), index=frame.index, dtype=object)
    return frame[name].map(lambda v: "" if _isnan(v) else str(v)).astype(object)


def cell_outcome(frame: pd.DataFrame) -> pd.Series:
    """Per row: "oom" or "error" for a failed cell (status first, then flag), else the flag ("ok", "collapse")."""
    status = _text(frame, "status").str.strip().str.lower()
    flag = _text(frame, "flag").str.strip().str.lower()
    out = flag.where(flag != "", "ok")
    failed_status = status.isin(FAILED)
    out = out.where(~failed_status, status)
    return out.astype(object)


def memory_mib(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Memory per row: vram_reserved_mb where it is nonzero, else peak_rss_mb; and its source ("vram"/"rss"/"")."""
    vram = _col(frame, "vram_reserved_mb")
    rss = _col(frame, "peak_rss_mb")
    use_vram = vram.notna() & (vram > 0)
    use_rss = ~use_vram & rss.notna()
    values = vram.where(use_vram, rss.where(use_rss, vram))
    source = pd.Series("", index=frame.index, dtype=object)
    source[use_vram] = "vram"
    source[use_rss] = "rss"
    source[~use_vram & ~use_rss & vram.notna()] = "vram"
    return values, source


def _memory_label(sources: Iterable[str]) -> str:
    kinds = {s for s in sources if s}
    if kinds == {"rss"}:
        return "peak RSS"
    if kinds == {"vram", "rss"}:
        return "VRAM reserved / peak RSS"
    return "VRAM reserved"


def _series_key_columns(frame: pd.DataFrame) -> list[str]:
    return [k for k in SERIES_KEYS if k in frame.columns]


def _fixed_columns(frame: pd.DataFrame, axis: str) -> list[str]:
    """For a 1-D sweep, the other axis column when it takes several values (each value is its own series)."""
    if axis == "seq_len":
        other = "batch"
    elif axis == "batch":
        other = "seq_len"
    else:
        return []
    if other in frame.columns and frame[other].nunique(dropna=True) > 1:
        return [other]
    return []


def split_series(frame: pd.DataFrame, axis: str) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """(key, rows sorted along the axis) per series: model, dtype, backend (and the fixed axis if it varies)."""
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r}; expected one of {AXES}")
    keys = _series_key_columns(frame) + _fixed_columns(frame, axis)
    sort_cols = ["seq_len", "batch"] if axis == "grid" else [axis]
    sort_cols = [c for c in sort_cols if c in frame.columns]
    if not keys:
        groups: list[tuple[dict[str, Any], pd.DataFrame]] = [({}, frame)]
    else:
        work = frame.copy()
        for k in keys:
            if k in SERIES_KEYS:
                work[k] = _text(work, k)
        groups = []
        for values, sub in work.groupby(keys, sort=True, dropna=False):
            if not isinstance(values, tuple):
                values = (values,)
            groups.append((dict(zip(keys, values)), frame.loc[sub.index]))
    out = []
    for key, sub in groups:
        if sort_cols:
            sub = sub.sort_values(sort_cols, kind="stable")
        out.append((key, sub.reset_index(drop=True)))
    return out


def series_label(key: dict[str, Any]) -> str:
    parts = [str(key[k]) for k in SERIES_KEYS if k in key and str(key[k])]
    label = " · ".join(parts) if parts else "all cells"
    for k in ("batch", "seq_len"):
        if k in key:
            label += f" · {k} = {format_axis_value(key[k])}"
    return label


# --------------------------------------------------------------------------------------------------
# findings


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
        return (f"{label} does not saturate up to {axis} {format_axis_value(sat.last)}: every step along the "
                f"{axis} raises it by more than the noise")
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


def _cell_where(row: pd.Series, axis: str, with_name: bool = True) -> str:
    if axis == "grid":
        return f"seq_len {format_axis_value(row.get('seq_len'))}, batch {format_axis_value(row.get('batch'))}"
    v = format_axis_value(row.get(axis))
    return f"{axis} {v}" if with_name else v


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


# --------------------------------------------------------------------------------------------------
# markdown pieces


def _clean(text: Any) -> str:
    """Text on one line, missing values as ""."""
    s = "" if _isnan(text) else str(text)
    return re.sub(r"\s+", " ", s).strip()


def _escape(text: Any) -> str:
    """Text safe inside a markdown table cell or list item."""
    return _clean(text).replace("|", "\\|")


def _shorten(text: str, limit: int = ERROR_NOTE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    right = right if right is not None else [False] * len(headers)
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_escape(c) if c != "" else "" for c in row) + " |")
    return "\n".join(lines)


class _Notes:
    """Numbered notes under a table: error text of failed cells, detail of collapse cells.

    Cells with the same note text share one number: ``1. batch 128, 256: OOM: CUDA out of memory ...``.
    """

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.wheres: list[list[str]] = []

    @property
    def items(self) -> list[str]:
        return [f"{self._where(w)}: {b}" for b, w in zip(self.bodies, self.wheres)]

    @staticmethod
    def _where(wheres: list[str]) -> str:
        heads = {w.split(" ", 1)[0] for w in wheres}
        if len(heads) == 1 and all(" " in w and "," not in w for w in wheres):
            return f"{heads.pop()} " + ", ".join(w.split(" ", 1)[1] for w in wheres)
        return "; ".join(wheres)

    def add(self, body: str, where: str) -> str:
        if body in self.bodies:
            i = self.bodies.index(body)
            if where not in self.wheres[i]:
                self.wheres[i].append(where)
        else:
            self.bodies.append(body)
            self.wheres.append([where])
            i = len(self.bodies) - 1
        return f"[{i + 1}]"

    def render(self) -> str:
        return "\n".join(f"{i}. {_escape(t)}" for i, t in enumerate(self.items, 1))


def _failure_label(outcome: str) -> str:
    return "OOM" if outcome == "oom" else "error"


def _note_for(row: pd.Series, outcome: str) -> str | None:
    """The note text of a failed or collapsed cell (without the cell's position)."""
    if outcome in FAILED:
        err = _clean(row.get("error", ""))
        if not err:
            err = "out of memory (no error text recorded)" if outcome == "oom" else "no error text recorded"
        return f"{_failure_label(outcome)}: {_shorten(err)}"
    if outcome == "collapse":
        detail = _clean(row.get("flag_detail", "")) or "no flag_detail recorded"
        return f"collapse: {detail}"
    return None


def _metric_cells(row: pd.Series, outcome: str, specs: Sequence[tuple[Any, Any]], notes: _Notes,
                  where: str) -> list[str]:
    """Formatted metric cells; a failed cell shows OOM/error in each, with a note marker on the first."""
    if outcome in FAILED:
        label = _failure_label(outcome)
        note = _note_for(row, outcome)
        marker = notes.add(note, where) if note else ""
        return [f"{label} {marker}".strip()] + [label] * (len(specs) - 1)
    return [fmt(val) for val, fmt in specs]


def _flag_cell(row: pd.Series, outcome: str, notes: _Notes, where: str) -> str:
    note = _note_for(row, outcome)
    if note is None:
        return outcome
    return f"{outcome} {notes.add(note, where)}"


def _memory_header(sources: Iterable[str]) -> str:
    return f"{_memory_label(sources)} (MiB)"


def prefill_table(frame: pd.DataFrame, axis: str, notes: _Notes | None = None) -> str:
    """The "Prefill + memory" table of one 1-D series."""
    frame = frame.reset_index(drop=True)
    notes = notes if notes is not None else _Notes()
    out = cell_outcome(frame)
    mem, source = memory_mib(frame)
    has_ttft = "ttft_p50_ms" in frame.columns
    headers = [axis, "prefill p50 (ms)", "prefill (ms/token)", "prefill (tok/s)",
               _memory_header(source[~out.isin(FAILED)])]
    if has_ttft:
        headers.append("TTFT p50 (ms)")
    pf, pmt, pts, ttft = (_col(frame, c) for c in ("prefill_p50_ms", "prefill_ms_per_tok", "prefill_tok_s",
                                                   "ttft_p50_ms"))
    rows = []
    for idx, row in frame.iterrows():
        where = _cell_where(row, axis)
        specs = [(pf[idx], fmt_ms), (pmt[idx], fmt_ms_per_tok), (pts[idx], fmt_tok_s), (mem[idx], fmt_mib)]
        if has_ttft:
            specs.append((ttft[idx], fmt_ms))
        rows.append([format_axis_value(row.get(axis))] + _metric_cells(row, out[idx], specs, notes, where))
    return markdown_table(headers, rows, [True] * len(headers))


def decode_table(frame: pd.DataFrame, axis: str, notes: _Notes | None = None) -> str:
    """The "Decode + throughput" table of one 1-D series."""
    frame = frame.reset_index(drop=True)
    notes = notes if notes is not None else _Notes()
    out = cell_outcome(frame)
    has_tpot = "tpot_p50_ms" in frame.columns
    headers = [axis, "decode p50 (ms/step)", "decode (tok/s)", "total (tok/s)"]
    if has_tpot:
        headers.append("TPOT p50 (ms)")
    headers.append("flag")
    dms, dts, tts, tpot = (_col(frame, c) for c in ("decode_p50_ms_per_tok", "decode_tok_s", "total_tok_s",
                                                    "tpot_p50_ms"))
    rows = []
    for idx, row in frame.iterrows():
        where = _cell_where(row, axis)
        specs = [(dms[idx], fmt_ms_per_tok), (dts[idx], fmt_tok_s), (tts[idx], fmt_tok_s)]
        if has_tpot:
            specs.append((tpot[idx], fmt_ms))
        cells = _metric_cells(row, out[idx], specs, notes, where)
        rows.append([format_axis_value(row.get(axis))] + cells + [_flag_cell(row, out[idx], notes, where)])
    return markdown_table(headers, rows, [True] * (len(headers) - 1) + [False])


def grid_table(frame: pd.DataFrame, notes: _Notes | None = None) -> str:
    """One compact table of a grid series, seq_len and batch both as columns."""
    frame = frame.reset_index(drop=True)
    notes = notes if notes is not None else _Notes()
    out = cell_outcome(frame)
    mem, source = memory_mib(frame)
    headers = ["seq_len", "batch", "prefill p50 (ms)", "prefill (ms/token)", "decode p50 (ms/step)",
               "decode (tok/s)", "total (tok/s)", _memory_header(source[~out.isin(FAILED)]), "flag"]
    cols = {c: _col(frame, c) for c in ("prefill_p50_ms", "prefill_ms_per_tok", "decode_p50_ms_per_tok",
                                        "decode_tok_s", "total_tok_s")}
    rows = []
    for idx, row in frame.iterrows():
        where = _cell_where(row, "grid")
        specs = [(cols["prefill_p50_ms"][idx], fmt_ms), (cols["prefill_ms_per_tok"][idx], fmt_ms_per_tok),
                 (cols["decode_p50_ms_per_tok"][idx], fmt_ms_per_tok), (cols["decode_tok_s"][idx], fmt_tok_s),
                 (cols["total_tok_s"][idx], fmt_tok_s), (mem[idx], fmt_mib)]
        cells = _metric_cells(row, out[idx], specs, notes, where)
        rows.append([format_axis_value(row.get("seq_len")), format_axis_value(row.get("batch"))] + cells
                    + [_flag_cell(row, out[idx], notes, where)])
    return markdown_table(headers, rows, [True] * (len(headers) - 1) + [False])


def _fmt_value(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple, set)):
        return ", ".join(_fmt_value(x) for x in v)
    if _isnan(v):
        return "–"
    return str(v)


def environment_section(environments: list[dict]) -> str:
    """Key/value table of the cells' environments: one value column per distinct environment."""
    envs = []
    for e in environments or []:
        if e not in envs:
            envs.append(e)
    if not envs:
        return "No environment was recorded."
    keys = [k for k in ENVIRONMENT_KEYS if any(k in e for e in envs)]
    keys += sorted({k for e in envs for k in e} - set(ENVIRONMENT_KEYS))
    headers = ["key"] + (["value"] if len(envs) == 1 else [f"environment {i}" for i in range(1, len(envs) + 1)])
    rows = [[f"`{k}`"] + [_fmt_value(e.get(k)) for e in envs] for k in keys]
    text = markdown_table(headers, rows)
    if len(envs) > 1:
        text = f"The cells ran in {len(envs)} distinct environments.\n\n" + text
    return text


def _models_table(models: Any) -> str | None:
    """Models with their architecture summary, when ``models`` carries one (dict or list of dicts)."""
    entries: list[tuple[str, Any]] = []
    if isinstance(models, dict):
        entries = list(models.items())
    elif isinstance(models, (list, tuple)) and models and all(isinstance(m, dict) for m in models):
        entries = [(str(m.get("name", m.get("model", f"model {i + 1}"))),
                    {k: v for k, v in m.items() if k not in ("name", "model")}) for i, m in enumerate(models)]
    if not entries:
        return None
    if all(isinstance(v, dict) for _, v in entries):
        keys: list[str] = []
        for _, v in entries:
            keys += [k for k in v if k not in keys]
        rows = [[f"`{name}`"] + [_fmt_value(v.get(k)) for k in keys] for name, v in entries]
        return markdown_table(["model"] + keys, rows)
    rows = [[f"`{name}`", _fmt_value(v)] for name, v in entries]
    return markdown_table(["model", "architecture"], rows)


def _counted(values: list) -> Any:
    """One value when all agree, else "v1 (n1 cells), v2 (n2 cells)" in first-seen order."""
    counts: dict[str, int] = {}
    for v in values:
        counts[_fmt_value(v)] = counts.get(_fmt_value(v), 0) + 1
    if len(counts) == 1:
        return values[0]
    return ", ".join(f"{v} ({n} cell{'s' if n != 1 else ''})" for v, n in counts.items())


def cell_settings(results: Sequence[dict], settings: dict | None = None) -> dict:
    """The report's settings as the cells recorded them (each cell's `cell` spec and `architecture`), over the
    config's `settings` (which keeps what cells do not record, e.g. collapse_factor, and the architecture of a
    model none of whose cells got as far as loading it). Where cells differ, each value is shown with its count."""
    out = dict(settings or {})
    specs = [r["cell"] for r in results]
    if not specs:
        return out
    for name, key in CELL_SETTINGS.items():
        values = [spec[key] for spec in specs if key in spec]
        if not values:
            continue
        out[name] = list(dict.fromkeys(values)) if name in CELL_LIST_SETTINGS else _counted(values)
    models: dict[str, dict] = {}
    configured = out.get("models") if isinstance(out.get("models"), dict) else {}
    for name in dict.fromkeys(spec["model"] for spec in specs):
        mine = [r for r in results if r["cell"]["model"] == name]
        archs = [r["architecture"] for r in mine if isinstance(r.get("architecture"), dict)]
        if archs:
            summary = {k: _counted([a.get(k) for a in archs]) for k in ARCHITECTURE_SUMMARY
                       if any(k in a for a in archs)}
        else:
            summary = {k: v for k, v in dict(configured.get(name) or {}).items() if k != "weights"}
        summary["weights"] = _counted([
            "random (from architecture)" if r["cell"].get("model_kind") == "architecture"
            else f"local: {r['cell'].get('model_location')}" for r in mine])
        models[name] = summary
    out["models"] = models
    return out


def settings_section(settings: dict) -> str:
    settings = settings or {}
    if not settings:
        return "No run settings were recorded."
    keys = [k for k in SETTINGS_KEYS if k in settings] + [k for k in settings if k not in SETTINGS_KEYS]
    models_table = _models_table(settings.get("models"))
    rows = []
    for k in keys:
        v = settings[k]
        if k == "models" and models_table is not None:
            names = list(v.keys()) if isinstance(v, dict) else [
                str(m.get("name", m.get("model", ""))) for m in v]
            rows.append([f"`{k}`", ", ".join(names) + " (below)"])
        else:
            rows.append([f"`{k}`", _fmt_value(v)])
    text = markdown_table(["setting", "value"], rows)
    if models_table is not None:
        text += "\n\nModels:\n\n" + models_table
    return text


def _definition(name: str) -> str:
    c = COLUMNS_BY_NAME.get(name)
    if c is None:
        return f"`{name}`"
    unit = f" ({c.unit})" if c.unit else ""
    return f"`{c.name}`{unit}: {c.description}"


def how_to_read_section(settings: dict) -> str:
    prefill = ["prefill_p50_ms", "prefill_ms_per_tok", "prefill_tok_s", "vram_reserved_mb", "peak_rss_mb",
               "ttft_p50_ms"]
    decode = ["decode_p50_ms_per_tok", "decode_tok_s", "total_tok_s", "tpot_p50_ms", "flag"]
    lines = ["Prefill + memory tables (the memory column is `vram_reserved_mb` where it is nonzero, "
             "else `peak_rss_mb`):", ""]
    lines += [f"- {_definition(n)}" for n in prefill]
    lines += ["", "Decode + throughput tables:", ""]
    lines += [f"- {_definition(n)}" for n in decode]
    cf = (settings or {}).get("collapse_factor")
    cf_text = f" `collapse_factor` = {cf}." if cf is not None else ""
    latency = ", ".join(f"`{m}`" for m in LATENCY_METRICS)
    throughput = ", ".join(f"`{m}`" for m in THROUGHPUT_METRICS)
    lines += [
        "",
        "Findings are computed from the table values: a timing *rises* or *falls* only when the change is "
        "larger than the noise of the cells compared (the spread of a cell's replicates where it was measured "
        "in several processes, else half its within-run bootstrap 95% interval, summed over the two cells); "
        "otherwise it stays flat *within noise (±x%)*. Launch-bound cells are labelled host-noise-dominated. "
        f"Without a recorded noise (and for memory) the threshold is {FLAT_TOLERANCE:.0%}. Changes below 2x "
        "are given in percent, larger ones as a factor. A cell is *noisy* when the bootstrap 95% interval of "
        f"its median is wider than {NOISE_THRESHOLD:.0%} of the median.",
        "",
        f"Collapse detection compares each cell along a sweep's axis with the best earlier cell, for the "
        f"latencies {latency} (lower is better) and the throughputs {throughput} (higher is better); along "
        "batch the step time is not compared (a larger batch takes a longer step), throughput is. A change must "
        "also exceed the two cells' noise. A batch series *saturates* where a doubling of the batch no longer "
        f"raises throughput by more than the noise. {_definition('flag_detail')}{cf_text}",
    ]
    return "\n".join(lines)


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


def _pct(x: Any) -> str:
    return "–" if _isnan(x) else f"{100 * float(x):.1f}%"


def _where(row: pd.Series, phase: str) -> str:
    """The phase's regime (launch-, memory- or compute-bound) where measured, else its roofline bound."""
    regime = row.get(f"{phase}_regime")
    if isinstance(regime, str) and regime:
        busy = row.get(f"{phase}_gpu_busy")
        return f"{regime} (GPU busy {_pct(busy)})" if not _isnan(busy) else regime
    return _clean(row.get(f"{phase}_bound"))


def roofline_table(frame: pd.DataFrame, axis: str) -> str | None:
    """Per cell: each phase's floor (from the calibrated ceilings), efficiency = floor / measured, and bound."""
    if "decode_floor_ms" not in frame.columns:
        return None
    frame = frame.reset_index(drop=True)
    keys = ["seq_len", "batch"] if axis == "grid" else [axis]
    peak = [c for c in ("prefill_floor_peak_ms", "decode_floor_peak_ms") if _col(frame, c).notna().any()]
    headers = keys + ["prefill floor (ms)", "prefill eff.", "prefill regime",
                      "decode floor (ms/step)", "decode eff.", "decode regime"]
    headers += [{"prefill_floor_peak_ms": "prefill peak floor (ms)",
                 "decode_floor_peak_ms": "decode peak floor (ms/step)"}[c] for c in peak]
    extra = [(c, h) for c, h in (("sm_clock_p50_mhz", "SM clock p50 (MHz)"), ("gpu_util_p50_pct", "GPU util p50 (%)"))
             if c in frame.columns and _col(frame, c).notna().any()]
    headers += [h for _, h in extra]
    rows = []
    for _, row in frame.iterrows():
        if _isnan(row.get("decode_floor_ms")):
            continue
        cells = [format_axis_value(row.get(k)) for k in keys]
        cells += [fmt_ms(row.get("prefill_floor_ms")), _pct(row.get("prefill_efficiency")), _where(row, "prefill"),
                  format_sig(row.get("decode_floor_ms"), 4), _pct(row.get("decode_efficiency")),
                  _where(row, "decode")]
        cells += [format_sig(row.get(c), 4) for c in peak]
        cells += [format_number(row.get(c)) for c, _ in extra]
        rows.append(cells)
    if not rows:
        return None
    return markdown_table(headers, rows, [True] * len(keys) + [True, True, False, True, True, False]
                          + [True] * (len(peak) + len(extra)))


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


def _ratio_range(pairs: list[tuple[float, tuple]]) -> str:
    vals = sorted(r for r, _ in pairs)
    return f"{_span(vals[0], vals[-1], '.2f')}x (median {float(np.median(vals)):.2f}x)"


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


ANATOMY_STAGES = (("tokenise", "tokenize_p50_ms"), ("prefill (TTFT)", "ttft_p50_ms"), ("decode", None),
                  ("detokenise", "detokenize_p50_ms"))


def anatomy_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Per ok cell: the request's stages in ms (decode = e2e - TTFT) and the whole request, text to text."""
    needed = {"tokenize_p50_ms", "detokenize_p50_ms", "ttft_p50_ms", "e2e_p50_ms"}
    if not needed <= set(frame.columns):
        return pd.DataFrame()
    ok = frame[~cell_outcome(frame).isin(FAILED)]
    out = pd.DataFrame({
        "tokenise": _col(ok, "tokenize_p50_ms"),
        "prefill (TTFT)": _col(ok, "ttft_p50_ms"),
        "decode": _col(ok, "e2e_p50_ms") - _col(ok, "ttft_p50_ms"),
        "detokenise": _col(ok, "detokenize_p50_ms"),
    })
    out = out.dropna()
    out["request"] = out.sum(axis=1)
    return out


def anatomy_table(frame: pd.DataFrame, axis: str) -> tuple[str, str] | None:
    """The request anatomy of a series (markdown table) and its finding; None without tokenisation timings."""
    rows = anatomy_rows(frame)
    if rows.empty:
        return None
    keys = ["seq_len", "batch"] if axis == "grid" else [axis]
    stages = [name for name, _ in ANATOMY_STAGES]
    table = []
    for idx, r in rows.iterrows():
        largest = max(stages, key=lambda st: r[st])
        table.append([format_axis_value(frame.loc[idx, k]) for k in keys]
                     + [fmt_ms(r[st]) for st in stages] + [fmt_ms(r["request"]), largest])
    text = markdown_table(keys + [f"{st} ms" for st in stages] + ["request ms", "largest stage"], table,
                          [True] * (len(keys) + len(stages) + 1) + [False])
    host = (rows["tokenise"] + rows["detokenise"]) / rows["request"]
    largest = {max(stages, key=lambda st: r[st]) for _, r in rows.iterrows()}
    finding = (f"tokenising and detokenising take {_span(100 * host.min(), 100 * host.max(), '.2f')}% of a request "
               f"(text in, text out, p50 stages); the largest stage is {' / '.join(sorted(largest))}")
    return text, finding


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
                                           anatomy[1] if anatomy else None) if f]
        parts += ["", "Findings:", ""]
        parts += [f"- {f}" for f in findings] if findings else ["- too few measured cells for findings"]
    for title, table, findings in backend_comparison(sw.frame) if not sw.frame.empty else []:
        parts += ["", f"### Backends compared: {title}", "",
                  "Decode per step of the cells every backend measured; speed-up = baseline time / backend time; "
                  "× floor = measured time / roofline floor.", "", table, "", "Findings:", ""]
        parts += [f"- {f}" for f in findings]
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


# ------------------------------------------------------------------------------------------ profiles

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


def _pct(x: Any) -> str:
    return "–" if _isnan(x) else f"{100 * float(x):.1f}%"


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


# ------------------------------------------------------------------------------------------ loading


def _gb_s(x: Any) -> str:
    return "–" if x is None or _isnan(x) else f"{float(x):.2f} GB/s"


READ_CEILING_MARGIN = 0.10  # a read this much faster than its cold-read ceiling is not a cold read


def read_suspect(result: dict) -> str | None:
    """Why a loading read's rate cannot be a cold read: faster than the cold read of the same disk, or part of
    the file still in the page cache. None when it is plausible."""
    read, ceiling = result.get("read_gb_s"), result.get("disk_read_gb_s")
    resident = result.get("read_resident_fraction")
    if resident is not None and not _isnan(resident) and resident > 0:
        return (f"{100 * float(resident):.0f}% of the checkpoint was still in the page cache when the read began, "
                f"so the read rate ({_gb_s(read)}) is not a cold read")
    if read is None or ceiling is None or _isnan(read) or _isnan(ceiling) or ceiling <= 0:
        return None
    if float(read) > float(ceiling) * (1 + READ_CEILING_MARGIN):
        return (f"the read ({_gb_s(read)}) is faster than the cold sequential read of the same disk "
                f"({_gb_s(ceiling)}), so part of the checkpoint was read from the page cache: a page-cache drop "
                f"without writing the file back first leaves a freshly written file's dirty pages cached")
    return None


def loading_amortised(result: dict, cells: pd.DataFrame) -> str | None:
    """A cold start in requests: how many of the run's requests (same model and dtype) it costs, per cell kind.

    Uses each ok cell's request_p50_ms (text in, text out), or e2e_p50_ms where tokenisation was not timed.
    """
    if cells.empty or result.get("status") != "ok":
        return None
    sub = cells[~cell_outcome(cells).isin(FAILED)]
    for key in ("model", "dtype"):
        if key in sub.columns and result.get(key) is not None:
            sub = sub[_text(sub, key) == str(result[key])]
    column = "request_p50_ms" if "request_p50_ms" in sub.columns and _col(sub, "request_p50_ms").notna().any() \
        else "e2e_p50_ms"
    if column not in sub.columns:
        return None
    measured = _col(sub, column) > 0  # False for NaN too
    sub, req = sub[measured], _col(sub, column)[measured]
    if req.empty:
        return None
    total_ms = 1000 * float(result["load_total_s"])

    def where(i):
        row = sub.loc[i]
        backend = f" {row['backend']}" if "backend" in sub.columns else ""
        return f"seq_len {row['seq_len']} × batch {row['batch']}{backend}, {fmt_ms(req[i])} ms"

    lo, hi = req.idxmin(), req.idxmax()
    return (f"{result.get('model')} {result.get('dtype')}: the {total_ms / 1000:.2f} s cold start costs as much as "
            f"{total_ms / req[hi]:.1f}–{total_ms / req[lo]:.0f} requests of this run ({where(hi)} – {where(lo)}, "
            f"p50 per request); spread over 1000 requests it adds {total_ms / 1000:.2f} ms to each")


def loading_section(results: Sequence[dict], cells: pd.DataFrame | None = None) -> str:
    """Model loading stage by stage, with the read and copy rates beside this machine's measured ceilings,
    and (given the run's cells) the cold start amortised over requests."""
    parts = ["A model's weights loaded the way a server's cold start does (latency_sensitivity.measure.loading): read "
             "from storage (after dropping the file from the page cache), deserialise, instantiate the modules, "
             "copy to the device, then a first and a second (warm) prefill forward. Ceilings: a cold sequential "
             "read of a scratch file of the same size, and pinned / pageable host-to-device copies."]
    rows, failed, notes = [], [], []
    for r in results:
        if r.get("status") != "ok":
            failed.append(f"{r.get('checkpoint')} on {r.get('device')}: {_shorten(_clean(r.get('error', '')))}")
            continue
        stages = ["read_s", "deserialise_s", "instantiate_s", "host_to_device_s", "first_forward_s"]
        largest = max(stages, key=lambda k: r[k]).removesuffix("_s").replace("_", " ")
        h2d_ceiling = " / ".join(_gb_s(r.get(k)) for k in ("h2d_pinned_gb_s", "h2d_pageable_gb_s") if r.get(k))
        suspect = read_suspect(r)
        if suspect:
            notes.append(f"{r.get('model')} {r.get('dtype')} on {r.get('device')}: {suspect}")
        rows.append([
            str(r.get("model", "")), r.get("dtype", ""), r.get("device", ""), f"{r['bytes'] / 2**20:.0f}",
            f"{r['read_s']:.3f} ({_gb_s(r['read_gb_s'])}; ceiling {_gb_s(r.get('disk_read_gb_s'))}"
            f"{'' if r.get('read_cold') else ', page cache not dropped'})",
            f"{r['deserialise_s']:.3f}", f"{r['instantiate_s']:.3f}",
            f"{r['host_to_device_s']:.3f}" + (f" ({_gb_s(r.get('host_to_device_gb_s'))}; ceiling {h2d_ceiling})"
                                             if r.get("host_to_device_gb_s") else ""),
            f"{r['first_forward_s']:.3f} (warm {r['warm_forward_s']:.3f})", f"{r['load_total_s']:.3f}", largest,
        ])
    if rows:
        parts += ["", markdown_table(["model", "dtype", "device", "MiB", "read s", "deserialise s", "instantiate s",
                                      "host-to-device s", "first forward s", "total s", "largest stage"], rows,
                                     [False, False, False, True, True, True, True, True, True, True, False])]
    if notes:
        parts += ["", "Suspect:", ""] + [f"- {n}" for n in notes]
    amortised = [a for a in (loading_amortised(r, cells) for r in results) if a] if cells is not None else []
    if amortised:
        parts += ["", "Amortised (loading is not part of a request; a server pays it once per start):", ""]
        parts += [f"- {a}" for a in amortised]
    if failed:
        parts += ["", "Failed:", ""] + [f"- {f}" for f in failed]
    return "\n".join(parts)
