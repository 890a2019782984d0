"""Per-cell metrics from raw per-rep samples. Pure functions; column meanings are in columns.py."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _arr(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(list(values), dtype=float)
    return a[np.isfinite(a)]


def pct(values: Sequence[float], q: float) -> float:
    """q-th percentile (linear interpolation, numpy's default); NaN for no samples."""
    a = _arr(values)
    return float(np.percentile(a, q)) if a.size else math.nan


def iqr(values: Sequence[float]) -> float:
    return pct(values, 75) - pct(values, 25)


def covered_length(intervals) -> float:
    """Length of the union of (start, end) intervals: time covered by at least one, overlaps counted once."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def bootstrap_median_ci(
    values: Sequence[float], n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median. A single sample gives a zero-width interval."""
    a = _arr(values)
    if a.size == 0:
        return (math.nan, math.nan)
    if a.size == 1:
        return (float(a[0]), float(a[0]))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    medians = np.median(a[idx], axis=1)
    lo = (1 - confidence) / 2 * 100
    return (float(np.percentile(medians, lo)), float(np.percentile(medians, 100 - lo)))


def latency_metrics(
    prefill_ms: Sequence[float],
    ttft_ms: Sequence[float],
    decode_step_ms: Sequence[Sequence[float]],
    e2e_ms: Sequence[float],
    *,
    batch: int,
    seq_len: int,
    gen_tokens: int,
) -> dict[str, float]:
    """All latency and throughput columns of one cell.

    prefill_ms, ttft_ms, e2e_ms: one value per measured rep. decode_step_ms: per rep, the time of each of
    its gen_tokens - 1 decode steps.
    """
    steps = [t for rep in decode_step_ms for t in rep]
    tpot_per_rep = [float(np.mean(rep)) for rep in decode_step_ms if len(rep)]
    prefill_p50 = pct(prefill_ms, 50)
    decode_p50 = pct(steps, 50)
    e2e_p50 = pct(e2e_ms, 50)
    prompt_tokens = batch * seq_len
    p_lo, p_hi = bootstrap_median_ci(prefill_ms)
    d_lo, d_hi = bootstrap_median_ci(steps)

    def ratio(num: float, den: float) -> float:
        return num / den if den and math.isfinite(den) and den > 0 else math.nan

    return {
        "prefill_p50_ms": prefill_p50,
        "prefill_ms_per_tok": ratio(prefill_p50, prompt_tokens),
        "prefill_tok_s": ratio(prompt_tokens * 1000.0, prefill_p50),
        "decode_p50_ms_per_tok": decode_p50,
        "decode_tok_s": ratio(batch * 1000.0, decode_p50),
        "total_tok_s": ratio(batch * (seq_len + gen_tokens) * 1000.0, e2e_p50),
        "ttft_p50_ms": pct(ttft_ms, 50),
        "ttft_p90_ms": pct(ttft_ms, 90),
        "tpot_p50_ms": pct(tpot_per_rep, 50),
        "e2e_p50_ms": e2e_p50,
        "prefill_p10_ms": pct(prefill_ms, 10),
        "prefill_p90_ms": pct(prefill_ms, 90),
        "prefill_iqr_ms": iqr(prefill_ms),
        "prefill_p50_ci_low_ms": p_lo,
        "prefill_p50_ci_high_ms": p_hi,
        "decode_p10_ms_per_tok": pct(steps, 10),
        "decode_p90_ms_per_tok": pct(steps, 90),
        "decode_iqr_ms_per_tok": iqr(steps),
        "decode_p50_ci_low_ms": d_lo,
        "decode_p50_ci_high_ms": d_hi,
    }
