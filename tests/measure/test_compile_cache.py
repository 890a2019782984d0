"""Where inductor's and Triton's caches go: a folder per device and versions, a user's own folder kept; and
Python's bytecode where it would be compiled again in every process."""

import os
import sys
from pathlib import Path

from latency_sensitivity.measure import compile_cache

SRC = str(Path(__file__).resolve().parents[2] / "src")

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


def package_without_bytecode(folder: Path, name: str) -> Path:
    """A package `name` under `folder` with no bytecode beside its source."""
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text("VALUE = 42\n")
    return folder / name / "__init__.py"


def test_bytecode_is_cached_under_the_root_only_where_python_would_compile_again(tmp_path, monkeypatch):
    """Writing bytecode off and the probed package installed without it: the process caches its bytecode under
    root/bytecode/ (and tells the processes it starts); writing on, installed bytecode, or a user's prefix: as it
    was."""
    source = package_without_bytecode(tmp_path / "site", "bare_package")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert compile_cache.bytecode_cache(tmp_path / "root", {}, "bare_package") == {"dir": None, "set_by": "default"}
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    env = {"PYTHONPYCACHEPREFIX": "/somewhere"}
    assert compile_cache.bytecode_cache(tmp_path / "root", env, "bare_package") == {"dir": "/somewhere",
                                                                                     "set_by": "user"}
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    record = compile_cache.bytecode_cache(tmp_path / "root", env, "bare_package")
    folder = str((tmp_path / "root" / "bytecode").resolve())
    assert record == {"dir": folder, "set_by": "workflow"} and env["PYTHONPYCACHEPREFIX"] == folder
    assert "PYTHONDONTWRITEBYTECODE" not in env  # the processes it starts write there too
    assert sys.pycache_prefix == folder and sys.dont_write_bytecode is False
    assert not compile_cache.has_bytecode("bare_package") and source.is_file()
    # asked again (a process this one started, which inherits the prefix): the same folder, still the workflow's
    assert compile_cache.bytecode_cache(tmp_path / "root", env, "bare_package") == record


def test_a_process_with_bytecode_off_writes_it_under_the_root_and_a_later_one_reads_it(tmp_path):
    """Two fresh interpreters with PYTHONDONTWRITEBYTECODE=1: the first writes the package's bytecode under
    root/bytecode/ (nothing beside the source), the second finds it there and writes nothing new."""
    import subprocess

    package_without_bytecode(tmp_path / "site", "bare_package")
    code = ("import sys; from latency_sensitivity.measure import compile_cache; "
            f"r = compile_cache.bytecode_cache({str(tmp_path / 'root')!r}, module='bare_package'); "
            "import bare_package, importlib.util; "
            "print(r['set_by'], importlib.util.cache_from_source(bare_package.__file__))")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), SRC])}
    env.pop("PYTHONPYCACHEPREFIX", None)
    def run():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        return out.stdout.split(), {p: p.stat().st_mtime_ns for p in (tmp_path / "root").rglob("*.pyc")}

    (first, written), (second, after) = run(), run()
    assert first == second and first[0] == "workflow"
    cached = Path(first[1])
    assert cached in written and cached.is_relative_to((tmp_path / "root" / "bytecode").resolve())
    assert not (tmp_path / "site" / "bare_package" / "__pycache__").exists()
    assert after == written  # the second process read it and wrote nothing
