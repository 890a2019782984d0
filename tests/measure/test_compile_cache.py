"""Where inductor's and Triton's caches go: a folder per device and versions, a user's own folder kept."""

from latency_sensitivity.measure import compile_cache

V1 = {"torch": "2.11.0+cu130", "triton": "3.6.0"}


def test_one_folder_per_device_and_versions(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "device_name", lambda device, environ=None: "NVIDIA H200" if device == "cuda"
                        else "cpu-x86_64")
    key = compile_cache.cache_key("cuda", {}, V1)
    assert key == "nvidia-h200-torch2.11.0+cu130-triton3.6.0"
    assert compile_cache.cache_key("cuda", {}, {**V1, "torch": "2.13.0"}) != key
    assert compile_cache.cache_key("cuda", {}, {**V1, "triton": "3.7.0"}) != key
    assert compile_cache.cache_key("cpu", {}, V1) != key
    env = {}
    record = compile_cache.configure(tmp_path / "cache", "cuda", env, V1)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cache" / key / "inductor").resolve())
    assert env["TRITON_CACHE_DIR"] == str((tmp_path / "cache" / key / "triton").resolve())
    assert env["TRITON_CACHE_AUTOTUNING"] == "1" and record["triton_autotuning_cached"]
    assert record["inductor"]["set_by"] == record["triton"]["set_by"] == "workflow" and record["key"] == key
    assert (tmp_path / "cache" / key / "inductor").is_dir()
    assert record["steps"] == str((tmp_path / "cache" / key / "steps").resolve())  # saved compiled steps


def test_a_users_cache_folder_is_kept_and_recorded(tmp_path):
    env = {"TORCHINDUCTOR_CACHE_DIR": "/mine/inductor"}
    record = compile_cache.configure(tmp_path, "cpu", env, V1)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/mine/inductor"
    assert record["inductor"] == {"dir": "/mine/inductor", "set_by": "user"}
    assert record["triton"]["set_by"] == "workflow"


def test_no_root_leaves_torchs_defaults(tmp_path):
    env = {}
    record = compile_cache.configure(None, "cpu", env, V1)
    assert env == {} and record["inductor"] == {"dir": None, "set_by": "default"} and record["steps"] is None


def test_device_name_without_nvml_is_named_unknown(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert compile_cache.device_name("cuda", {}) == "cuda-unknown"
    assert compile_cache.device_name("cpu", {}).startswith("cpu-")


def test_triton_uses_torchs_ptxas_from_the_start(tmp_path, monkeypatch):
    """The ptxas inductor would pick the first time it compiles is picked before anything compiles, so a Triton
    kernel is built by the same ptxas whatever ran before it in the process; a user's choice is kept."""
    ptxas = tmp_path / "torch" / "bin" / "ptxas"
    monkeypatch.setattr(compile_cache, "torch_ptxas", lambda: str(ptxas))
    env = {}
    record = compile_cache.configure(None, "cuda", env, V1)
    assert env["TRITON_PTXAS_PATH"] == str(ptxas) and record["ptxas"] == {"path": str(ptxas), "set_by": "workflow"}
    env = {"TRITON_PTXAS_PATH": "/opt/cuda/bin/ptxas"}
    assert compile_cache.configure(None, "cuda", env, V1)["ptxas"]["set_by"] == "user"
    assert env["TRITON_PTXAS_PATH"] == "/opt/cuda/bin/ptxas"
    monkeypatch.setattr(compile_cache, "torch_ptxas", lambda: None)
    env = {}
    assert compile_cache.configure(None, "cpu", env, V1)["ptxas"] == {"path": None, "set_by": "default"}
    assert "TRITON_PTXAS_PATH" not in env


def test_torchs_ptxas_is_found_without_importing_torch(tmp_path, monkeypatch):
    import importlib.machinery

    package = tmp_path / "torch"
    (package / "bin").mkdir(parents=True)
    (package / "bin" / "ptxas").write_text("#!/bin/sh\n")
    spec = importlib.machinery.ModuleSpec("torch", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    monkeypatch.setattr(compile_cache.util, "find_spec", lambda name: spec)
    assert compile_cache.torch_ptxas() is None  # not executable
    (package / "bin" / "ptxas").chmod(0o755)
    assert compile_cache.torch_ptxas() == str(package / "bin" / "ptxas")


def test_device_name_follows_cuda_visible_devices_like_the_telemetry(monkeypatch):
    """The GPU named is the process's first visible device, found by index or UUID as the telemetry finds it."""
    import sys
    import types

    names = {0: "NVIDIA H100", 3: "NVIDIA H200"}
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 4,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}000",
        nvmlDeviceGetName=lambda h: names.get(h, "other"),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert compile_cache.device_name("cuda", {}) == "NVIDIA H100"
    assert compile_cache.device_name("cuda", {"CUDA_VISIBLE_DEVICES": "3,1"}) == "NVIDIA H200"
    assert compile_cache.device_name("cuda", {"CUDA_VISIBLE_DEVICES": "GPU-3000"}) == "NVIDIA H200"
