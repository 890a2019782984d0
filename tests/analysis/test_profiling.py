"""Profiler output parsers and the kernel classifier, on real exports from an H100 and small hand-made ones."""

import gzip
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from latency_sensitivity import steps
from latency_sensitivity.analysis import profiling
from latency_sensitivity.report import document as report
from latency_sensitivity.report import profiles

FIX = Path(__file__).parents[1] / "fixtures" / "profiles"
H100 = FIX / "h100_eager_s128_b32"


@pytest.mark.parametrize(
    "name, cls",
    [
        ("nvjet_sm90_hsh_128x256_64x4_2x1_v_bz_coopA_TNN", "GEMM"),
        ("void cutlass::Kernel2<cutlass_80_simt_sgemm_128x32_8x5_tn_align1>(T1::Params)", "GEMM"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128", "attention"),
        ("void at::native::reduce_kernel<(int)512, (int)1, at::native::ReduceOp<float, at::native::MeanOps<float>>>",
         "normalisation"),
        ("void at::native::vectorized_elementwise_kernel<(int)4, at::native::rsqrt_kernel_cuda()>", "normalisation"),
        ("void at::native::vectorized_elementwise_kernel<(int)8, at::native::silu_kernel()>", "elementwise/activation"),
        ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda()>", "copy/memset"),
        ("void at::native::CatArrayBatchedCopy<OpaqueType<2>>", "copy/memset"),
        ("[CUDA memcpy Device-to-Host]", "copy/memset"),
        ("void at::native::reduce_kernel<ArgMaxOps<float>>", "other"),
        ("aten::addmm", "GEMM"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::mean", "normalisation"),
        ("aten::cat", "copy/memset"),
        ("aten::silu", "elementwise/activation"),
        ("aten::view", "other"),
    ],
)
def test_classify_kernel(name, cls):
    assert profiling.classify_kernel(name) == cls


@pytest.mark.parametrize(
    "name, phase",
    [
        ("latency_sensitivity:rep0/prefill", "prefill"),
        ("latency_sensitivity:rep12.decode", "decode"),
        ("rep3.prefill", "prefill"),
        ("latency_sensitivity:measured", None),
        ("latency_sensitivity:warmup0.decode", None),
        ("kernel_time.prefill", None),
    ],
)
def test_phase_of(name, phase):
    assert profiling.phase_of(name) == phase


def _write(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def test_nsys_summary_hand_computed(tmp_path):
    kern = _write(tmp_path / "kern.csv", """
NVTX Range,Style,PID,TID,NVTX Inst,Kern Inst,Total Time (ns),Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Kernel Name
latency_sensitivity:measured,PushPop,1,1,1,10,9000000,0,0,0,0,0,nvjet_gemm
latency_sensitivity:rep0.prefill,PushPop,1,1,1,2,3000000,0,0,0,0,0,nvjet_gemm
latency_sensitivity:rep0.prefill,PushPop,1,1,1,2,1000000,0,0,0,0,0,flash_fwd
latency_sensitivity:rep0.decode,PushPop,1,1,1,4,1000000,0,0,0,0,0,nvjet_gemm
latency_sensitivity:rep1.decode,PushPop,1,1,1,4,1000000,0,0,0,0,0,nvjet_gemm
latency_sensitivity:rep1.decode,PushPop,1,1,1,8,"2,000,000",0,0,0,0,0,vectorized_elementwise_kernel<silu>
""")
    proj = _write(tmp_path / "proj.csv", """
Range,Style,Total Proj Time (ns),Total Range Time (ns),Range Instances,Proj Avg (ns),Proj Med (ns),Proj Min (ns),Proj Max (ns),Proj StdDev (ns),Total GPU Ops,Avg GPU Ops,Avg Range Lvl,Avg Num Child
latency_sensitivity:measured,PushPop,20000000,21000000,1,0,0,0,0,0,0,0,0,4
latency_sensitivity:rep0.prefill,PushPop,5000000,5000000,1,0,0,0,0,0,0,0,1,0
latency_sensitivity:rep0.decode,PushPop,4000000,4000000,1,0,0,0,0,0,0,0,1,0
latency_sensitivity:rep1.decode,PushPop,6000000,6000000,1,0,0,0,0,0,0,0,1,0
""")
    s = profiling.nsys_summary(kern, proj)
    phases = {r["phase"]: r for r in s["phases"]}
    assert phases["prefill"]["busy_ms"] == pytest.approx(4.0) and phases["prefill"]["span_ms"] == pytest.approx(5.0)
    assert phases["prefill"]["idle_share"] == pytest.approx(0.2)
    assert phases["decode"]["ranges"] == 2 and phases["decode"]["count"] == 16
    assert phases["decode"]["idle_share"] == pytest.approx(1 - 4.0 / 10.0)
    shares = profiling.class_shares(s)
    assert shares["prefill"]["GEMM"] == pytest.approx(0.75) and shares["prefill"]["attention"] == pytest.approx(0.25)
    assert shares["decode"]["GEMM"] == pytest.approx(0.5)
    assert shares["decode"]["elementwise/activation"] == pytest.approx(0.5)
    assert shares["decode"]["other"] == 0.0


def test_nsys_summary_on_h100_export():
    s = profiling.nsys_summary(H100 / "nvtx_kern_sum.csv", H100 / "nvtx_gpu_proj_sum.csv")
    kern = pd.read_csv(H100 / "nvtx_kern_sum.csv")
    decode = kern[kern["NVTX Range"].str.endswith("/decode")]
    phases = {r["phase"]: r for r in s["phases"]}
    assert phases["decode"]["busy_ms"] == pytest.approx(decode["Total Time (ns)"].sum() / 1e6)
    assert phases["decode"]["count"] == decode["Kern Inst"].sum()
    assert phases["decode"]["ranges"] == 2 and phases["prefill"]["ranges"] == 2
    for phase in ("prefill", "decode"):
        shares = profiling.class_shares(s)[phase]
        assert sum(shares.values()) == pytest.approx(1.0)
        assert 0 < phases[phase]["idle_share"] < 1
    # Eager decode at batch 32 on the H100: GEMMs take most kernel time and the GPU idles most of the step.
    assert max(profiling.class_shares(s)["decode"].items(), key=lambda kv: kv[1])[0] == "GEMM"
    assert phases["decode"]["idle_share"] > 0.5


def test_nsys_summary_without_phase_ranges_says_why(tmp_path):
    kern = _write(tmp_path / "k.csv", "NVTX Range,Kern Inst,Total Time (ns),Kernel Name\nlatency_sensitivity:measured,1,5,x")
    proj = _write(tmp_path / "p.csv", "Range,Total Proj Time (ns),Range Instances\nlatency_sensitivity:measured,5,1")
    with pytest.raises(ValueError, match="capture range"):
        profiling.nsys_summary(kern, proj)


def test_ncu_summary_on_h100_export():
    s = profiling.ncu_summary(H100 / "ncu_prefill.details.csv")
    assert len(s["launches"]) == 4
    (k,) = s["kernels"]
    assert k["phase"] == "prefill" and k["kernel_class"] == "attention" and k["launches"] == 4
    # Durations 17,984 / 17,760 / 17,696 / 17,728 ns in the export: median 17.744 us.
    assert k["duration_us"] == pytest.approx(17.744)
    assert 0 < k["dram_throughput_pct"] < 100 and 0 < k["sm_throughput_pct"] < 100
    assert k["achieved_occupancy_pct"] == pytest.approx(14.125)


def _ncu_csv(path: Path, rows, banner: str = "") -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        fh.write(banner)
        w = csv.writer(fh, quoting=csv.QUOTE_ALL)
        w.writerow(["ID", "Kernel Name", "thread Domain:Push/Pop_Range:PL_Type", "Metric Name", "Metric Unit",
                    "Metric Value"])
        stack = '1 "latency_sensitivity:rep0.decode:none"'
        for metric, unit, value in rows:
            w.writerow(["0", "flash_fwd", stack, metric, unit, value])
    return path


def test_ncu_units_and_several_files(tmp_path):
    a = _ncu_csv(tmp_path / "a.csv", [("Duration", "us", "2.5"), ("DRAM Throughput", "%", "50")],
                 banner="==PROF== banner\n")
    b = _ncu_csv(tmp_path / "b.csv", [("Duration", "ns", "3,500")])
    launches = profiling.ncu_launches([a, b])
    assert [x["id"] for x in launches] == [0, 1]
    assert [x["duration_us"] for x in launches] == [2.5, 3.5]
    assert launches[0]["phase"] == "decode" and math.isnan(launches[1]["dram_throughput_pct"])
    k = profiling.ncu_summary([a, b])["kernels"][0]
    assert k["duration_us"] == pytest.approx(3.0) and k["dram_throughput_pct"] == 50


def _trace(events):
    return {"traceEvents": [{"ph": "X", **e} for e in events]}


def test_torch_summary_gpu_trace_hand_computed():
    trace = _trace([
        {"cat": "user_annotation", "name": "rep0.prefill", "ts": 0, "dur": 100, "tid": 1},
        {"cat": "user_annotation", "name": "rep0.decode", "ts": 100, "dur": 100, "tid": 1},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 10, "dur": 5, "tid": 1, "args": {"correlation": 1}},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 20, "dur": 5, "tid": 1, "args": {"correlation": 2}},
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 110, "dur": 5, "tid": 1, "args": {"correlation": 3}},
        {"cat": "cuda_runtime", "name": "cudaMemcpyAsync", "ts": 150, "dur": 5, "tid": 1, "args": {"correlation": 4}},
        {"cat": "kernel", "name": "nvjet_gemm", "ts": 30, "dur": 20, "tid": 7, "args": {"correlation": 1}},
        {"cat": "kernel", "name": "flash_fwd", "ts": 60, "dur": 20, "tid": 7, "args": {"correlation": 2}},
        {"cat": "kernel", "name": "nvjet_gemm", "ts": 120, "dur": 10, "tid": 7, "args": {"correlation": 3}},
        {"cat": "gpu_memcpy", "name": "Memcpy DtoH", "ts": 170, "dur": 10, "tid": 7, "args": {"correlation": 4}},
        {"cat": "kernel", "name": "orphan", "ts": 300, "dur": 10, "tid": 7, "args": {"correlation": 99}},
    ])
    s = profiling.torch_summary(trace)
    assert s["basis"] == "gpu kernels"
    phases = {r["phase"]: r for r in s["phases"]}
    assert phases["prefill"]["span_ms"] == pytest.approx(0.050)  # 30 .. 80 us
    assert phases["prefill"]["busy_ms"] == pytest.approx(0.040) and phases["prefill"]["idle_share"] == pytest.approx(0.2)
    assert phases["decode"]["span_ms"] == pytest.approx(0.060) and phases["decode"]["count"] == 2
    shares = profiling.class_shares(s)
    assert shares["prefill"] == pytest.approx({"GEMM": 0.5, "attention": 0.5, "normalisation": 0,
                                               "elementwise/activation": 0, "copy/memset": 0, "other": 0})
    assert shares["decode"]["copy/memset"] == pytest.approx(0.5)


