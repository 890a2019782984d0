import pandas as pd
import pytest

from latency_sensitivity.analysis.collapse import combined_noise, detect, relative_noise, saturation


def frame(rows):
    base = {"model": "m", "dtype": "fp16", "backend": "eager", "status": "ok"}
    return pd.DataFrame([{**base, **r} for r in rows])


def batch_rows(decode_ms):
    rows = []
    for b, d in decode_ms.items():
        rows.append({"seq_len": 128, "batch": b, "prefill_ms_per_tok": 0.2, "prefill_tok_s": 5000.0,
                     "decode_p50_ms_per_tok": d, "decode_tok_s": b * 1000 / d, "total_tok_s": b * 100.0})
    return rows


def test_batch_sweep_is_judged_per_token_not_per_step():
    # The reference study's Table 4 decode ms/step: 26.6 at batch 1 ... 64.2 at batch 64 (2.42x) while decode
    # throughput rose 26.5x: a longer step at a larger batch is expected, not a collapse.
    df = frame(batch_rows({1: 26.586, 2: 26.943, 4: 28.164, 8: 28.746, 16: 31.288, 32: 40.461, 64: 64.221}))
    out = detect(df, "batch", 2.0)
    assert list(out["flag"]) == ["ok"] * 7
    # The same step times along seq_len (batch fixed) are a per-token latency and do collapse.
    seq = frame([dict(r, seq_len=r["batch"], batch=1, decode_tok_s=1000 / r["decode_p50_ms_per_tok"])
                 for r in batch_rows({1: 26.586, 2: 26.943, 4: 28.164, 8: 28.746, 16: 31.288, 32: 40.461,
                                      64: 64.221})])
    out = detect(seq, "seq_len", 2.0)
    assert out.loc[out["seq_len"] == 64, "flag_detail"].item() == (
        "decode_p50_ms_per_tok 2.42x higher than the best earlier cell (seq_len=1); "
        "decode_tok_s 2.42x lower than the best earlier cell (seq_len=1)")


def test_batch_throughput_drop_is_a_collapse():
    # decode throughput halves and more from batch 4 to 8: the step took 5.8x longer for 2x the tokens
    df = frame(batch_rows({1: 10.0, 2: 11.0, 4: 12.0, 8: 70.0}))
    out = detect(df, "batch", 2.0)
    assert list(out["flag"]) == ["ok", "ok", "ok", "collapse"]
    assert out.loc[3, "flag_detail"].startswith("decode_tok_s 2.92x lower than the best earlier cell (batch=4)")


def test_compares_with_best_earlier_not_previous():
    # A slow slide along seq_len: each step < 2x the previous one, but 2.6x the best.
    rows = [dict(r, seq_len=r["batch"], batch=1) for r in batch_rows({1: 10.0, 2: 16.0, 4: 26.0})]
    out = detect(frame(rows), "seq_len", 2.0)
    assert list(out["flag"]) == ["ok", "ok", "collapse"]


def _with_interval(row, phase, half_width):
    p50 = row["prefill_ms_per_tok"] * row["seq_len"] * row["batch"] if phase == "prefill" else \
        row["decode_p50_ms_per_tok"]
    key = {"prefill": ("prefill_p50_ms", "prefill_p50_ci_low_ms", "prefill_p50_ci_high_ms"),
           "decode": ("decode_p50_ms_per_tok", "decode_p50_ci_low_ms", "decode_p50_ci_high_ms")}[phase]
    return dict(row, **{key[0]: p50, key[1]: p50 * (1 - half_width), key[2]: p50 * (1 + half_width)})


def test_noise_comes_from_replicates_when_there_are_several_else_the_interval():
    row = _with_interval(batch_rows({1: 10.0})[0], "decode", 0.05)
    assert relative_noise(row, "decode_tok_s").fraction == pytest.approx(0.05)
    assert relative_noise(row, "decode_tok_s").source == "within-run interval"
    rep = dict(row, replicates=3, decode_replicate_spread_pct=30.0)
    assert relative_noise(rep, "decode_tok_s").fraction == pytest.approx(0.15)
    assert relative_noise(rep, "decode_tok_s").source == "replicate spread"
    assert relative_noise(dict(rep, replicates=1), "decode_tok_s").source == "within-run interval"
    assert not relative_noise(batch_rows({1: 10.0})[0], "decode_tok_s").known
    launch = dict(row, decode_regime="launch-bound")
    assert relative_noise(launch, "decode_tok_s").launch_bound
    assert not relative_noise(launch, "prefill_tok_s").launch_bound
    assert combined_noise([row, rep], "decode_tok_s").fraction == pytest.approx(0.20)


