"""Tests of the markdown report: findings, tables, failures, setup and the atomic write.

The fixtures are the reference study's Tables 1-4 (Qwen2.5-3B fp16 on an RTX 5070), so the expected
findings can be checked by hand against the published numbers.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from latency_sensitivity.report import document as report
from latency_sensitivity.report import compare
from latency_sensitivity.report import findings
from latency_sensitivity.report import series
from latency_sensitivity.report import tables
from latency_sensitivity.report.series import SweepInput
from latency_sensitivity.report.document import build_report, write_report
from latency_sensitivity.report.tables import decode_table, grid_table, prefill_table
from latency_sensitivity.report.format import direction, format_change, format_number, format_relative, format_sig
from latency_sensitivity.report.findings import oom_finding, series_findings, sweep_findings, trend_finding

# Tables 1 and 2 of the reference study: batch 1, seq_len 128 .. 4096.
SEQ_TABLE = {
    "seq_len": [128, 256, 512, 1024, 2048, 3072, 4096],
    "batch": [1] * 7,
    "prefill_p50_ms": [34.79, 48.59, 97.41, 248.47, 602.25, 1128.15, 1756.57],
    "prefill_ms_per_tok": [0.271821, 0.189817, 0.190260, 0.242645, 0.294068, 0.367237, 0.428849],
    "prefill_tok_s": [3678.9, 5268.2, 5256.0, 4121.2, 3400.6, 2723.0, 2331.8],
    "decode_p50_ms_per_tok": [26.119, 26.107, 26.433, 26.997, 29.386, 32.294, 36.124],
    "decode_tok_s": [38.29, 38.30, 37.83, 37.04, 34.03, 30.97, 27.68],
    "total_tok_s": [183.78, 325.79, 576.71, 949.31, 1348.36, 1435.99, 1417.33],
    "vram_reserved_mb": [5974.0, 6054.0, 6212.0, 6538.0, 7412.0, 8880.0, 12116.0],
    "flag": ["ok"] * 7,
}

# Tables 3 and 4: seq_len 128, batch 1 .. 64.
BATCH_TABLE = {
    "seq_len": [128] * 7,
    "batch": [1, 2, 4, 8, 16, 32, 64],
    "prefill_p50_ms": [34.18, 46.31, 84.44, 188.99, 361.28, 750.95, 1547.56],
    "prefill_ms_per_tok": [0.267005, 0.180888, 0.164931, 0.184556, 0.176408, 0.183337, 0.188911],
    "prefill_tok_s": [3745.2, 5528.3, 6063.1, 5418.4, 5668.7, 5454.4, 5293.5],
    "decode_p50_ms_per_tok": [26.586, 26.943, 28.164, 28.746, 31.288, 40.461, 64.221],
    "decode_tok_s": [37.61, 74.23, 142.03, 278.30, 511.38, 790.89, 996.56],
    "total_tok_s": [180.81, 352.23, 649.29, 1154.35, 1878.90, 2502.82, 2842.37],
    "vram_reserved_mb": [5974.0, 6054.0, 6216.0, 6538.0, 7154.0, 8342.0, 10716.0],
    "flag": ["ok"] * 7,
}

METRICS = ["prefill_p50_ms", "prefill_ms_per_tok", "prefill_tok_s", "decode_p50_ms_per_tok", "decode_tok_s",
           "total_tok_s", "vram_reserved_mb"]
OOM_TEXT = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
COLLAPSE_DETAIL = "decode_p50_ms_per_tok 2.41x the best earlier cell (batch=8)"


def seq_frame() -> pd.DataFrame:
    return pd.DataFrame(SEQ_TABLE)


def batch_frame() -> pd.DataFrame:
    return pd.DataFrame(BATCH_TABLE)


def full_batch_frame() -> pd.DataFrame:
    """Table 3-4 with every optional column, a collapse at batch 64 and OOM at batch 128 and 256."""
    f = batch_frame()
    f["model"] = "qwen25_3b"
    f["dtype"] = "fp16"
    f["backend"] = "eager"
    f["device"] = "cuda"
    f["status"] = "ok"
    f["flag_detail"] = ""
    f["error"] = ""
    f["ttft_p50_ms"] = f["prefill_p50_ms"] + 0.5
    f["tpot_p50_ms"] = f["decode_p50_ms_per_tok"] + 0.1
    f["peak_rss_mb"] = 2048.0
    f["prefill_p50_ci_low_ms"] = f["prefill_p50_ms"] * 0.99
    f["prefill_p50_ci_high_ms"] = f["prefill_p50_ms"] * 1.01
    f["decode_p50_ci_low_ms"] = f["decode_p50_ms_per_tok"] * 0.99
    f["decode_p50_ci_high_ms"] = f["decode_p50_ms_per_tok"] * 1.01
    # batch 64: decode interval 12% of the median, and flagged as a collapse
    f.loc[6, "decode_p50_ci_low_ms"] = 64.221 * 0.94
    f.loc[6, "decode_p50_ci_high_ms"] = 64.221 * 1.06
    f.loc[6, "flag"] = "collapse"
    f.loc[6, "flag_detail"] = COLLAPSE_DETAIL
    oom = {c: np.nan for c in f.columns}
    oom.update(model="qwen25_3b", dtype="fp16", backend="eager", device="cuda", seq_len=128, status="oom",
               flag="oom", flag_detail="", peak_rss_mb=np.nan)
    rows = [dict(oom, batch=128, error=OOM_TEXT), dict(oom, batch=256, error=OOM_TEXT)]
    return pd.concat([f, pd.DataFrame(rows)], ignore_index=True)


def table_lines(table: str) -> list[str]:
    return table.splitlines()


# ---------------------------------------------------------------------------------------------- formatting


def test_format_change_percent_and_factor():
    assert format_change(0.271821, 0.428849) == "0.272 → 0.429 (+58%)"
    assert format_change(26.119, 36.124) == "26.1 → 36.1 (+38%)"
    assert format_change(37.61, 996.56) == "37.6 → 996.6 (26.5x)"
    assert format_change(26.586, 64.221) == "26.6 → 64.2 (2.4x)"
    assert format_change(5974.0, 10716.0, "MiB") == "5974 → 10716 MiB (+79%)"
    assert format_change(0.267005, 0.188911) == "0.267 → 0.189 (-29%)"
    assert format_change(996.56, 37.61) == "996.6 → 37.6 (26.5x lower)"
    assert format_change(10.0, 10.0) == "10.0 → 10.0 (+0%)"


def test_format_change_degenerate():
    assert format_relative(float("nan"), 1.0) == "n/a"
    assert format_relative(0.0, 5.0) == "from 0"
    assert format_relative(3.0, 300.0) == "100x"
    assert format_number(float("nan")) == "n/a"
    assert format_number(0.19026) == "0.190"  # trailing zero kept
    assert format_number(1435.99) == "1436"
    assert format_sig(0.164931, 4) == "0.1649"
    assert format_sig(26.119, 4) == "26.12"


@pytest.mark.parametrize(
    ("a", "b", "word"),
    [(100, 104.9, "stays flat"), (100, 95.1, "stays flat"), (100, 105.1, "rises"), (100, 94.9, "falls"),
     (0, 0, "stays flat"), (0, 1, "rises")],
)
def test_direction_threshold(a, b, word):
    assert direction(a, b) == word


# ---------------------------------------------------------------------------------------------- findings


def test_seq_sweep_findings_reference_numbers():
    assert sweep_findings(seq_frame(), "seq_len") == [
        "prefill p50 rises 34.8 → 1757 ms (50.5x) from seq_len 128 to 4096, while prompt tokens per batch "
        "grow 32.0x",
        "prefill ms/token rises 0.272 → 0.429 (+58%) from seq_len 128 to 4096; range 0.190–0.429, "
        "lowest at seq_len 256",
        "decode ms/step rises 26.1 → 36.1 (+38%) from seq_len 128 to 4096",
        "total tok/s peaks at 1436 at seq_len 3072; at seq_len 4096 it is 1417 (-1%)",
        "memory (VRAM reserved) grows 5974 → 12116 MiB (2.0x) from seq_len 128 to 4096; "
        "largest step +3236 MiB, from seq_len 3072 to 4096",
    ]


def test_batch_sweep_findings_reference_numbers():
    findings = sweep_findings(batch_frame(), "batch")
    assert ("decode tok/s scales 37.6 → 996.6 (26.5x) from batch 1 to 64 while decode ms/step rises "
            "26.6 → 64.2 (2.4x)") in findings
    assert ("prefill ms/token falls 0.267 → 0.189 (-29%) from batch 1 to 64; range 0.165–0.267, "
            "lowest at batch 4") in findings
    assert ("memory (VRAM reserved) grows 5974 → 10716 MiB (+79%) from batch 1 to 64; "
            "largest step +2374 MiB, from batch 32 to 64") in findings
    assert "total tok/s is highest at the last measured cell: 2842 at batch 64 (+14% over batch 32)" in findings
    # no failures, collapses or intervals: nothing about them is said
    assert not any("collapse" in f or "memory from" in f or "noisy" in f for f in findings)


def test_direction_words_follow_the_numbers():
    # same numbers, reversed along the axis: every word must flip
    f = seq_frame()
    for c in METRICS:
        f[c] = f[c].to_numpy()[::-1]
    findings = series_findings(f, "seq_len")
    assert "decode ms/step falls 36.1 → 26.1 (-28%) from seq_len 128 to 4096" in findings
    assert any(s.startswith("prefill ms/token falls 0.429 → 0.272 (-37%)") for s in findings)
    assert any(s.startswith("memory (VRAM reserved) shrinks 12116 → 5974 MiB (2.0x lower)") for s in findings)
    assert any(s.startswith("total tok/s peaks at 1436 at seq_len 256") for s in findings)


def test_flat_wording_within_tolerance():
    f = seq_frame().iloc[:3]  # decode 26.119 -> 26.433: +1%
    assert trend_finding(f, "seq_len", "decode_p50_ms_per_tok") == (
        "decode ms/step stays flat (within ±5%): 26.1 → 26.4 (+1%) from seq_len 128 to 512"
    )


def test_unsorted_input_is_ordered_along_the_axis():
    f = seq_frame().sample(frac=1.0, random_state=3)
    assert sweep_findings(f, "seq_len") == sweep_findings(seq_frame(), "seq_len")


def test_collapse_oom_and_noise_findings():
    findings = sweep_findings(full_batch_frame(), "batch")
    assert f"first collapse at batch 64: {COLLAPSE_DETAIL}" in findings
    assert "largest batch that fit: 64; out of memory from batch 128 on" in findings
    assert ("noisy (bootstrap 95% interval wider than 10% of the median): decode at batch 64 (12%)"
            in findings)
    # failed cells do not enter the trends: the scaling still ends at batch 64
    assert any(s.startswith("decode tok/s scales 37.6 → 996.6 (26.5x) from batch 1 to 64") for s in findings)


def test_oom_not_contiguous_is_listed():
    f = full_batch_frame()
    f.loc[f["batch"] == 256, ["status", "flag"]] = "ok"
    f.loc[f["batch"] == 256, ["decode_tok_s", "decode_p50_ms_per_tok"]] = [1100.0, 232.0]
    assert oom_finding(f, "batch") == "largest batch that fit: 256; out of memory at batch 128"


def test_oom_read_from_flag_when_status_missing():
    f = full_batch_frame().drop(columns=["status"])
    assert oom_finding(f, "batch") == "largest batch that fit: 64; out of memory from batch 128 on"


def test_status_wins_over_a_blank_flag():
    f = full_batch_frame()
    f.loc[f["status"] == "oom", "flag"] = ""
    assert oom_finding(f, "batch") == "largest batch that fit: 64; out of memory from batch 128 on"
    assert "| 128 | OOM [1] | OOM | OOM | OOM | OOM |" in prefill_table(f, "batch").splitlines()


def test_error_cell_finding():
    f = batch_frame()
    f["status"] = "ok"
    f["error"] = ""
    f.loc[3, ["status", "flag", "error"]] = ["error", "error", "RuntimeError: boom"]
    f.loc[3, METRICS] = np.nan
    findings = sweep_findings(f, "batch")
    assert "1 cell failed with an error: batch 8 (see Collapse and failures)" in findings


def test_too_few_cells_gives_no_trend():
    f = seq_frame().iloc[:1]
    assert sweep_findings(f, "seq_len") == []
    with pytest.raises(ValueError):
        sweep_findings(f, "depth")


# ---------------------------------------------------------------------------------------------- tables


def test_prefill_and_decode_table_rows():
    pre = table_lines(prefill_table(seq_frame(), "seq_len"))
    assert pre[0] == "| seq_len | prefill p50 (ms) | prefill (ms/token) | prefill (tok/s) | VRAM reserved (MiB) |"
    assert pre[2] == "| 128 | 34.79 | 0.2718 | 3678.9 | 5974 |"
    assert pre[-1] == "| 4096 | 1756.57 | 0.4288 | 2331.8 | 12116 |"
    dec = table_lines(decode_table(batch_frame(), "batch"))
    assert dec[0] == "| batch | decode p50 (ms/step) | decode (tok/s) | total (tok/s) | flag |"
    assert dec[2] == "| 1 | 26.59 | 37.6 | 180.8 | ok |"
    assert dec[-1] == "| 64 | 64.22 | 996.6 | 2842.4 | ok |"


def test_optional_columns_add_ttft_and_tpot():
    f = full_batch_frame()
    pre = table_lines(prefill_table(f, "batch"))
    assert pre[0].endswith("| VRAM reserved (MiB) | TTFT p50 (ms) |")
    assert pre[2] == "| 1 | 34.18 | 0.2670 | 3745.2 | 5974 | 34.68 |"
    dec = table_lines(decode_table(f, "batch"))
    assert dec[0] == "| batch | decode p50 (ms/step) | decode (tok/s) | total (tok/s) | TPOT p50 (ms) | flag |"
    assert dec[2] == "| 1 | 26.59 | 37.6 | 180.8 | 26.69 | ok |"


def test_oom_and_collapse_rendering_with_notes():
    text = build_report([SweepInput("batch_sweep", "batch", full_batch_frame(), [])], [], {})
    lines = text.splitlines()
    # notes numbered as met: the OOM text (shared by both OOM cells) in the prefill table, then the collapse
    assert "| 128 | OOM [1] | OOM | OOM | OOM | OOM |" in lines
    assert "| 256 | OOM [1] | OOM | OOM | OOM | OOM |" in lines
    assert "| 64 | 64.22 | 996.6 | 2842.4 | 64.32 | collapse [2] |" in lines
    assert "| 128 | OOM [1] | OOM | OOM | OOM | oom [1] |" in lines
    assert f"1. batch 128, 256: OOM: {OOM_TEXT}" in lines
    assert f"2. batch 64: collapse: {COLLAPSE_DETAIL}" in lines
    assert "9 cells: 6 ok, 1 collapse, 2 oom" in text


def test_error_text_is_escaped_and_shortened():
    f = batch_frame()
    f["status"] = "ok"
    long = "ValueError: a|b\n" + "x" * 500
    f["error"] = ""  # a text column, as the merged table has (the row below sets one)
    f.loc[0, ["status", "flag", "error"]] = ["error", "error", long]
    f.loc[0, METRICS] = np.nan
    text = build_report([SweepInput("b", "batch", f, [])], [], {})
    note = next(line for line in text.splitlines() if line.startswith("1. batch 1: error:"))
    assert "a\\|b x" in note
    assert note.endswith("…")
    assert len(note) < 340
    assert "| 1 | error [1] | error | error | error [1] |" in text.splitlines()  # decode table
    assert "| 1 | error [1] | error | error | error |" in text.splitlines()  # prefill table


def test_missing_optional_columns_only_reference_columns():
    f = seq_frame()
    f["vram_reserved_mb"] = 0.0  # CPU run, no RSS column either
    text = build_report([SweepInput("s", "seq_len", f, [])], [], {})
    assert "TTFT" not in text.split("## Sweep")[1]
    assert "TPOT" not in text.split("## Sweep")[1]
    assert "| 128 | 34.79 | 0.2718 | 3678.9 | 0 |" in text.splitlines()
    assert "- noisy" not in text
    assert "### all cells" in text


def test_memory_falls_back_to_peak_rss():
    f = seq_frame()
    f["vram_reserved_mb"] = 0.0
    f["peak_rss_mb"] = [7000.0, 7100.0, 7200.0, 7400.0, 7800.0, 8300.0, 9000.0]
    pre = table_lines(prefill_table(f, "seq_len"))
    assert pre[0].endswith("| peak RSS (MiB) |")
    assert pre[2] == "| 128 | 34.79 | 0.2718 | 3678.9 | 7000 |"
    assert ("memory (peak RSS) grows 7000 → 9000 MiB (+29%) from seq_len 128 to 4096; largest step +700 MiB, "
            "from seq_len 3072 to 4096") in series_findings(f, "seq_len")


def test_memory_in_findings_has_no_decimals():
    f = seq_frame().iloc[:2].copy()
    f["vram_reserved_mb"] = [0.0, 0.0]
    f["peak_rss_mb"] = [900.4, 950.6]
    assert series_findings(f, "seq_len")[-1] == (
        "memory (peak RSS) grows 900 → 951 MiB (+6%) from seq_len 128 to 256"
    )


def grid_frame() -> pd.DataFrame:
    rows = []
    for s, per_tok in ((128, 0.27), (1024, 0.24)):
        for b, dec in ((1, 26.0), (4, 28.0), (16, 31.0)):
            ok = not (s == 1024 and b == 16)
            rows.append({
                "seq_len": s, "batch": b,
                "prefill_p50_ms": per_tok * s * b if ok else np.nan,
                "prefill_ms_per_tok": per_tok if ok else np.nan,
                "prefill_tok_s": 1000 / per_tok if ok else np.nan,
                "decode_p50_ms_per_tok": dec if ok else np.nan,
                "decode_tok_s": b * 1000 / dec if ok else np.nan,
                "total_tok_s": b * 100.0 + s / 10 if ok else np.nan,
                "vram_reserved_mb": 6000.0 + s * b / 10 if ok else np.nan,
                "flag": "ok" if ok else "oom",
                "status": "ok" if ok else "oom",
                "error": "" if ok else OOM_TEXT,
            })
    return pd.DataFrame(rows)


def test_grid_table_and_findings():
    f = grid_frame()
    lines = table_lines(grid_table(f))
    assert lines[0] == ("| seq_len | batch | prefill p50 (ms) | prefill (ms/token) | decode p50 (ms/step) | "
                        "decode (tok/s) | total (tok/s) | VRAM reserved (MiB) | flag |")
    assert lines[2] == "| 128 | 1 | 34.56 | 0.2700 | 26.00 | 38.5 | 112.8 | 6013 | ok |"
    assert lines[-1] == "| 1024 | 16 | OOM [1] | OOM | OOM | OOM | OOM | OOM | oom [1] |"
    findings = sweep_findings(f, "grid")
    assert ("at seq_len 128: decode tok/s scales 38.5 → 516.1 (13.4x) from batch 1 to 16 while decode ms/step "
            "rises 26.0 → 31.0 (+19%)") in findings
    assert ("at batch 1: prefill ms/token falls 0.270 → 0.240 (-11%) from seq_len 128 to 1024") in findings
    assert "total tok/s is highest at 1613 at seq_len 128, batch 16" in findings
    assert "at seq_len 1024: largest batch that fit: 4; out of memory from batch 16 on" in findings
    assert ("memory (VRAM reserved) ranges 6013 MiB (seq_len 128, batch 1) to 6410 MiB (seq_len 1024, batch 4)"
            in findings)
    text = build_report([SweepInput("grid", "grid", f, [])], [], {})
    assert "Both seq_len and batch vary." in text
    assert "Prefill + memory:" not in text


def test_several_series_are_split_and_labelled():
    a = full_batch_frame()
    b = full_batch_frame()
    b["dtype"] = "bf16"
    b[["decode_p50_ms_per_tok"]] = b[["decode_p50_ms_per_tok"]] * 2
    b["decode_tok_s"] = b["decode_tok_s"] / 2
    f = pd.concat([a, b], ignore_index=True)
    text = build_report([SweepInput("batch", "batch", f, [])], [], {})
    assert "### qwen25_3b · bf16 · eager" in text
    assert "### qwen25_3b · fp16 · eager" in text
    findings = sweep_findings(f, "batch")
    assert ("[qwen25_3b · bf16 · eager] decode tok/s scales 18.8 → 498.3 (26.5x) from batch 1 to 64 while "
            "decode ms/step rises 53.2 → 128.4 (2.4x)") in findings
    assert any(s.startswith("[qwen25_3b · fp16 · eager] decode tok/s scales 37.6 → 996.6") for s in findings)


def test_seq_sweep_with_several_batches_is_one_series_per_batch():
    a = seq_frame()
    b = seq_frame()
    b["batch"] = 4
    text = build_report([SweepInput("s", "seq_len", pd.concat([a, b]), [])], [], {})
    assert "### all cells · batch = 1" in text
    assert "### all cells · batch = 4" in text
    assert "seq_len varies; batch takes 1, 4." in text


# ---------------------------------------------------------------------------------------------- whole report


def test_report_sections_setup_and_figures():
    envs = [
        {"hostname": "node1", "python": "3.11.9", "torch": "2.5.1", "device_name": "NVIDIA H100", "gpu_count": 1},
        {"hostname": "node2", "python": "3.11.9", "torch": "2.5.1"},
        {"hostname": "node1", "python": "3.11.9", "torch": "2.5.1", "device_name": "NVIDIA H100", "gpu_count": 1},
    ]
    settings = {
        "collapse_factor": 2.0,
        "models": {"qwen25_3b": {"layers": 36, "hidden": 2048, "kv_heads": 2}},
        "dtypes": ["fp16", "bf16"],
        "reps": 7,
    }
    sweeps = [
        SweepInput("seq", "seq_len", seq_frame(), [("Seq sweep: prefill", "figures/seq_prefill.png")]),
        SweepInput("batch", "batch", full_batch_frame(), []),
    ]
    text = build_report(sweeps, envs, settings, title="My report")
    lines = text.splitlines()
    assert lines[0] == "# My report"
    order = [text.index(h) for h in ("## Setup", "## How to read this", "## Sweep `seq`", "## Sweep `batch`",
                                     "## Collapse and failures")]
    assert order == sorted(order)
    assert "The cells ran in 2 distinct environments." in text
    assert "| `device_name` | NVIDIA H100 | – |" in lines
    assert "| `dtypes` | fp16, bf16 |" in lines
    # settings keys in the defined order, models listed with their architecture
    assert text.index("| `models` |") < text.index("| `dtypes` |") < text.index("| `reps` |") < text.index(
        "| `collapse_factor` |")
    assert "| `qwen25_3b` | 36 | 2048 | 2 |" in lines
    assert "![Seq sweep: prefill](figures/seq_prefill.png)" in lines
    # definitions come from columns.py
    assert "- `prefill_ms_per_tok` (ms/token): prefill_p50_ms / (batch × seq_len)." in lines
    assert "`collapse_factor` = 2.0." in text
    assert "latencies `prefill_ms_per_tok`, `decode_p50_ms_per_tok` (lower is better)" in text
    failures = text.split("## Collapse and failures")[1]
    assert f"| batch | qwen25_3b | fp16 | eager | 128 | 64 | collapse | {COLLAPSE_DETAIL} |" in failures
    assert f"| batch | qwen25_3b | fp16 | eager | 128 | 128 | oom | {OOM_TEXT} |" in failures
    assert "seq |" not in failures  # the seq sweep has no flagged cells


def test_report_without_failures_says_so():
    text = build_report([SweepInput("s", "seq_len", seq_frame(), [])], [], {})
    assert "None of the 7 cells was flagged or failed." in text
    assert "No environment was recorded." in text
    assert "No run settings were recorded." in text


def test_unknown_axis_is_rejected():
    with pytest.raises(ValueError, match="unknown axis"):
        build_report([SweepInput("s", "depth", seq_frame(), [])], [], {})


# ---------------------------------------------------------------------------------------------- writing


def test_write_report_is_atomic(tmp_path):
    out = tmp_path / "sub" / "report.md"
    assert write_report("# one\n", out) == out
    assert out.read_text(encoding="utf-8") == "# one\n"
    write_report("# two → ü\n", out)
    assert out.read_text(encoding="utf-8") == "# two → ü\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.md"]


def test_write_report_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "report.md"
    out.write_text("old", encoding="utf-8")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report("new", out)
    assert out.read_text(encoding="utf-8") == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_no_nan_leaks_into_report():
    text = build_report([SweepInput("b", "batch", full_batch_frame(), [])], [], {})
    assert not re.search(r"\bnan\b", text, flags=re.IGNORECASE)


def test_roofline_table_and_finding():
    frame = pd.DataFrame({
        "seq_len": [128, 256], "batch": [1, 1], "status": ["ok", "ok"], "flag": ["ok", "ok"],
        "prefill_floor_ms": [1.0, 2.0], "prefill_efficiency": [0.25, 0.5], "prefill_bound": ["memory", "compute"],
        "decode_floor_ms": [2.06, 2.07], "decode_efficiency": [0.08, 0.1], "decode_bound": ["memory", "memory"],
    })
    table = tables.roofline_table(frame, "seq_len")
    assert "| 128 | 1.00 | 25.0% | memory | 2.060 | 8.0% | memory |" in table
    assert findings.roofline_finding(frame.assign(device="cpu")) == (
        "prefill runs at 25.0–50.0% of its roofline floor (compute/memory-bound), i.e. 2.0–4.0x the measured floor; "
        "decode runs at 8.0–10.0% of its roofline floor (memory-bound), i.e. 10.0–12.5x the measured floor; "
        "no peak floor: the CPU has no theoretical peak in this tool"
    )
    assert tables.roofline_table(frame.drop(columns=["decode_floor_ms"]), "seq_len") is None


def test_measured_and_peak_floors_side_by_side():
    # decode 6.24 ms/step: 2.06 ms floor at the measured copy bandwidth, 1.84 ms at the spec bandwidth
    frame = pd.DataFrame({
        "seq_len": [128], "batch": [1], "status": ["ok"], "flag": ["ok"], "device": ["cuda"],
        "prefill_p50_ms": [40.0], "prefill_floor_ms": [2.0], "prefill_efficiency": [0.05],
        "prefill_bound": ["memory"], "prefill_floor_peak_ms": [1.6],
        "decode_p50_ms_per_tok": [6.24], "decode_floor_ms": [2.06], "decode_efficiency": [2.06 / 6.24],
        "decode_bound": ["memory"], "decode_floor_peak_ms": [1.84],
    })
    table = tables.roofline_table(frame, "seq_len")
    assert "prefill peak floor (ms)" in table and "decode peak floor (ms/step)" in table
    assert "| 2.060 | 33.0% | memory | 1.600 | 1.840 |" in table
    assert findings.roofline_finding(frame).endswith(
        "decode runs at 33.0% of its roofline floor (memory-bound), i.e. 3.0x the measured floor, 3.4x the peak floor")


def test_roofline_table_shows_measured_regime():
    frame = pd.DataFrame({
        "batch": [1], "seq_len": [128], "status": ["ok"], "flag": ["ok"],
        "prefill_floor_ms": [1.0], "prefill_efficiency": [0.06], "prefill_bound": ["memory"],
        "prefill_gpu_busy": [0.3], "prefill_regime": ["launch-bound"],
        "decode_floor_ms": [2.06], "decode_efficiency": [0.066], "decode_bound": ["memory"],
        "decode_gpu_busy": [0.9], "decode_regime": ["memory-bound"],
    })
    table = tables.roofline_table(frame, "batch")
    assert "| launch-bound (GPU busy 30.0%) |" in table and "| memory-bound (GPU busy 90.0%) |" in table


def test_memory_model_finding():
    frame = pd.DataFrame({
        "seq_len": [128, 256, 512], "batch": [1, 1, 1], "status": ["ok", "ok", "oom"], "flag": ["ok", "ok", "oom"],
        "predicted_memory_mb": [5900.0, 6000.0, 9000.0], "vram_allocated_mb": [6018.0, 6240.0, float("nan")],
        "vram_reserved_mb": [6700.0, 6740.0, float("nan")],
    })
    assert findings.memory_model_finding(frame) == (
        "peak allocated memory is 102–104% of the predicted budget (weights + KV cache + kept logits + "
        "activation estimate); the allocator reserves 500–682 MiB more than that peak"
    )
    cpu = frame.assign(vram_allocated_mb=0.0)
    assert findings.memory_model_finding(cpu) is None


def test_backend_comparison_hand_computed():
    rows = []
    for backend, decode, eff in (("eager", [40.0, 30.0], [0.05, 0.1]), ("graph", [8.0, 6.0], [0.25, 0.5])):
        for batch, d, e in zip((1, 8), decode, eff):
            rows.append({"seq_len": 128, "batch": batch, "model": "m", "dtype": "fp16", "backend": backend,
                         "status": "ok", "flag": "ok", "decode_p50_ms_per_tok": d, "decode_efficiency": e})
    rows.append({"seq_len": 128, "batch": 64, "model": "m", "dtype": "fp16", "backend": "graph", "status": "ok",
                 "flag": "ok", "decode_p50_ms_per_tok": 9.0, "decode_efficiency": 0.2})  # graph only: left out
    (title, table, findings), = compare.backend_comparison(pd.DataFrame(rows))
    assert title == "m · fp16"
    assert "| 128 | 1 | 40.00 | 8.00 | 5.00x | 20.0x | 4.0x |" in table
    assert "| 128 | 8 | 30.00 | 6.00 | 5.00x | 10.0x | 2.0x |" in table and "| 64 |" not in table
    assert findings[0] == ("graph decodes 5.0x faster than eager per step (least at seq_len 128 × batch 1, "
                           "most at seq_len 128 × batch 8)")
    assert "eager decode takes 10.0–20.0x its roofline floor" in findings
    assert "graph decode takes 2.0–4.0x its roofline floor" in findings
    one_cell = pd.DataFrame([r for r in rows if r["batch"] == 1])
    (_, _, findings), = compare.backend_comparison(one_cell)
    assert findings == ["graph decodes 5.0x faster than eager per step (seq_len 128 × batch 1)",
                        "eager decode takes 20.0x its roofline floor", "graph decode takes 4.0x its roofline floor"]
    single = pd.DataFrame([r for r in rows if r["backend"] == "eager"])
    assert compare.backend_comparison(single) == []
    # columns in the backends' own order (eager, graph, compiled), whatever order the rows come in
    compiled = [dict(r, backend="compiled", decode_p50_ms_per_tok=4.0) for r in rows if r["backend"] == "graph"]
    (_, table, _), = compare.backend_comparison(pd.DataFrame(compiled + rows))
    assert "| seq_len | batch | eager decode ms/step | graph decode ms/step | compiled decode ms/step |" in table
    assert "| 128 | 1 | 40.00 | 8.00 | 4.00 | 5.00x | 10.00x |" in table


def test_backend_comparison_against_the_noise():
    def rows(backend, decodes, spread):
        return [{"seq_len": 128, "batch": batch, "model": "m", "dtype": "fp16", "backend": backend, "status": "ok",
                 "flag": "ok", "replicates": 3, "decode_p50_ms_per_tok": d, "decode_replicate_spread_pct": spread}
                for batch, d in zip((1, 8, 64), decodes)]
    eager = rows("eager", [10.0, 20.0, 40.0], 4.0)  # noise ±2% a cell, ±4% a pair
    # within noise at batch 1 and 8, 1.25x slower at 64
    slower = rows("compiled", [10.3, 19.5, 50.0], 4.0)
    (_, _, findings), = compare.backend_comparison(pd.DataFrame(eager + slower))
    assert findings[0] == ("compiled decodes 1.2x slower than eager per step (seq_len 128 × batch 64); within noise at "
                           "seq_len 128 × batch 1, seq_len 128 × batch 8")
    # within the noise everywhere: no speed-up claimed
    close = rows("compiled", [10.3, 19.5, 41.0], 4.0)
    (_, _, findings), = compare.backend_comparison(pd.DataFrame(eager + close))
    assert findings[0] == ("compiled decodes within noise of eager per step in every cell (0.97–1.03x eager's speed; "
                           "noise up to ±4.0%)")
    # faster in one cell and slower in another, both beyond the noise
    mixed = rows("graph", [5.0, 30.0, 40.5], 4.0)
    (_, _, findings), = compare.backend_comparison(pd.DataFrame(eager + mixed))
    assert findings[0] == ("graph decodes at 0.67–2.00x eager's speed per step (least at seq_len 128 × batch 8, most "
                           "at seq_len 128 × batch 1); within noise at seq_len 128 × batch 64")


def _prefill_rows(backend: str, cells: list[tuple]) -> list[dict]:
    """Rows of one backend: (batch, prefill p50, its interval's half-width in ms, kernel ms, regime) per cell."""
    return [{"seq_len": 128, "batch": batch, "model": "m", "dtype": "fp16", "backend": backend, "status": "ok",
             "flag": "ok", "replicates": 1, "prefill_p50_ms": p50, "prefill_p50_ci_low_ms": p50 - half,
             "prefill_p50_ci_high_ms": p50 + half, "prefill_kernel_ms": kernel, "prefill_regime": regime,
             "decode_p50_ms_per_tok": 5.0}
            for batch, p50, half, kernel, regime in cells]


def test_prefill_comparison_hand_computed():
    eager = _prefill_rows("eager", [(1, 20.0, 2.0, 5.0, "launch-bound"), (8, 100.0, 0.5, 98.0, "compute-bound"),
                                    (64, 200.0, 1.0, 196.0, "compute-bound")])
    graph = _prefill_rows("graph", [(1, 30.0, 3.0, 5.1, "launch-bound"), (8, 100.5, 0.5, 98.2, "compute-bound"),
                                    (64, 210.0, 1.0, 196.4, "compute-bound")])
    (title, table, findings), = compare.prefill_comparison(pd.DataFrame(eager + graph))
    assert title == "m · fp16"
    assert ("| seq_len | batch | regime | eager prefill ms | graph prefill ms | graph vs eager (noise) | "
            "graph kernels vs eager |") in table
    # noise: the two cells' interval half-widths over their p50s, summed: 10% + 10%, 0.5% + ~0.5%, 0.5% + ~0.48%
    assert "| 128 | 1 | launch-bound | 20.00 | 30.00 | +50.0% (±20%) | +2.0% |" in table
    assert "| 128 | 8 | compute-bound | 100.00 | 100.50 | +0.5% (±1.0%) | +0.2% |" in table
    assert "| 128 | 64 | compute-bound | 200.00 | 210.00 | +5.0% (±1.0%) | +0.2% |" in table
    assert findings == [
        "graph prefill against eager's in the 2 compute-bound cells: +0.5% to +5.0%; its GPU kernels +0.2%; "
        "beyond the noise (within-run interval) at seq_len 128 × batch 64 +5.0% (noise ±1.0%, kernels +0.2%): "
        "the kernels moved by less than half as much, so the difference lies outside the GPU's work",
        "graph prefill against eager's in the 1 launch-bound cell: +50.0%; its GPU kernels +2.0%; beyond the noise "
        "(within-run interval) at seq_len 128 × batch 1 +50.0% (noise ±20%, kernels +2.0%): the kernels moved by "
        "less than half as much, so the difference lies outside the GPU's work [host-noise-dominated]",
    ]
    # a launch-bound cell of either backend makes the pair launch-bound; the replicates' spread is the noise
    # where a cell has several; kernels that moved with the wall time give no host explanation
    graph[1].update(prefill_regime="launch-bound")
    graph[2].update(prefill_kernel_ms=205.8)
    for row in eager + graph:
        row.update(replicates=3, prefill_replicate_spread_pct=2.0)
    (_, table, findings), = compare.prefill_comparison(pd.DataFrame(eager + graph))
    assert "| 128 | 8 | launch-bound | 100.00 | 100.50 | +0.5% (±2.0%) | +0.2% |" in table
    assert findings[0] == ("graph prefill against eager's in the 1 compute-bound cell: +5.0%; its GPU kernels +5.0%; "
                           "beyond the noise (replicate spread) at seq_len 128 × batch 64 +5.0% (noise ±2.0%, "
                           "kernels +5.0%)")
    assert findings[1].startswith("graph prefill against eager's in the 2 launch-bound cells: +0.5% to +50.0%")
    # within the noise everywhere; without kernel times the kernel columns and clauses are left out
    base = [dict(r, prefill_regime="compute-bound") for r in eager]
    close = [dict(r, backend="graph", prefill_p50_ms=r["prefill_p50_ms"] * 1.01) for r in base]
    frame = pd.DataFrame(close + base).drop(columns="prefill_kernel_ms")
    (_, table, findings), = compare.prefill_comparison(frame)
    assert "kernels" not in table
    assert findings == ["graph prefill against eager's in the 3 compute-bound cells: +1.0%, within the noise"]
    # cells without any noise recorded are said so, never called within or beyond it
    bare = frame.drop(columns=["prefill_p50_ci_low_ms", "prefill_p50_ci_high_ms", "prefill_replicate_spread_pct"],
                      errors="ignore")
    (_, table, findings), = compare.prefill_comparison(bare)
    assert "| 128 | 8 | compute-bound | 100.00 | 101.00 | +1.0% |" in table
    assert findings == ["graph prefill against eager's in the 3 compute-bound cells: +1.0% (no noise recorded)"]
    # one backend, or no prefill column: nothing to compare
    assert compare.prefill_comparison(pd.DataFrame(eager)) == []
    assert compare.prefill_comparison(pd.DataFrame(eager + graph).drop(columns="prefill_p50_ms")) == []


def test_report_compares_the_backends_decode_and_prefill():
    eager = _prefill_rows("eager", [(1, 20.0, 2.0, 5.0, "launch-bound"), (8, 100.0, 0.5, 98.0, "compute-bound")])
    graph = _prefill_rows("graph", [(1, 30.0, 3.0, 5.1, "launch-bound"), (8, 100.5, 0.5, 98.2, "compute-bound")])
    text = build_report([SweepInput("b", "batch", pd.DataFrame(eager + graph), [])], [], {})
    section = text.split("### Backends compared: m · fp16", 1)[1]
    assert section.index("| eager decode ms/step |") < section.index("Prefill of the same cells") \
        < section.index("| graph vs eager (noise) |")
    assert ("- graph prefill against eager's in the 1 compute-bound cell: +0.5%; its GPU kernels +0.2%, within the "
            "noise") in section
    assert "kernels: the change of the prefill's GPU kernel time" in section
    no_kernels = pd.DataFrame(eager + graph).drop(columns="prefill_kernel_ms")
    text = build_report([SweepInput("b", "batch", no_kernels, [])], [], {})
    assert "Prefill of the same cells" in text and "kernel" not in text.split("Prefill of the same cells", 1)[1]


def _device_rows(device: str, prefill: list[float], decode: list[float], eff: list[float],
                 flags: list[str] | None = None) -> pd.DataFrame:
    rows = []
    flags = flags or ["ok"] * len(prefill)
    for batch, p, d, e, f in zip((1, 8, 64), prefill, decode, eff, flags):
        rows.append({"seq_len": 128, "batch": batch, "model": "m", "dtype": "fp16", "backend": "graph",
                     "device_name": device, "status": "oom" if f == "oom" else "ok", "flag": f,
                     "prefill_p50_ms": p, "decode_p50_ms_per_tok": d, "decode_efficiency": e})
    return pd.DataFrame(rows)


def test_device_comparison_hand_computed():
    h100 = _device_rows("GPU A", [20.0, 40.0, 80.0], [10.0, 12.0, 16.0], [0.5, 0.25, 0.2])
    # the other device: batch 64 ran out of memory there, so only batches 1 and 8 are compared
    h200 = _device_rows("GPU B", [10.0, 30.0, 0.0], [9.0, 6.0, 0.0], [0.25, 0.5, 0.0], ["ok", "ok", "oom"])
    (title, table, findings), = compare.device_comparison(h100, h200, "A", "B")
    assert title == "m · fp16 · graph"
    assert "| 128 | 1 | 20.00 | 10.00 | 0.50x | 10.00 | 9.00 | 0.90x | 2.0x | 4.0x |" in table
    assert "| 128 | 8 | 40.00 | 30.00 | 0.75x | 12.00 | 6.00 | 0.50x | 4.0x | 2.0x |" in table
    assert "| 64 |" not in table
    assert findings[0] == ("prefill: B takes 0.50–0.75x (median 0.62x) of A's time (lowest at seq_len 128 × "
                           "batch 1, highest at seq_len 128 × batch 8)")
    assert findings[1].startswith("decode: B takes 0.50–0.90x (median 0.70x)")
    assert findings[1].endswith("(lowest at seq_len 128 × batch 8, highest at seq_len 128 × batch 1)")
    assert findings[2] == "decode as a multiple of each device's own roofline floor: A 2.0–4.0x, B 2.0–4.0x"
    other_backend = h200.assign(backend="eager")
    assert compare.device_comparison(h100, other_backend, "A", "B") == []


def test_devices_section_labels_ceilings_and_missing_sweeps():
    this = series.SweepInput(name="batch_sweep", axis="batch",
                             frame=_device_rows("GPU A", [20.0, 40.0, 80.0], [10.0, 12.0, 16.0], [0.5, 0.25, 0.2]))
    missing = series.SweepInput(name="seq_sweep", axis="seq_len", frame=this.frame)
    other = compare.OtherDevice("B", {"batch_sweep": _device_rows("GPU B", [10.0, 30.0, 60.0], [9.0, 6.0, 8.0],
                                                                 [0.25, 0.5, 0.4])},
                               {("cuda", "fp16"): {"bandwidth_gb_s": 4200.0, "matmul_tflops": 660.0}})
    text = compare.devices_section([this, missing], [other],
                                  {("cuda", "fp16"): {"bandwidth_gb_s": 3000.0, "matmul_tflops": 666.0}})
    assert "- GPU A (this run): 3000 GB/s copy, 666 TFLOP/s matmul (cuda, fp16)" in text
    assert "- B: 4200 GB/s copy, 660 TFLOP/s matmul (cuda, fp16)" in text
    assert "### B: sweep `batch_sweep` · m · fp16 · graph" in text
    assert "| prefill ms: GPU A | prefill ms: B |" in text
    assert "No cells of sweep `seq_sweep` in B." in text
    full = report.build_report([this], [], {}, other_devices=[other])
    assert "## Devices compared" in full and full.index("## Devices compared") < full.index("## Collapse")
    assert "## Devices compared" not in report.build_report([this], [], {})


# ------------------------------------------------------------------------------ findings against the noise


def _replicated(frame: pd.DataFrame, spread_pct: float, phase: str = "decode") -> pd.DataFrame:
    """Hand-made replicate data: every cell measured in 3 processes whose medians spread by spread_pct."""
    return frame.assign(replicates=3, **{f"{phase}_replicate_spread_pct": spread_pct})


def test_a_change_within_the_replicates_spread_is_within_noise():
    # decode 26.119 -> 26.997 ms/step is +3%; replicates spreading 10% (±5% a cell, ±10% for two) hide it
    f = _replicated(seq_frame().iloc[:4], 10.0)
    assert trend_finding(f, "seq_len", "decode_p50_ms_per_tok") == (
        "decode ms/step stays flat, within noise (±10%): 26.1 → 27.0 (+3%) from seq_len 128 to 1024")
    # replicates spreading 2% (±2% for two cells): the same +3% is a rise
    f = _replicated(seq_frame().iloc[:4], 2.0)
    assert trend_finding(f, "seq_len", "decode_p50_ms_per_tok") == (
        "decode ms/step rises 26.1 → 27.0 (+3%) from seq_len 128 to 1024")


def test_one_replicate_falls_back_to_the_within_run_interval():
    f = seq_frame().iloc[:4].assign(replicates=1, decode_replicate_spread_pct=1.0)
    f["decode_p50_ci_low_ms"] = f["decode_p50_ms_per_tok"] * 0.97
    f["decode_p50_ci_high_ms"] = f["decode_p50_ms_per_tok"] * 1.03
    assert trend_finding(f, "seq_len", "decode_p50_ms_per_tok").startswith(
        "decode ms/step stays flat, within noise (±6%)")


def test_lowest_at_only_beyond_the_noise():
    # prefill ms/token is lowest at seq_len 256 (0.190 against 0.272 at 128, -30%)
    f = seq_frame()
    assert "lowest at seq_len 256" in trend_finding(_replicated(f, 20.0, "prefill"), "seq_len", "prefill_ms_per_tok")
    assert "lowest at" not in trend_finding(_replicated(f, 80.0, "prefill"), "seq_len", "prefill_ms_per_tok")


def test_launch_bound_cells_are_labelled_host_noise_dominated():
    f = _replicated(batch_frame(), 4.0).assign(decode_regime="launch-bound")
    text = findings.decode_scaling_finding(f, "batch")
    assert text.startswith("decode tok/s scales 37.6 → 996.6 (26.5x) from batch 1 to 64")
    assert text.endswith("[launch-bound cells: host-noise-dominated]")


def test_saturation_finding_from_replicates():
    # the reference study's batch sweep: prefill tok/s gains 10% from batch 2 to 4, then -11% at batch 8
    f = _replicated(batch_frame(), 4.0, "prefill")
    assert findings.saturation_finding(f, "prefill_tok_s") == (
        "prefill tok/s saturates at batch 4: -11% per doubling to batch 8, within noise (±4%)")
    f = _replicated(batch_frame(), 30.0, "prefill")
    assert findings.saturation_finding(f, "prefill_tok_s") == (
        "prefill tok/s saturates at batch 2: +10% per doubling to batch 4, within noise (±30%)")
    # decode throughput grows beyond ±4% at every doubling up to 64
    f = _replicated(batch_frame(), 4.0)
    assert findings.saturation_finding(f, "decode_tok_s") == (
        "decode tok/s does not saturate up to batch 64: the last step along the batch still raises it by more than the noise")
    assert any(x.startswith("decode tok/s does not saturate") for x in sweep_findings(f, "batch"))


def test_header_counts_a_cell_shared_by_two_sweeps_once():
    seq = seq_frame().iloc[:3].assign(model="m", dtype="fp32", backend="eager", device="cpu", status="ok")
    batch = batch_frame().iloc[:3].assign(model="m", dtype="fp32", backend="eager", device="cpu", status="ok")
    # seq 128 x batch 1 is in both sweeps
    text = build_report([SweepInput("seq", "seq_len", seq, []), SweepInput("batch", "batch", batch, [])], [], {})
    assert "Sweeps: `seq` (seq_len), `batch` (batch). 5 cells: 5 ok (1 shared by several sweeps, counted once)." \
        in text
    assert "None of the 5 cells was flagged or failed." in text


def test_cost_finding_sums_the_replicates_of_each_cell():
    from latency_sensitivity.report.findings import cost_finding

    frame = pd.DataFrame({"seq_len": [16, 32], "batch": [1, 1], "replicates": [2, 2],
                          "job_s_total": [20.0, 30.0], "measured_s_total": [5.0, 5.0]})
    text = cost_finding(frame)
    assert text.startswith("cost: 4 measuring job(s) for 2 cell(s) took 50.0 s of wall time for 10.0 s")
    assert "(5.0x)" in text and "workers starting up" not in text
    assert cost_finding(frame.drop(columns=["job_s_total", "measured_s_total"])) is None
    # shared workers: their start-up is named apart (once per worker), and the ratio without it
    frame["worker_start_s_total"] = [15.0, 0.0]
    text = cost_finding(frame)
    assert "15.0 s of it were shared measurement workers starting up" in text and "the rest is 3.5x" in text
    assert "were backend setup" not in text
    # a compiled sweep: compiling and autotuning named, when they are a good part of the cost
    frame["backend_setup_s_total"] = [1.0, 2.0]
    assert "were backend setup" not in cost_finding(frame)
    frame["backend_setup_s_total"] = [10.0, 8.0]
    assert "18.0 s were backend setup (graph capture, compiling, autotuning)" in cost_finding(frame)
    assert cost_finding(frame).endswith("; besides the reps: backend setup 18.0 s, and 7.0 s else (model build, "
                                        "handing the cell over, recording it)")
    # torch.compile named apart: saved and loaded, or traced in every process, cached code or not
    frame["backend_compile_s_total"] = [8.0, 6.0]
    text = cost_finding(frame)
    assert ("18.0 s were backend setup (graph capture, compiling, autotuning), 14.0 s of it making the compiled "
            "step (compiled once and saved, then loaded by each process; or, with compiled_step traced, traced in "
            "each process and compiled shape even where its compiled code is cached: the cells' compile_stats step "
            "says which); a later run") in text
    assert text.endswith("; besides the reps: torch.compile 14.0 s, backend setup 4.0 s, and 7.0 s else (model "
                         "build, handing the cell over, recording it)"), text


def test_cost_finding_names_where_the_jobs_time_went():
    """The cost line splits what the jobs spent besides their reps and their workers' start-up, largest first;
    results that recorded no parts keep the generic sentence."""
    from latency_sensitivity.report.findings import cost_finding

    frame = pd.DataFrame({"seq_len": [16, 32], "batch": [1, 1], "replicates": [3, 3],
                          "job_s_total": [20.0, 30.0], "measured_s_total": [5.0, 5.0],
                          "worker_start_s_total": [10.0, 0.0], "warmup_s_total": [2.0, 3.0],
                          "kernel_time_s_total": [1.0, 2.0], "import_s_total": [0.5, 0.0],
                          "startup_s_total": [0.5, 1.0], "tokenization_s_total": [0.25, 0.25],
                          "backend_setup_s_total": [1.0, 1.5]})
    text = cost_finding(frame)
    assert text.endswith("; besides the reps: warmup 5.0 s, the GPU kernel-time profile 3.0 s, backend setup 2.5 s, "
                         "start-up 2.0 s, timing tokenization 0.5 s, and 17.0 s else (model build, handing the cell "
                         "over, recording it)"), text
    frame["kernel_time_s_total"] = [math.nan, math.nan]  # not recorded (on the CPU): not named
    assert "kernel-time" not in cost_finding(frame) and "and 20.0 s else" in cost_finding(frame)
    bare = frame[["seq_len", "batch", "replicates", "job_s_total", "measured_s_total"]]
    assert cost_finding(bare).endswith("besides the reps a job spends its time on start-up, model build, backend "
                                       "setup, warmup and side measurements")


def test_how_to_read_says_compiled_cells_share_their_tuning_between_replicates():
    from latency_sensitivity.report.setup import how_to_read_section

    assert "autotune their Triton kernels" in how_to_read_section({"backends": ["eager", "compiled"]})
    assert "autotune" not in how_to_read_section({"backends": ["eager", "graph"]})
    assert "autotune" not in how_to_read_section({})


def test_how_to_read_says_what_the_replicate_spread_includes_of_placement():
    from latency_sensitivity.report.setup import how_to_read_section

    varied = how_to_read_section({"device": "cuda", "placement": "by_replicate"})
    assert "another place in device memory" in varied and "placement_pad_mb" in varied
    assert "leaves out how much a cell depends" not in varied
    fixed = how_to_read_section({"device": "cuda", "placement": "fixed"})
    assert "leaves out how much a cell depends on where it lands" in fixed
    both = how_to_read_section({"device": "cuda", "placement": "by_replicate (4 cells), fixed (2 cells)"})
    assert "another place in device memory" in both and "leaves out" in both
    for cpu in ({"device": "cpu", "placement": "fixed"}, {}):
        assert "device memory" not in how_to_read_section(cpu)


def test_a_one_time_job_says_how_long_it_waited_for_a_gpu():
    """The calibration's and the loading measurement's job time, with the part another process held the GPU."""
    from latency_sensitivity.report.format import job_seconds

    assert job_seconds(121.44, 118.6) == "121.4 s (118.6 s of it waiting for a GPU)"
    assert job_seconds(3.0, None) == job_seconds(3.0, 0.01) == "3.0 s"
    assert job_seconds(21.46, 3.01, "its checkpoint written by a job of 9.0 s") == \
        "21.5 s (3.0 s of it waiting for a GPU; its checkpoint written by a job of 9.0 s)"
    assert job_seconds(21.46, None, "note") == "21.5 s (note)"
