"""One cell's value from its replicates: the same cell measured in K separate processes.

A launch-bound cell can move by tens of percent between processes while its within-run bootstrap interval
stays narrow, so the within-run interval alone understates how well a number repeats. Each replicate is a
runner result of its own (``results/cells/<model>/<dtype>/<backend>/seq<S>_batch<B>/r<k>.json``); this module
combines them into the cell's result, in the runner's layout, so that merge and report read a combined cell
as they read a single one:

- a latency is the median of the replicates' medians, and the rates derived from it are recomputed from that
  median (so ``decode_tok_s`` stays ``batch x 1000 / decode_p50_ms_per_tok``);
- every other numeric metric is the median across replicates;
- per phase, the spread between replicates, ``(max - min) / median x 100``, and the lowest and highest
  replicate median;
- the raw values stay in the replicate files; the combined result lists each replicate's headline numbers.

A cell is ``ok`` only when every replicate is; otherwise it takes the first replicate's error (an ``error``
before an ``oom``), with the replicate named.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

# The per-phase median each spread is taken of, and the columns derived from that median.
PHASE_MEDIANS = {"prefill": "prefill_p50_ms", "decode": "decode_p50_ms_per_tok"}
# What each replicate keeps in the combined result (its headline numbers).
REPLICATE_SUMMARY = ("prefill_p50_ms", "decode_p50_ms_per_tok", "ttft_p50_ms", "e2e_p50_ms",
                     "prefill_gpu_busy", "decode_gpu_busy")


# What a cell's jobs cost, summed over its replicates as `<key>_total` (the report's cost line reads them).
COST_PARTS = ("job_s", "measured_s", "worker_start_s", "backend_setup_s", "backend_compile_s", "import_s",
              "startup_s", "warmup_s", "kernel_time_s", "tokenization_s")


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]


def spread_pct(values: Sequence[Any]) -> float:
    """(max - min) / median x 100 of the finite values; NaN with fewer than two."""
    a = _finite(values)
    if len(a) < 2:
        return math.nan
    mid = statistics.median(a)
    return (max(a) - min(a)) / mid * 100.0 if mid > 0 else math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if den and math.isfinite(den) and den > 0 else math.nan


def derived_rates(m: dict, batch: int, seq_len: int, gen_tokens: int) -> dict:
    """The rates that follow from the medians (the same formulas as metrics.latency_metrics)."""
    prompt_tokens = batch * seq_len
    prefill, decode, e2e = (m.get(k, math.nan) for k in ("prefill_p50_ms", "decode_p50_ms_per_tok", "e2e_p50_ms"))
    return {
        "prefill_ms_per_tok": _ratio(prefill, prompt_tokens),
        "prefill_tok_s": _ratio(prompt_tokens * 1000.0, prefill),
        "decode_tok_s": _ratio(batch * 1000.0, decode),
        "total_tok_s": _ratio(batch * (seq_len + gen_tokens) * 1000.0, e2e),
    }


def _failure(replicates: Sequence[dict]) -> tuple[str, dict] | None:
    """The status and error of the first failed replicate (errors before OOMs), the replicate named."""
    for status in ("error", "oom"):
        for index, result in enumerate(replicates, start=1):
            if result.get("status") == status:
                error = dict(result.get("error") or {})
                error["message"] = f"replicate {replicate_index(result, index)}: {error.get('message', status)}"
                return status, error
    return None


def replicate_index(result: dict, default: int) -> int:
    return int(result.get("cell", {}).get("replicate", default))


def combine(replicates: Sequence[dict]) -> dict:
    """The cell's result from its replicates' results (see the module docstring)."""
    if not replicates:
        raise ValueError("a cell needs at least one replicate")
    first = replicates[0]
    cell = {k: v for k, v in first["cell"].items() if k != "replicate"}
    for other in replicates[1:]:
        theirs = {k: v for k, v in other["cell"].items() if k != "replicate"}
        if theirs != cell:
            changed = sorted(k for k in set(cell) | set(theirs) if cell.get(k) != theirs.get(k))
            raise ValueError(f"replicates of one cell differ in {', '.join(changed)}")
    out = {k: v for k, v in first.items() if k not in ("cell", "metrics", "samples", "telemetry")}
    out["cell"] = cell
    out["samples"] = {}
    out["telemetry"] = {}
    out["replicates"] = [
        {"replicate": replicate_index(r, i), "status": r.get("status"),
         "hostname": r.get("environment", {}).get("hostname"),
         **{k: r.get("metrics", {}).get(k) for k in REPLICATE_SUMMARY if k in r.get("metrics", {})}}
        for i, r in enumerate(replicates, start=1)
    ]
    failure = _failure(replicates)
    if failure is not None:
        out["status"], out["error"] = failure
        out["metrics"] = {"replicates": len(replicates)}
        return out

    metrics = [r.get("metrics", {}) for r in replicates]
    combined: dict = {}
    for key in dict.fromkeys(k for m in metrics for k in m):
        values = [m.get(key) for m in metrics]
        numbers = _finite(values)
        if values and all(isinstance(v, bool) for v in values):
            combined[key] = all(values)
        elif numbers and len(numbers) == sum(v is not None for v in values):
            combined[key] = statistics.median(numbers)
        elif not numbers:
            texts = list(dict.fromkeys(str(v) for v in values if v is not None and not isinstance(v, float)))
            if texts:
                combined[key] = texts[0] if len(texts) == 1 else " | ".join(texts)
            elif any(isinstance(v, float) for v in values):
                combined[key] = math.nan
        else:  # some replicates have a number, others none: the median of those that have one
            combined[key] = statistics.median(numbers)
    combined.update(derived_rates(combined, cell["batch"], cell["seq_len"], cell["gen_tokens"]))
    combined["replicates"] = len(replicates)
    for key in COST_PARTS:  # the cost, all replicates together
        values = _finite(m.get(key) for m in metrics)
        combined[f"{key}_total"] = sum(values) if values else math.nan
    for phase, key in PHASE_MEDIANS.items():
        values = _finite(m.get(key) for m in metrics)
        combined[f"{phase}_replicate_spread_pct"] = spread_pct(values)
        combined[f"{phase}_replicate_min_ms"] = min(values) if values else math.nan
        combined[f"{phase}_replicate_max_ms"] = max(values) if values else math.nan
    out["status"], out["error"] = "ok", None
    out["metrics"] = combined
    return out
