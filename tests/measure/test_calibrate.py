"""calibrate.py on the CPU (small sizes), the CLI's JSON, and the CUDA path where a GPU exists."""

from __future__ import annotations

import datetime as dt
import json
import sys
import math
import statistics

import pytest
import torch

from latency_sensitivity.measure import calibrate as cal
from latency_sensitivity.analysis.roofline import Architecture, cell_roofline


def _finite_pos(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_measure_bandwidth_cpu_units():
    r = cal.measure_bandwidth("cpu", 2**20, 3)
    assert set(r) >= {"bandwidth_gb_s", "bytes", "reps", "samples_ms"}
    assert r["bytes"] == 2 * 2**20  # read + written
    assert r["copy_bytes"] == 2**20
    assert r["reps"] == 3 and len(r["samples_ms"]) == 3
    assert all(_finite_pos(s) for s in r["samples_ms"])
    assert _finite_pos(r["bandwidth_gb_s"])
    med = statistics.median(r["samples_ms"])
    assert r["median_ms"] == med
    assert r["bandwidth_gb_s"] == pytest.approx(r["bytes"] / (med / 1e3) / 1e9)
    assert 1e-3 < r["bandwidth_gb_s"] < 1e4  # GB/s, not B/s
    # odd sizes are rounded down to whole fp32 elements
    assert cal.measure_bandwidth("cpu", 4 * 1000 + 3, 1)["bytes"] == 2 * 4000


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_measure_matmul_cpu_units(dtype):
    r = cal.measure_matmul("cpu", dtype, 64, 3)
    assert r["flops"] == 2 * 64**3 == 524_288
    assert r["n"] == 64 and r["reps"] == 3 and len(r["samples_ms"]) == 3
    assert r["dtype"] == dtype
    assert r["computed_dtype"] == {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype]
    assert (r["note"] != "") == (dtype != "fp32")
    med = statistics.median(r["samples_ms"])
    assert r["matmul_tflops"] == pytest.approx(r["flops"] / (med / 1e3) / 1e12)
    assert _finite_pos(r["matmul_tflops"]) and r["matmul_tflops"] < 1e3  # TFLOP/s, not FLOP/s


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dtype"):
        cal.measure_matmul("cpu", "int8", 8, 1)
    with pytest.raises(ValueError, match="reps"):
        cal.measure_bandwidth("cpu", 1024, 0)
    with pytest.raises(ValueError, match="unsupported device"):
        cal.measure_bandwidth("mps", 1024, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_requested_without_cuda(tmp_path):
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        cal.calibrate("cuda", "fp16", quick=True)
    # The CLI records the failure instead of failing the pipeline; merge then skips the roofline.
    assert cal.main(["--device", "cuda", "--dtype", "fp16", "--out", str(tmp_path / "x.json")]) == 0
    recorded = json.loads((tmp_path / "x.json").read_text())
    assert recorded["device"] == "cuda" and "CUDA is not available" in recorded["error"]
    from latency_sensitivity.steps import load_ceilings

    assert load_ceilings([str(tmp_path / "x.json")]) == {}


def test_calibrate_cpu_and_feeds_roofline():
    r = cal.calibrate("cpu", "fp32", quick=False, sizes=(2**20, 64, 2, 2))
    assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["device_name"]
    assert r["torch_version"] == torch.__version__
    assert dt.datetime.fromisoformat(r["timestamp"]).tzinfo is not None
    assert r["bandwidth"]["bytes"] == 2 * 2**20 and r["matmul"]["n"] == 64
    assert r["bandwidth_gb_s"] == r["bandwidth"]["bandwidth_gb_s"]
    assert r["matmul_tflops"] == r["matmul"]["matmul_tflops"]
    arch = Architecture.from_config(
        {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2,
         "intermediate_size": 16, "vocab_size": 10}
    )
    roof = cell_roofline(arch, "fp32", 4, 1, 2, r)  # the calibration dict is a valid `ceilings`
    assert _finite_pos(roof["prefill_floor_ms"]) and roof["prefill_bound"] in ("compute", "memory")


def test_cpu_has_no_theoretical_peak():
    assert cal.theoretical_peak("cpu", "fp16") is None
    r = cal.calibrate("cpu", "fp32", sizes=(2**20, 64, 2, 2))
    assert "peak" in r and r["peak"] is None


@pytest.mark.parametrize(
    ("name", "specs", "bandwidth_gb_s", "tflops"),
    [
        # H100 SXM5: NVML max memory clock 2619 MHz, 5120-bit HBM3; 132 SMs at 1830 MHz (the clock of the
        # published 989.4 dense fp16 TFLOPS; 3.35 TB/s published)
        ("H100 SXM", dict(memory_clock_mhz=2619, bus_width_bits=5120, sm_count=132, sm_clock_mhz=1830,
                          capability=(9, 0)), 3352, 989.4),
        # A100 SXM4 40GB: 1215 MHz, 5120-bit HBM2; 108 SMs at 1410 MHz (1555 GB/s, 312 TFLOPS published)
        ("A100", dict(memory_clock_mhz=1215, bus_width_bits=5120, sm_count=108, sm_clock_mhz=1410,
                      capability=(8, 0)), 1555, 312),
        # RTX 4090: 10501 MHz, 384-bit GDDR6X (1008 GB/s); 128 SMs at 2520 MHz (330 TFLOPS fp16 accumulate)
        ("RTX 4090", dict(memory_clock_mhz=10501, bus_width_bits=384, sm_count=128, sm_clock_mhz=2520,
                          capability=(8, 9)), 1008, 330.3),
    ],
)
def test_peak_from_specs_matches_published_numbers(name, specs, bandwidth_gb_s, tflops):
    p = cal.peak_from_specs(dtype="fp16", **specs)
    assert p["bandwidth_gb_s"] == pytest.approx(bandwidth_gb_s, rel=0.01), name
    assert p["matmul_tflops"] == pytest.approx(tflops, rel=0.01), name
    assert cal.peak_from_specs(dtype="fp16", **dict(specs, capability=(5, 0)))["matmul_tflops"] is None


def test_quick_sizes():
    assert cal.SIZES[("cpu", False)][:2] == (64 * 2**20, 1024)
    assert cal.SIZES[("cuda", False)][:2] == (2**30, 8192)
    assert cal.SIZES[("cpu", True)][0] < cal.SIZES[("cpu", False)][0]
    assert cal.SIZES[("cuda", True)][1] < cal.SIZES[("cuda", False)][1]


def test_main_writes_json_atomically(tmp_path, capsys):
    out = tmp_path / "results" / "calibration" / "cpu_fp32.json"
    assert cal.main(["--device", "cpu", "--dtype", "fp32", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["dtype"] == "fp32" and data["quick"] is True
    assert data["bandwidth"]["bytes"] == 2 * 8 * 2**20 and data["matmul"]["n"] == 256
    assert _finite_pos(data["bandwidth_gb_s"]) and _finite_pos(data["matmul_tflops"])
    # the job's wall time from its process's start (this test process's age, on Linux), for the report
    assert data["job_s"] is None if not sys.platform.startswith("linux") else data["job_s"] > 0
    assert data["gpu_wait_s"] is None  # no GPU claimed on the CPU (with one: the seconds it waited, within job_s)
    assert [p.name for p in out.parent.iterdir()] == ["cpu_fp32.json"]  # no temporary left behind
    assert "GB/s" in capsys.readouterr().out
    # rewriting replaces the file
    assert cal.main(["--device", "cpu", "--dtype", "bf16", "--quick", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["dtype"] == "bf16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_quick_calibration(tmp_path):
    r = cal.calibrate("cuda", "fp16", quick=True)
    assert r["device"] == "cuda" and r["device_name"] == torch.cuda.get_device_name(0)
    assert r["bandwidth"]["bytes"] == 2 * 2**28 and r["matmul"]["n"] == 4096
    assert r["matmul"]["computed_dtype"] == "float16"
    assert 10 < r["bandwidth_gb_s"] < 20_000
    assert 1 < r["matmul_tflops"] < 5_000
    out = tmp_path / "cuda_fp16.json"
    assert cal.main(["--device", "cuda", "--dtype", "fp16", "--quick", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["device"] == "cuda"
