"""Collapse detection, saturation and measurement noise along a sweep's axis.

A cell collapses when one of its per-token latencies is more than `factor` times the best (lowest) value of
the earlier cells along the axis, or one of its throughputs is less than 1/`factor` of the best (highest)
earlier value, and that change is also larger than the noise measured for the two cells (`relative_noise`).
"Earlier" means smaller along the swept axis with everything else held fixed (same model, dtype, backend and
the same value of the other axis). Comparing with the best earlier cell, not only the previous one, catches a
slow slide as well as a cliff, and works in batch sweeps, where the reference tool's previous-cell-at-the-
same-batch comparison could never fire.

Along the batch axis a cell is judged per token of the batch, not per step: a larger batch is expected to
take a longer step, so the decode step time (`decode_p50_ms_per_tok`) is left out there and decode is judged
by its throughput (`decode_tok_s`). A batch series *saturates* at the first batch after which a doubling of
the batch no longer raises throughput by more than the noise, for good (`saturation`).

Noise of a cell's metric, as a fraction of its value (`relative_noise`): with more than one replicate (the
cell measured in separate processes), half the replicates' spread ((max - min) / median); otherwise half the
width of the within-run bootstrap 95% interval of the median. A change between two cells is beyond noise when
it is larger than the sum of their two noises. A launch-bound cell (the GPU idles most of the phase) is
dominated by host noise, which a within-run interval understates; it is labelled so wherever it is judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd

from latency_sensitivity.columns import LATENCY_METRICS, THROUGHPUT_METRICS, order_columns
from latency_sensitivity.vocabulary import OTHER_AXIS

SERIES_KEYS = ("model", "dtype", "backend")

# Per metric: the phase whose timing it derives from (total_tok_s: both; its noise is the larger).
METRIC_PHASES: dict[str, tuple[str, ...]] = {
    "prefill_p50_ms": ("prefill",),
    "prefill_ms_per_tok": ("prefill",),
    "prefill_tok_s": ("prefill",),
    "ttft_p50_ms": ("prefill",),
    "decode_p50_ms_per_tok": ("decode",),
    "decode_tok_s": ("decode",),
    "tpot_p50_ms": ("decode",),
    "total_tok_s": ("prefill", "decode"),
    "e2e_p50_ms": ("prefill", "decode"),
}
_PHASE_COLUMNS = {
    "prefill": ("prefill_p50_ms", "prefill_p50_ci_low_ms", "prefill_p50_ci_high_ms"),
    "decode": ("decode_p50_ms_per_tok", "decode_p50_ci_low_ms", "decode_p50_ci_high_ms"),
}
HOST_NOISE = "host-noise-dominated"


def metrics_along(axis: str) -> tuple[str, ...]:
    """The metrics collapse detection compares along ``axis``: per step time is left out along batch."""
    metrics = LATENCY_METRICS + THROUGHPUT_METRICS
    if axis == "batch":
        return tuple(m for m in metrics if m != "decode_p50_ms_per_tok")
    return metrics


def _num(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key) if hasattr(row, "get") else None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v


@dataclass(frozen=True)
class Noise:
    """A metric's noise in one cell: a fraction of its value, where it came from, and whether the host dominates."""

    fraction: float  # NaN when the cell records neither replicates nor an interval
    source: str  # "replicate spread", "within-run interval" or ""
    launch_bound: bool = False

    @property
    def known(self) -> bool:
        return math.isfinite(self.fraction)


def phase_noise(row: Mapping[str, Any], phase: str) -> Noise:
    """Noise of one phase of a cell (see the module docstring)."""
    launch = row.get(f"{phase}_regime") == "launch-bound" if hasattr(row, "get") else False
    replicates = _num(row, "replicates")
    spread = _num(row, f"{phase}_replicate_spread_pct")
    if math.isfinite(replicates) and replicates > 1 and math.isfinite(spread) and spread >= 0:
        return Noise(spread / 100 / 2, "replicate spread", launch)
    p50, lo, hi = (_num(row, c) for c in _PHASE_COLUMNS[phase])
    if all(math.isfinite(v) for v in (p50, lo, hi)) and p50 > 0 and hi >= lo:
        return Noise((hi - lo) / p50 / 2, "within-run interval", launch)
    return Noise(math.nan, "", launch)


def relative_noise(row: Mapping[str, Any], metric: str) -> Noise:
    """Noise of ``metric`` in one cell; a metric of both phases takes the noisier one."""
    noises = [phase_noise(row, p) for p in METRIC_PHASES.get(metric, ())]
    known = [n for n in noises if n.known]
    launch = any(n.launch_bound for n in noises)
    if not known:
        return Noise(math.nan, "", launch)
    worst = max(known, key=lambda n: n.fraction)
    return Noise(worst.fraction, worst.source, launch)


def combined_noise(rows: list[Mapping[str, Any]], metric: str) -> Noise:
    """The noise a change between these cells must exceed: the sum of their noises (NaN if any is unknown)."""
    noises = [relative_noise(r, metric) for r in rows]
    launch = any(n.launch_bound for n in noises)
    if not noises or not all(n.known for n in noises):
        return Noise(math.nan, "", launch)
    sources = sorted({n.source for n in noises})
    return Noise(sum(n.fraction for n in noises), " / ".join(sources), launch)


