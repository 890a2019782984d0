import json
import math

import pytest

from latency_sensitivity.columns import REFERENCE_NAMES
from latency_sensitivity.config import MODELS_DIR
from latency_sensitivity.analysis.merge import merge

QWEN_3B = json.loads((MODELS_DIR / "qwen2.5-3b.json").read_text())


def result(seq, batch, status="ok", **metrics):
    cell = {"model": "qwen2.5-3b", "dtype": "fp16", "backend": "eager", "device": "cuda", "seq_len": seq,
            "batch": batch, "gen_tokens": 32, "warmup": 3, "reps": 7, "attn_implementation": "sdpa"}
    out = {"cell": cell, "status": status, "environment": {"device_name": "NVIDIA H100"}, "architecture": QWEN_3B,
           "metrics": metrics if status == "ok" else {}}
    if status != "ok":
        out["error"] = {"message": "OutOfMemoryError during measure: CUDA out of memory"}
    return out


def test_reference_columns_first_sorted_and_failed_rows_kept():
    results = [
        result(256, 1, prefill_p50_ms=20.0, decode_p50_ms_per_tok=25.0),
        result(128, 1, prefill_p50_ms=10.0, decode_p50_ms_per_tok=24.0, extra_metric=1.5),
        result(4096, 1, status="oom"),
    ]
    df = merge(results, sweep="seq_sweep")
    assert list(df.columns[: len(REFERENCE_NAMES)]) == REFERENCE_NAMES
    assert list(df["seq_len"]) == [128, 256, 4096]
    assert list(df["flag"]) == ["ok", "ok", "oom"]
    assert df.loc[2, "error"].startswith("OutOfMemoryError")
    assert math.isnan(df.loc[2, "prefill_p50_ms"])
    assert df.loc[0, "device_name"] == "NVIDIA H100" and (df["sweep"] == "seq_sweep").all()
    assert df.loc[0, "extra_metric"] == 1.5  # unknown metrics are kept, after the known columns


def test_roofline_columns_from_ceilings():
    ceilings = {("cuda", "fp16"): {"bandwidth_gb_s": 3000.0, "matmul_tflops": 700.0}}
    df = merge([result(128, 1, prefill_p50_ms=30.0, decode_p50_ms_per_tok=25.0)], ceilings=ceilings)
    row = df.iloc[0]
    assert row["decode_bound"] == "memory"
    assert row["decode_floor_ms"] == pytest.approx(2.06, abs=0.01)  # 6.17 GB of weights at 3 TB/s
    assert row["decode_efficiency"] == pytest.approx(row["decode_floor_ms"] / 25.0)
    assert 0 < row["prefill_efficiency"] < 1


def test_faster_than_floor_is_called_out():
    ceilings = {("cuda", "fp16"): {"bandwidth_gb_s": 3000.0, "matmul_tflops": 700.0}}
    df = merge([result(128, 1, prefill_p50_ms=30.0, decode_p50_ms_per_tok=1.0)], ceilings=ceilings)
    assert "faster than the floor in decode" in df.iloc[0]["roofline_note"]


def test_no_ceilings_no_roofline_columns():
    df = merge([result(128, 1, prefill_p50_ms=30.0, decode_p50_ms_per_tok=25.0)])
    assert "decode_floor_ms" not in df.columns


def test_regime_columns_from_gpu_busy():
    ceilings = {("cuda", "fp16"): {"bandwidth_gb_s": 3000.0, "matmul_tflops": 700.0}}
    r = result(128, 1, prefill_p50_ms=30.0, decode_p50_ms_per_tok=25.0, prefill_gpu_busy=0.8, decode_gpu_busy=0.1)
    row = merge([r], ceilings=ceilings).iloc[0]
    assert row["decode_regime"] == "launch-bound"
    assert row["prefill_regime"] == f"{row['prefill_bound']}-bound"


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "JSONDecodeError"),  # cut short
        ("[1, 2]", "a JSON list, not an object"),
        ('{"status": "ok"}', "no 'cell' key"),
        (b"\xff\xfe{", "UnicodeDecodeError"),
    ],
)
def test_unreadable_cell_named_with_remedy(tmp_path, content, problem):
    from latency_sensitivity import steps
    from latency_sensitivity.analysis.merge import UnreadableCell, cell_problem, load_results

    good, bad = tmp_path / "seq128_batch1.json", tmp_path / "seq256_batch1.json"
    good.write_text(json.dumps(result(128, 1, prefill_p50_ms=10.0)))
    if content is None:
        bad.write_text(json.dumps(result(256, 1, prefill_p50_ms=20.0))[:150])
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        bad.write_text(content)
    assert cell_problem(good) is None and cell_problem(tmp_path / "absent.json") is None
    assert problem in cell_problem(bad)
    with pytest.raises(UnreadableCell) as info:
        load_results([good, bad])
    message = str(info.value)
    assert str(bad) in message and problem in message
    assert "delete it and rerun" in message and f"--forcerun {bad}" in message
    with pytest.raises(UnreadableCell, match="seq256_batch1.json"):
        steps.merge_sweep([str(good), str(bad)], str(tmp_path / "merged.csv"), sweep="s")
    assert not (tmp_path / "merged.csv").exists()


def test_failed_cells_lists_unreadable_files_without_crashing(tmp_path, capsys):
    from latency_sensitivity import cli

    cells = tmp_path / "results" / "cells" / "m" / "fp16" / "eager"
    cells.mkdir(parents=True)
    (cells / "seq1_batch1.json").write_text(json.dumps(result(1, 1, prefill_p50_ms=1.0)))
    (cells / "seq2_batch1.json").write_text(json.dumps(result(2, 1, status="oom")))
    (cells / "seq3_batch1.json").write_text(json.dumps(result(3, 1))[:40])
    listed = cli.failed_cells(tmp_path / "results")
    assert [(p.name, s.split(":")[0]) for p, s in listed] == [("seq2_batch1.json", "oom"),
                                                              ("seq3_batch1.json", "unreadable")]
    assert cli.main(["failed-cells", "--results", str(tmp_path / "results")]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(cells / "seq2_batch1.json"), str(cells / "seq3_batch1.json")]
    assert f"{cells / 'seq3_batch1.json'}: unreadable: JSONDecodeError" in err and "seq2" not in err
