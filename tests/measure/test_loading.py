"""Model loading stage by stage: a materialised random-weight checkpoint loads back to the same model."""

import json
import os
import sys

import pytest
import torch

from conftest import cell_spec
from latency_sensitivity.measure import loading
from latency_sensitivity.report import model_loading
from latency_sensitivity.measure import model as cell_model
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    info = loading.materialize(cell_spec(), out)
    assert info["files"] == ["model.safetensors"] and info["bytes"] > 1_000_000
    return out


def test_loaded_model_is_the_materialised_one(checkpoint):
    r, model = loading.measure_loading(checkpoint, "cpu", "fp32", seq_len=16)
    reference = cell_model.build_model(cell_spec())
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(input_ids=prompt).logits, reference(input_ids=prompt).logits)
    for stage in ("read_s", "deserialise_s", "instantiate_s", "host_to_device_s", "first_forward_s", "warm_forward_s"):
        assert r[stage] >= 0
    assert r["bytes"] == (checkpoint / "model.safetensors").stat().st_size
    assert r["read_gb_s"] == pytest.approx(r["bytes"] / r["read_s"] / 1e9)
    assert r["disk_read_gb_s"] > 0 and r["host_to_device_gb_s"] is None  # nothing to copy on the CPU
    assert r["load_total_s"] == pytest.approx(sum(r[k] for k in ("read_s", "deserialise_s", "instantiate_s",
                                                                 "host_to_device_s", "first_forward_s")))


def test_a_freshly_written_checkpoint_is_read_cold(tmp_path):
    # A file just written has dirty pages, which posix_fadvise(DONTNEED) alone leaves in the page cache:
    # the read then measured the cache, faster than the cold read of the same disk.
    path = tmp_path / "fresh.bin"
    path.write_bytes(os.urandom(4 << 20))
    assert loading.resident_fraction(path) == 1.0
    assert loading.drop_from_page_cache(path)
    assert loading.resident_fraction(path) == 0.0


def test_loading_records_how_much_of_the_file_was_cached(checkpoint):
    r, _ = loading.measure_loading(checkpoint, "cpu", "fp32", seq_len=8)
    assert r["read_resident_fraction"] == 0.0 and r["read_cold"] is True


def test_a_read_faster_than_its_ceiling_is_reported_as_suspect():
    r = {"status": "ok", "model": "tiny", "dtype": "fp32", "device": "cpu", "bytes": 2**24, "read_cold": True,
         "read_s": 0.014, "read_gb_s": 1.21, "disk_read_gb_s": 0.20, "deserialise_s": 0.01, "instantiate_s": 0.01,
         "host_to_device_s": 0.0, "host_to_device_gb_s": None, "first_forward_s": 0.1, "warm_forward_s": 0.01,
         "load_total_s": 0.134}
    text = model_loading.loading_section([r])
    assert "Suspect:" in text and "faster than the cold sequential read of the same disk (0.20 GB/s)" in text
    assert "Suspect:" not in model_loading.loading_section([dict(r, read_gb_s=0.19)])
    assert "30% of the checkpoint was still in the page cache" in model_loading.loading_section(
        [dict(r, read_gb_s=0.19, read_resident_fraction=0.3)])


