"""environment.collect on a CPU machine, and its fallbacks."""

from __future__ import annotations

import json
import os
import platform
import sys
import types
from datetime import datetime

import pytest
import torch

from latency_sensitivity.measure import environment
from latency_sensitivity.measure.environment import ENVIRONMENT_KEYS, collect, cpu_model, driver_version


def test_collect_cpu_keys_and_values():
    env = collect("cpu")
    assert list(env) == list(ENVIRONMENT_KEYS)
    assert env["torch"] == torch.__version__
    assert env["python"] == platform.python_version()
    assert env["device"] == "cpu"
    assert isinstance(env["device_name"], str) and env["device_name"].strip()
    assert env["device_name"] == env["cpu_model"]
    assert env["device_count"] == 1
    assert env["gpu_memory_total_mb"] is None
    assert env["cpu_count"] == os.cpu_count()
    assert env["torch_num_threads"] == torch.get_num_threads()
    assert env["cuda_runtime"] == torch.version.cuda
    ts = datetime.fromisoformat(env["timestamp"])
    assert ts.utcoffset().total_seconds() == 0
    json.dumps(env)  # serialisable as it stands


def test_collect_reads_versions_and_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    env = collect("cpu")
    assert env["cuda_visible_devices"] == "1,0"
    transformers = pytest.importorskip("transformers")
    assert env["transformers"] == transformers.__version__
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert collect("cpu")["cuda_visible_devices"] is None


def test_collect_missing_pieces_are_none(monkeypatch):
    from importlib import metadata

    def no_dist(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", no_dist)
    monkeypatch.setitem(sys.modules, "snakemake", None)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    env = collect("cpu")
    assert env["snakemake"] is None
    assert env["driver"] is None
    assert env["cudnn"] is None
    assert env["torch"] == torch.__version__


def test_collect_cuda_without_gpu_does_not_raise():
    env = collect("cuda:0")
    assert env["device"] == "cuda"
    if not torch.cuda.is_available():
        assert env["device_name"] is None
        assert env["gpu_memory_total_mb"] is None


def test_cpu_model_from_cpuinfo(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Fake 1234\n\n")
    assert cpu_model(str(p)) == "Intel(R) Xeon(R) Fake 1234"


def test_cpu_model_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(platform, "processor", lambda: "x86_64-fallback")
    assert cpu_model(str(tmp_path / "missing")) == "x86_64-fallback"
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # no model name: an index is not a model
    assert cpu_model(str(p)) == "x86_64-fallback"


def test_driver_version_from_fake_nvml():
    calls = []
    fake = types.SimpleNamespace(
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"550.54.15",
    )
    assert driver_version(fake) == "550.54.15"
    assert calls == ["init", "shutdown"]

    def fail():
        raise OSError("no driver")

    assert driver_version(types.SimpleNamespace(nvmlInit=fail)) is None


def test_collect_uses_nvml_driver(monkeypatch):
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlSystemGetDriverVersion=lambda: "560.1"
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert collect("cpu")["driver"] == "560.1"
    assert environment.collect("cpu")["device"] == "cpu"


def test_versions_of_the_measured_paths(monkeypatch):
    """torch, transformers and triton: the installed versions, None for one that is not installed."""
    from importlib import metadata

    import transformers

    def triton_version():
        try:
            return metadata.version("triton")
        except metadata.PackageNotFoundError:
            return None

    v = environment.versions()
    assert v == {"torch": torch.__version__, "transformers": transformers.__version__, "triton": v["triton"]}
    assert v["triton"] == (triton_version() or environment.dist_version("pytorch-triton"))
    assert collect("cpu")["triton"] == v["triton"]
    monkeypatch.setattr(environment, "dist_version", lambda name: None)
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    assert environment.versions()["triton"] is None