def test_torch_summary_cpu_trace_self_time(tmp_path):
    trace = _trace([
        {"cat": "user_annotation", "name": "rep0.decode", "ts": 0, "dur": 100, "tid": 1},
        {"cat": "cpu_op", "name": "aten::linear", "ts": 10, "dur": 40, "tid": 1},
        {"cat": "cpu_op", "name": "aten::addmm", "ts": 15, "dur": 30, "tid": 1},
        {"cat": "cpu_op", "name": "aten::silu", "ts": 60, "dur": 20, "tid": 1},
        {"cat": "cpu_op", "name": "aten::silu", "ts": 200, "dur": 20, "tid": 1},  # outside the phase
    ])
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(trace, fh)
    s = profiling.torch_summary(path)
    assert s["basis"] == "cpu ops"
    (decode,) = s["phases"]
    assert decode["busy_ms"] == pytest.approx(0.060)  # linear self 10 + addmm 30 + silu 20 (us)
    assert decode["idle_share"] == pytest.approx(0.4)
    shares = profiling.class_shares(s)["decode"]
    assert shares["GEMM"] == pytest.approx(40 / 60) and shares["elementwise/activation"] == pytest.approx(20 / 60)


def test_torch_summary_without_phases_says_so():
    with pytest.raises(ValueError, match="record_function"):
        profiling.torch_summary(_trace([{"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1, "tid": 1}]))


def _cell_json(tmp_path, status="ok"):
    cell = {"cell": {"model": "m", "dtype": "fp16", "backend": "eager", "seq_len": 128, "batch": 32},
            "status": status, "error": None if status == "ok" else {"message": "OutOfMemoryError during measure: x"},
            "metrics": {"prefill_p50_ms": 50.0, "decode_p50_ms_per_tok": 30.0}}
    path = tmp_path / f"cell_{status}.json"
    path.write_text(json.dumps(cell))
    return path


def test_summaries_and_profile_report(tmp_path):
    nsys = steps.summarize_profile("nsys", {"nvtx_kern_sum": str(H100 / "nvtx_kern_sum.csv"),
                                            "nvtx_gpu_proj_sum": str(H100 / "nvtx_gpu_proj_sum.csv")},
                                   str(_cell_json(tmp_path)), str(tmp_path / "nsys.json"))
    ncu = steps.summarize_profile("ncu", {"details": [str(H100 / "ncu_prefill.details.csv")]},
                                  str(_cell_json(tmp_path)), str(tmp_path / "ncu.json"))
    failed = steps.summarize_profile("torch", {"trace": "unused"}, str(_cell_json(tmp_path, "oom")),
                                     str(tmp_path / "torch.json"))
    assert nsys["status"] == "ok" and ncu["kernels"] and failed["status"] == "oom" and "classes" not in failed
    text = steps.profile_report([str(tmp_path / f) for f in ("nsys.json", "ncu.json", "torch.json")],
                                str(tmp_path / "out" / "report.md"), str(tmp_path / "out"))
    assert "Kernel classes by phase (Nsight Systems, gpu kernels)" in text
    assert "| s128×b32 prefill | s128×b32 decode |" in text
    assert "Nsight Compute" in text and "17.7" in text
    assert "oom: OutOfMemoryError during measure" in text
    assert "GEMM takes" in text and "the GPU idles" in text
    classes = pd.read_csv(tmp_path / "out" / "kernel_classes.csv")
    assert set(classes["tool"]) == {"nsys"} and len(classes) == 2 * len(profiling.KERNEL_CLASSES)
    assert (tmp_path / "out" / "ncu_kernels.csv").exists() and (tmp_path / "out" / "phases.csv").exists()


def test_main_report_includes_profiles_only_when_given():
    summary = json.loads(json.dumps(profiling.nsys_summary(H100 / "nvtx_kern_sum.csv", H100 / "nvtx_gpu_proj_sum.csv")))
    summary.update(status="ok", cell={"model": "m", "dtype": "fp16", "backend": "eager", "seq_len": 128, "batch": 32})
    without = report.build_report([], [], {})
    with_profiles = report.build_report([], [], {}, profiles=[summary])
    assert "## Profiles" not in without and "## Profiles" in with_profiles


S4096 = FIX / "h100_eager_s4096_b1"


def test_nsys_and_ncu_from_the_profile_rules():
    """Exports made by `snakemake profile_all` on the H100 (phase ranges rep<i>.prefill / rep<i>.decode)."""
    s = profiling.nsys_summary(S4096 / "nvtx_kern_sum.csv", S4096 / "nvtx_gpu_proj_sum.csv")
    phases = {r["phase"]: r for r in s["phases"]}
    assert phases["prefill"]["ranges"] == phases["decode"]["ranges"] == 2
    # 36 layers x 31 decode steps: one attention kernel per layer and step, in each of the 2 reps.
    attention = [r for r in s["classes"] if r["phase"] == "decode" and r["kernel_class"] == "attention"][0]
    assert attention["count"] == 2 * 31 * 36
    assert phases["decode"]["idle_share"] > 0.5 > phases["prefill"]["idle_share"]
    ncu = profiling.ncu_summary(S4096 / "ncu_decode.details.csv")
    assert {k["phase"] for k in ncu["kernels"]} == {"decode"}
    assert all(k["kernel_class"] == "attention" and k["duration_us"] > 0 for k in ncu["kernels"])


def test_torch_summary_on_h100_trace():
    s = profiling.torch_summary(FIX / "h100_torch_eager_s16_b2" / "trace.json.gz")
    assert s["basis"] == "gpu kernels"
    phases = {r["phase"]: r for r in s["phases"]}
    assert phases["prefill"]["ranges"] == phases["decode"]["ranges"] == 1
    assert 0 < phases["decode"]["busy_ms"] < phases["decode"]["span_ms"]
    shares = profiling.class_shares(s)
    assert max(shares["decode"], key=shares["decode"].get) == "GEMM"
    assert shares["decode"]["attention"] > 0


def test_profile_columns_name_the_backend_when_cells_differ_only_by_it():
    base = json.loads(json.dumps(profiling.nsys_summary(H100 / "nvtx_kern_sum.csv", H100 / "nvtx_gpu_proj_sum.csv")))
    cell = {"model": "m", "dtype": "fp16", "seq_len": 128, "batch": 1}
    a = dict(base, status="ok", cell=dict(cell, backend="eager"))
    b = dict(base, status="ok", cell=dict(cell, backend="graph"))
    assert "| s128×b1 eager prefill | s128×b1 eager decode | s128×b1 graph prefill |" in profiles.profile_classes_table([a, b])
    assert "| s128×b1 prefill | s128×b1 decode |" in profiles.profile_classes_table([a])