def test_the_jobs_record_their_wall_time(tmp_path):
    """materialize writes its record beside the weights; the loading record carries both jobs' wall times."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "load.json"
    assert loading.main(["materialize", "--model", "tiny", "--model-kind", "architecture", "--model-location",
                         cell_spec().model_location, "--dtype", "fp32", "--out", str(ckpt)]) == 0
    written = json.loads((ckpt / loading.MATERIALIZED).read_text())
    assert written["files"] == ["model.safetensors"] and written["bytes"] > 0
    assert loading.main(["measure", "--checkpoint", str(ckpt), "--device", "cpu", "--dtype", "fp32", "--seq", "8",
                         "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["status"] == "ok" and r["bytes"] == written["bytes"]  # the record is not counted as weights
    if sys.platform.startswith("linux"):
        assert written["job_s"] > 0 and r["checkpoint_job_s"] == written["job_s"] and r["job_s"] > 0
    # the seconds each waited for a GPU another process held: none claimed on the CPU
    assert written["gpu_wait_s"] is r["gpu_wait_s"] is r["checkpoint_gpu_wait_s"] is None


def test_cli_records_a_failure_as_data(tmp_path):
    out = tmp_path / "load.json"
    assert loading.main(["measure", "--checkpoint", str(tmp_path), "--device", "cpu", "--dtype", "fp32",
                         "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["status"] == "error" and "no *.safetensors" in r["error"]
    assert r["job_s"] is None if not sys.platform.startswith("linux") else r["job_s"] > 0  # the job's wall time
    text = model_loading.loading_section([r])
    assert "Failed:" in text and "safetensors" in text


def test_loading_section_hand_made():
    r = {"status": "ok", "model": "qwen2", "dtype": "fp16", "device": "cuda", "bytes": 6 * 2**30, "read_cold": True,
         "read_s": 3.0, "read_gb_s": 2.147, "disk_read_gb_s": 2.5, "deserialise_s": 0.5, "instantiate_s": 0.1,
         "host_to_device_s": 0.6, "host_to_device_gb_s": 10.7, "h2d_pinned_gb_s": 25.0, "h2d_pageable_gb_s": 12.0,
         "first_forward_s": 0.9, "warm_forward_s": 0.03, "load_total_s": 5.1}
    text = model_loading.loading_section([r])
    assert "loading jobs' wall time" not in text  # a record without the job's time (written before it was kept)
    assert ("wall time (a process each, once per model, dtype and device; the checkpoint is written once before, "
            "by a job of its own, once per model and dtype): qwen2 fp16 on cuda 21.5 s (its checkpoint written by a "
            "job of 9.0 s).") in model_loading.loading_section([dict(r, job_s=21.46, checkpoint_job_s=9.01)])
    assert "on cuda 21.5 s." in model_loading.loading_section([dict(r, job_s=21.46, checkpoint_job_s=None)])
    # a job that waited for the GPU another process held says how long, beside what its checkpoint cost
    assert ("on cuda 21.5 s (3.0 s of it waiting for a GPU; its checkpoint written by a job of 9.0 s).") in \
        model_loading.loading_section([dict(r, job_s=21.46, gpu_wait_s=3.01, checkpoint_job_s=9.01)])
    assert "on cuda 21.5 s." in model_loading.loading_section([dict(r, job_s=21.46, gpu_wait_s=0.01)])
    assert "on cuda 21.5 s (its checkpoint written by a job of 9.0 s, 2.5 s of it waiting for a GPU)." in \
        model_loading.loading_section([dict(r, job_s=21.46, checkpoint_job_s=9.01, checkpoint_gpu_wait_s=2.5)])
    assert "| qwen2 | fp16 | cuda | 6144 | 3.000 (2.15 GB/s; ceiling 2.50 GB/s) |" in text
    assert "0.600 (10.70 GB/s; ceiling 25.00 GB/s / 12.00 GB/s)" in text and "| read |" in text
    assert "Amortised" not in text  # without the run's cells

    import pandas as pd

    cells = pd.DataFrame([
        {"model": "qwen2", "dtype": "fp16", "backend": "graph", "seq_len": 128, "batch": 1, "status": "ok",
         "flag": "ok", "request_p50_ms": 200.0, "e2e_p50_ms": 190.0},
        {"model": "qwen2", "dtype": "fp16", "backend": "eager", "seq_len": 4096, "batch": 1, "status": "ok",
         "flag": "ok", "request_p50_ms": 1275.0, "e2e_p50_ms": 1200.0},
        {"model": "qwen2", "dtype": "fp16", "backend": "eager", "seq_len": 8192, "batch": 64, "status": "oom",
         "flag": "oom", "request_p50_ms": None, "e2e_p50_ms": None},
        {"model": "other", "dtype": "fp16", "backend": "eager", "seq_len": 128, "batch": 1, "status": "ok",
         "flag": "ok", "request_p50_ms": 1.0, "e2e_p50_ms": 1.0},  # another model: not this load's requests
    ])
    text = model_loading.loading_section([r], cells)
    assert ("- qwen2 fp16: the 5.10 s cold start costs as much as 4.0–26 requests of this run (seq_len 4096 × "
            "batch 1 eager, 1275.00 ms – seq_len 128 × batch 1 graph, 200.00 ms, p50 per request); spread over "
            "1000 requests it adds 5.10 ms to each") in text