def beyond_noise(a: float, b: float, noise: Noise) -> bool:
    """Whether the change from ``a`` to ``b`` is larger than ``noise`` (relative to the smaller value).

    Unknown noise: every change counts."""
    if not noise.known:
        return True
    lo = min(abs(a), abs(b))
    if lo == 0:
        return a != b
    return abs(b - a) / lo > noise.fraction


@dataclass(frozen=True)
class Saturation:
    """Where a throughput stops growing by more than the noise per doubling of the batch."""

    at: float | None  # the batch after which growth stays within noise; None when it never does
    next_at: float | None  # the next measured batch
    growth_per_doubling: float | None  # fraction, from `at` to `next_at`
    noise: Noise | None
    last: float  # the largest batch measured


def saturation(group: pd.DataFrame, metric: str = "decode_tok_s", axis: str = "batch") -> Saturation | None:
    """The saturation point of one series along the batch axis (None with fewer than two measured cells).

    The growth from one cell to a later one is per doubling of the batch, (v1 / v0) ** (1 / log2(b1 / b0)) - 1,
    and counts only beyond the two cells' noise. The saturation point is the first measured batch from which no
    later cell grows by more than the noise: a pause within the noise that is followed by growth beyond it (a
    noisy launch-bound stretch) is no saturation, nor is a dip that later cells climb out of again.
    """
    rows = []
    for _, row in group.sort_values(axis).iterrows():
        v, x = _num(row, metric), _num(row, axis)
        if row.get("status", "ok") == "ok" and math.isfinite(v) and v > 0 and math.isfinite(x) and x > 0:
            rows.append(row)
    if len(rows) < 2:
        return None

    def growth(r0, r1) -> float:
        if _num(r1, axis) <= _num(r0, axis):  # two cells at one batch (not a series): no growth between them
            return 0.0
        return (_num(r1, metric) / _num(r0, metric)) ** (1 / math.log2(_num(r1, axis) / _num(r0, axis))) - 1

    def grows(r0, r1) -> bool:
        noise = combined_noise([r0, r1], metric)
        return growth(r0, r1) > (noise.fraction if noise.known else 0.0)

    for i, r0 in enumerate(rows[:-1]):
        if not any(grows(r0, r1) for r1 in rows[i + 1:]):
            r1 = rows[i + 1]
            return Saturation(_num(r0, axis), _num(r1, axis), growth(r0, r1), combined_noise([r0, r1], metric),
                              _num(rows[-1], axis))
    return Saturation(None, None, None, None, _num(rows[-1], axis))


def _along(frame: pd.DataFrame, axis: str, factor: float) -> dict[int, list[str]]:
    """Collapse reasons per row index, comparing along one axis."""
    other = OTHER_AXIS[axis]
    keys = [k for k in SERIES_KEYS if k in frame.columns] + [other]
    reasons: dict[int, list[str]] = {}
    for _, group in frame.groupby(keys, sort=False, dropna=False):
        group = group.sort_values(axis)
        best: dict[str, tuple[float, int, Any]] = {}
        for idx, row in group.iterrows():
            if row.get("status", "ok") != "ok":
                continue
            for metric in metrics_along(axis):
                value = row.get(metric)
                if value is None or not math.isfinite(value) or value <= 0:
                    continue
                lower_better = metric in LATENCY_METRICS
                if metric in best:
                    ref, ref_at, ref_row = best[metric]
                    ratio = value / ref if lower_better else ref / value
                    noise = combined_noise([ref_row, row], metric)
                    if ratio > factor and beyond_noise(ref, value, noise):
                        word = "higher" if lower_better else "lower"
                        text = f"{metric} {ratio:.2f}x {word} than the best earlier cell ({axis}={ref_at})"
                        if noise.known:
                            text += f", noise ±{100 * noise.fraction:.0f}%"
                        if noise.launch_bound:
                            text += f", {HOST_NOISE}"
                        reasons.setdefault(idx, []).append(text)
                if metric not in best or (value < best[metric][0] if lower_better else value > best[metric][0]):
                    best[metric] = (value, int(row[axis]), row)
    return reasons


def detect(frame: pd.DataFrame, axis: str, factor: float) -> pd.DataFrame:
    """Return a copy with `flag` and `flag_detail` set. axis: 'seq_len', 'batch' or 'grid' (both)."""
    if factor <= 1:
        raise ValueError(f"collapse factor must be > 1, got {factor}")
    out = frame.copy()
    status = out["status"] if "status" in out.columns else pd.Series("ok", index=out.index)
    out["flag"] = [s if s in ("oom", "error") else "ok" for s in status]
    details = []
    for idx, s in status.items():
        if s == "oom":
            details.append("out of memory")
        elif s == "error":
            details.append(str(out.at[idx, "error"]) if "error" in out.columns else "failed")
        else:
            details.append("")
    out["flag_detail"] = details
    axes = ["seq_len", "batch"] if axis == "grid" else [axis]
    merged: dict[int, list[str]] = {}
    for a in axes:
        for idx, rs in _along(out, a, factor).items():
            merged.setdefault(idx, []).extend(rs)
    for idx, rs in merged.items():
        out.at[idx, "flag"] = "collapse"
        out.at[idx, "flag_detail"] = "; ".join(rs)
    return out[order_columns(list(out.columns))]