def test_a_collapse_must_exceed_the_noise():
    # 2.6x along seq_len, but the replicates of both cells spread over 300%: not beyond the noise
    rows = [dict(r, seq_len=r["batch"], batch=1, replicates=3, decode_replicate_spread_pct=300.0)
            for r in batch_rows({1: 10.0, 4: 26.0})]
    assert list(detect(frame(rows), "seq_len", 2.0)["flag"]) == ["ok", "ok"]
    quiet = [dict(r, decode_replicate_spread_pct=4.0) for r in rows]
    out = detect(frame(quiet), "seq_len", 2.0)
    assert list(out["flag"]) == ["ok", "collapse"]
    assert out.loc[1, "flag_detail"].startswith(
        "decode_p50_ms_per_tok 2.60x higher than the best earlier cell (seq_len=1), noise ±4%")


def test_saturation_is_where_a_doubling_stops_raising_throughput_beyond_noise():
    # decode throughput: 100, 190, 360, 370, 372 tok/s at batch 1..16, each replicate spread 10% (±5% a cell)
    rows = []
    for b, tps in {1: 100.0, 2: 190.0, 4: 360.0, 8: 370.0, 16: 372.0}.items():
        rows.append({"seq_len": 16, "batch": b, "decode_tok_s": tps, "decode_p50_ms_per_tok": b * 1000 / tps,
                     "replicates": 3, "decode_replicate_spread_pct": 10.0})
    sat = saturation(frame(rows))
    assert (sat.at, sat.next_at) == (4, 8)
    assert sat.growth_per_doubling == pytest.approx(370 / 360 - 1)
    assert sat.noise.fraction == pytest.approx(0.10)
    # tighter replicates (±0.5% a cell): +2.8% per doubling is beyond the noise, +0.5% is not
    tight = [dict(r, decode_replicate_spread_pct=1.0) for r in rows]
    assert saturation(frame(tight)).at == 8
    # still growing beyond the noise at the last cell: no saturation point
    growing = [dict(r, decode_tok_s=100.0 * r["batch"]) for r in rows]
    sat = saturation(frame(growing))
    assert sat.at is None and sat.last == 16
    # a step within the noise that is followed by growth beyond it is no saturation point
    paused = [dict(r, decode_tok_s={1: 100.0, 2: 105.0, 4: 300.0, 8: 600.0, 16: 1200.0}[r["batch"]]) for r in rows]
    assert saturation(frame(paused)).at is None
    paused[-1]["decode_tok_s"] = 610.0  # ... until the last doubling, within the noise: saturated at 8
    assert saturation(frame(paused)).at == 8
    # a dip that a later cell climbs out of, beyond the noise, is no saturation point either
    dipped = [dict(r, decode_tok_s={1: 100.0, 2: 200.0, 4: 150.0, 8: 260.0, 16: 265.0}[r["batch"]]) for r in rows]
    assert saturation(frame(dipped)).at == 8
    dipped[-2]["decode_tok_s"] = 215.0  # ... but not beyond the noise: saturated at batch 2
    assert saturation(frame(dipped)).at == 2


def test_throughput_drop_is_flagged_and_order_of_rows_does_not_matter():
    rows = [{"seq_len": s, "batch": 1, "prefill_ms_per_tok": 0.1, "prefill_tok_s": tps,
             "decode_p50_ms_per_tok": 10.0, "decode_tok_s": 100.0, "total_tok_s": 100.0}
            for s, tps in [(4096, 900.0), (128, 3000.0), (1024, 2500.0)]]
    out = detect(frame(rows), "seq_len", 2.0).set_index("seq_len")
    assert out.loc[4096, "flag"] == "collapse"
    assert out.loc[4096, "flag_detail"] == "prefill_tok_s 3.33x lower than the best earlier cell (seq_len=128)"
    assert out.loc[1024, "flag"] == "ok"


def test_failed_cells_are_flagged_not_dropped_and_not_a_baseline():
    rows = batch_rows({1: 10.0, 2: 11.0, 4: 12.0})
    rows[0] = {"seq_len": 128, "batch": 1, "status": "error", "error": "boom"}
    rows.append({"seq_len": 128, "batch": 8, "status": "oom"})
    out = detect(frame(rows), "batch", 2.0)
    assert list(out["flag"]) == ["error", "ok", "ok", "oom"]
    assert out.loc[0, "flag_detail"] == "boom" and out.loc[3, "flag_detail"] == "out of memory"
    assert len(out) == 4


def test_grid_checks_both_axes_and_series_are_separate():
    rows = []
    for s in (128, 256):
        for b in (1, 2):
            d = 10.0 if (s, b) != (256, 2) else 25.0
            rows.append({"seq_len": s, "batch": b, "decode_p50_ms_per_tok": d})
    other = [dict(r, model="other", decode_p50_ms_per_tok=1.0) for r in rows]
    out = detect(frame(rows + other), "grid", 2.0)
    flagged = out[out["flag"] == "collapse"]
    assert list(zip(flagged["model"], flagged["seq_len"], flagged["batch"])) == [("m", 256, 2)]
    detail = flagged["flag_detail"].item()
    # along seq_len the step time is per token; along batch it is per step and not compared
    assert "(seq_len=128)" in detail and "(batch=1)" not in detail


def test_factor_must_exceed_one():
    with pytest.raises(ValueError):
        detect(frame(batch_rows({1: 1.0})), "batch", 1.0)
