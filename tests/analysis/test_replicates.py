import math

import pytest

from latency_sensitivity.analysis.replicates import combine, spread_pct


def replicate(k, prefill, decode, status="ok", **extra):
    cell = {"model": "tiny", "dtype": "fp32", "backend": "eager", "device": "cpu", "seq_len": 16, "batch": 4,
            "gen_tokens": 3, "warmup": 0, "reps": 2, "replicate": k}
    metrics = {"prefill_p50_ms": prefill, "decode_p50_ms_per_tok": decode, "e2e_p50_ms": prefill + 2 * decode,
               "decode_tok_s": 4000.0 / decode if decode else math.nan, "peak_rss_mb": 100.0 + k, "decode_attention": "sdpa",
               "peak_rss_covers_measured_reps_only": True, **extra}
    result = {"cell": cell, "status": status, "metrics": metrics if status == "ok" else {},
              "environment": {"hostname": "h"}, "samples": {"prefill_ms": [prefill]}, "telemetry": {}}
    if status != "ok":
        result["error"] = {"type": "RuntimeError", "message": f"{status} in rep 0"}
    return result


def test_median_of_medians_and_rates_recomputed():
    out = combine([replicate(1, 10.0, 2.0), replicate(2, 12.0, 4.0), replicate(3, 11.0, 3.0)])
    m = out["metrics"]
    assert out["status"] == "ok" and "replicate" not in out["cell"]
    assert m["prefill_p50_ms"] == 11.0 and m["decode_p50_ms_per_tok"] == 3.0
    assert m["decode_tok_s"] == pytest.approx(4 * 1000 / 3.0)  # from the median, not the median of rates
    assert m["prefill_tok_s"] == pytest.approx(64 * 1000 / 11.0)
    assert m["replicates"] == 3
    assert m["decode_replicate_spread_pct"] == pytest.approx((4 - 2) / 3 * 100)
    assert m["prefill_replicate_spread_pct"] == pytest.approx((12 - 10) / 11 * 100)
    assert (m["decode_replicate_min_ms"], m["decode_replicate_max_ms"]) == (2.0, 4.0)
    assert m["peak_rss_mb"] == 102.0 and m["decode_attention"] == "sdpa"
    assert m["peak_rss_covers_measured_reps_only"] is True
    assert [r["decode_p50_ms_per_tok"] for r in out["replicates"]] == [2.0, 4.0, 3.0]
    assert out["samples"] == {}  # the raw values stay in the replicate files


def test_one_replicate_is_the_cell_with_no_spread():
    out = combine([replicate(1, 10.0, 2.0)])
    assert out["metrics"]["prefill_p50_ms"] == 10.0 and out["metrics"]["replicates"] == 1
    assert math.isnan(out["metrics"]["decode_replicate_spread_pct"])


def test_a_failed_replicate_fails_the_cell_and_is_named():
    out = combine([replicate(1, 10.0, 2.0), replicate(2, 0, 0, status="oom"), replicate(3, 0, 0, status="error")])
    assert out["status"] == "error"  # an error outranks an OOM
    assert out["error"]["message"].startswith("replicate 3: ")
    out = combine([replicate(1, 10.0, 2.0), replicate(2, 0, 0, status="oom")])
    assert out["status"] == "oom" and out["error"]["message"].startswith("replicate 2: ")


def test_replicates_of_different_cells_are_refused():
    other = replicate(2, 10.0, 2.0)
    other["cell"]["reps"] = 5
    with pytest.raises(ValueError, match="reps"):
        combine([replicate(1, 10.0, 2.0), other])
    with pytest.raises(ValueError):
        combine([])


def test_spread_pct():
    assert spread_pct([1.0, 1.0]) == 0.0
    assert spread_pct([9.0, 10.0, 11.0]) == pytest.approx(20.0)
    assert math.isnan(spread_pct([5.0])) and math.isnan(spread_pct([1.0, math.nan]))


def test_cost_is_summed_over_replicates():
    a, b = replicate(1, 10.0, 2.0, job_s=12.0, measured_s=2.0), replicate(2, 11.0, 2.0, job_s=14.0, measured_s=3.0)
    m = combine([a, b])["metrics"]
    assert m["job_s_total"] == 26.0 and m["measured_s_total"] == 5.0 and m["job_s"] == 13.0
    a["metrics"]["backend_setup_s"], b["metrics"]["backend_setup_s"] = 40.0, 1.0  # compiled, then from the cache
    assert combine([a, b])["metrics"]["backend_setup_s_total"] == 41.0
    a["metrics"]["kernel_time_s"], b["metrics"]["kernel_time_s"] = 0.5, 0.75
    m = combine([a, b])["metrics"]
    assert m["kernel_time_s_total"] == 1.25 and math.isnan(m["warmup_s_total"])  # a part no replicate recorded
