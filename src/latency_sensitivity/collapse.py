"""Collapse detection along a sweep's axis.

A cell collapses when one of its per-token latencies is more than `factor` times the best (lowest) value of
the earlier cells along the axis, or one of its throughputs is less than 1/`factor` of the best (highest)
earlier value. "Earlier" means smaller along the swept axis with everything else held fixed (same model,
dtype, backend and the same value of the other axis). Comparing with the best earlier cell, not only the
previous one, catches a slow slide as well as a cliff, and works in batch sweeps, where the reference tool's
previous-cell-at-the-same-batch comparison could never fire.
"""

from __future__ import annotations

import math

import pandas as pd

from .columns import LATENCY_METRICS, THROUGHPUT_METRICS, order_columns

SERIES_KEYS = ("model", "dtype", "backend")
AXES = {"seq_len": "batch", "batch": "seq_len"}


def _along(frame: pd.DataFrame, axis: str, factor: float) -> dict[int, list[str]]:
    """Collapse reasons per row index, comparing along one axis."""
    other = AXES[axis]
    keys = [k for k in SERIES_KEYS if k in frame.columns] + [other]
    reasons: dict[int, list[str]] = {}
    for _, group in frame.groupby(keys, sort=False, dropna=False):
        group = group.sort_values(axis)
        best: dict[str, tuple[float, int]] = {}
        for idx, row in group.iterrows():
            if row.get("status", "ok") != "ok":
                continue
            for metric in LATENCY_METRICS + THROUGHPUT_METRICS:
                value = row.get(metric)
                if value is None or not math.isfinite(value) or value <= 0:
                    continue
                lower_better = metric in LATENCY_METRICS
                if metric in best:
                    ref, ref_at = best[metric]
                    ratio = value / ref if lower_better else ref / value
                    if ratio > factor:
                        word = "higher" if lower_better else "lower"
                        reasons.setdefault(idx, []).append(
                            f"{metric} {ratio:.2f}x {word} than the best earlier cell ({axis}={ref_at})"
                        )
                if metric not in best or (value < best[metric][0] if lower_better else value > best[metric][0]):
                    best[metric] = (value, int(row[axis]))
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
