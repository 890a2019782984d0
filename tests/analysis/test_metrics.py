import math

import pytest

from latency_sensitivity.analysis import metrics


def test_reference_definitions_on_known_samples():
    # batch 2, seq 128: prefill reps 40, 46, 50 ms -> p50 46; decode steps median 27.
    m = metrics.latency_metrics(
        prefill_ms=[50.0, 40.0, 46.0],
        ttft_ms=[51.0, 41.0, 47.0],
        decode_step_ms=[[26.0, 27.0, 28.0], [27.0, 27.0, 29.0], [25.0, 27.0, 30.0]],
        e2e_ms=[130.0, 120.0, 128.0],
        batch=2,
        seq_len=128,
        gen_tokens=4,
    )
    assert m["prefill_p50_ms"] == 46.0
    assert m["prefill_ms_per_tok"] == pytest.approx(46.0 / 256)
    assert m["prefill_tok_s"] == pytest.approx(256 * 1000 / 46.0)
    assert m["decode_p50_ms_per_tok"] == 27.0
    assert m["decode_tok_s"] == pytest.approx(2 * 1000 / 27.0)
    assert m["total_tok_s"] == pytest.approx(2 * (128 + 4) * 1000 / 128.0)
    assert m["ttft_p50_ms"] == 47.0
    # TPOT: median of the per-rep means (27, 27.667, 27.333)
    assert m["tpot_p50_ms"] == pytest.approx(82.0 / 3)
    assert m["prefill_p10_ms"] == pytest.approx(41.2)
    assert m["prefill_p90_ms"] == pytest.approx(49.2)
    assert m["prefill_iqr_ms"] == pytest.approx(48.0 - 43.0)
    assert m["prefill_p50_ci_low_ms"] <= 46.0 <= m["prefill_p50_ci_high_ms"]
    assert 40.0 <= m["prefill_p50_ci_low_ms"] and m["prefill_p50_ci_high_ms"] <= 50.0


def test_reference_study_row_reproduces():
    # Table 3/4 of the reference study, batch 2: 46.31 ms prefill, 26.943 ms/step decode.
    m = metrics.latency_metrics([46.31], [46.31], [[26.943]], [1.0], batch=2, seq_len=128, gen_tokens=32)
    assert m["prefill_ms_per_tok"] == pytest.approx(0.180898, rel=1e-4)
    assert m["prefill_tok_s"] == pytest.approx(5528.0, rel=1e-3)
    assert m["decode_tok_s"] == pytest.approx(74.23, rel=1e-3)


def test_bootstrap_interval_is_deterministic_and_degenerate_cases():
    a = metrics.bootstrap_median_ci([1, 2, 3, 4, 100], seed=3)
    assert a == metrics.bootstrap_median_ci([1, 2, 3, 4, 100], seed=3)
    assert a[0] >= 1 and a[1] <= 100 and a[0] <= 3 <= a[1]
    assert metrics.bootstrap_median_ci([5.0]) == (5.0, 5.0)
    assert all(math.isnan(x) for x in metrics.bootstrap_median_ci([]))


def test_empty_samples_give_nan_not_errors():
    m = metrics.latency_metrics([], [], [], [], batch=1, seq_len=8, gen_tokens=2)
    assert math.isnan(m["prefill_p50_ms"]) and math.isnan(m["prefill_tok_s"]) and math.isnan(m["decode_tok_s"])


def test_covered_length_counts_overlaps_once():
    assert metrics.covered_length([]) == 0
    assert metrics.covered_length([(0, 2), (5, 6)]) == 3  # gaps are not counted
    # kernels that overlap (programmatic dependent launch), one inside another, and touching
    assert metrics.covered_length([(4, 7), (0, 2), (1, 3), (4, 5), (7, 8)]) == 3 + 4
