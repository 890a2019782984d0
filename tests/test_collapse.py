import pandas as pd
import pytest

from latency_sensitivity.collapse import detect


def frame(rows):
    base = {"model": "m", "dtype": "fp16", "backend": "eager", "status": "ok"}
    return pd.DataFrame([{**base, **r} for r in rows])


def batch_rows(decode_ms):
    rows = []
    for b, d in decode_ms.items():
        rows.append({"seq_len": 128, "batch": b, "prefill_ms_per_tok": 0.2, "prefill_tok_s": 5000.0,
                     "decode_p50_ms_per_tok": d, "decode_tok_s": b * 1000 / d, "total_tok_s": b * 100.0})
    return rows


def test_reference_batch_sweep_flags_only_batch_64():
    # The reference study's Table 4 decode ms/step: 26.6 at batch 1 ... 64.2 at batch 64 (2.42x).
    df = frame(batch_rows({1: 26.586, 2: 26.943, 4: 28.164, 8: 28.746, 16: 31.288, 32: 40.461, 64: 64.221}))
    out = detect(df, "batch", 2.0)
    assert list(out["flag"]) == ["ok"] * 6 + ["collapse"]
    detail = out.loc[out["batch"] == 64, "flag_detail"].item()
    assert detail == "decode_p50_ms_per_tok 2.42x higher than the best earlier cell (batch=1)"


def test_compares_with_best_earlier_not_previous():
    # A slow slide: each step < 2x the previous one, but 2.6x the best.
    df = frame(batch_rows({1: 10.0, 2: 16.0, 4: 26.0}))
    out = detect(df, "batch", 2.0)
    assert list(out["flag"]) == ["ok", "ok", "collapse"]


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
    assert "(seq_len=128)" in detail and "(batch=1)" in detail


def test_factor_must_exceed_one():
    with pytest.raises(ValueError):
        detect(frame(batch_rows({1: 1.0})), "batch", 1.0)
