"""GpuSampler against a scripted fake of the `pynvml` module (CPU only), and nvtx_range."""

from __future__ import annotations

import sys
import time
import types
from collections import namedtuple

import pytest

from latency_sensitivity.measure import telemetry
from latency_sensitivity.columns import TELEMETRY_COLUMNS, Column
from latency_sensitivity.measure.telemetry import SUMMARY_KEYS, GpuSampler, energy_per_token_j, parse_visible_devices, summarize_samples
from latency_sensitivity.engine.nvtx import nvtx_range

Util = namedtuple("Util", "gpu memory")
Mem = namedtuple("Mem", "total free used")


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - the pynvml name
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    pass


class NVMLError_Unknown(NVMLError):  # noqa: N801
    pass


class FakeNVML:
    """Module-like stand-in for pynvml: 4 GPUs; per-query scripted values (the last one repeats)."""

    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0
    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_Unknown = NVMLError_Unknown

    def __init__(self, n_devices=4, init_error=None, unsupported=(), script=None):
        self.uuids = [f"GPU-{i}{i}{i}{i}aaaa-0000-1111-2222-33334444555{i}" for i in range(n_devices)]
        self.init_error = init_error
        self.unsupported = set(unsupported)
        self.script = {
            "util": [Util(50, 20)],
            "sm": [1980],
            "mem": [2619],
            "power": [300_000],
            "temp": [60],
            "meminfo": [Mem(80 * 2**30, 70 * 2**30, 10 * 2**30)],
            "energy": [1_000_000, 1_250_500],
        }
        self.script.update(script or {})
        self.pos = {k: 0 for k in self.script}
        self.calls = []  # (query, nvml index)
        self.inits = 0
        self.shutdowns = 0

    def _next(self, key, handle):
        self.calls.append((key, handle))
        if key in self.unsupported:
            raise NVMLError_NotSupported("Not Supported")
        seq = self.script[key]
        i = self.pos[key]
        self.pos[key] = i + 1
        v = seq[min(i, len(seq) - 1)]
        if isinstance(v, Exception):
            raise v
        return v

    def nvmlInit(self):  # noqa: N802
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self):  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):  # noqa: N802
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        if not 0 <= i < len(self.uuids):
            raise NVMLError("Invalid Argument")
        return ("handle", i)

    def nvmlDeviceGetUUID(self, h):  # noqa: N802
        return self.uuids[h[1]]

    def nvmlDeviceGetHandleByUUID(self, u):  # noqa: N802
        for i, x in enumerate(self.uuids):
            if x == u:
                return ("handle", i)
        raise NVMLError("Not Found")

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        return self._next("util", h)

    def nvmlDeviceGetClockInfo(self, h, clock):  # noqa: N802
        return self._next({1: "sm", 2: "mem"}[clock], h)

    def nvmlDeviceGetPowerUsage(self, h):  # noqa: N802
        return self._next("power", h)

    def nvmlDeviceGetTemperature(self, h, sensor):  # noqa: N802
        assert sensor == 0
        return self._next("temp", h)

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        return self._next("meminfo", h)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):  # noqa: N802
        return self._next("energy", h)


def make(fake, device_index=0, visible=None, interval_s=0.002):
    return GpuSampler(device_index, interval_s, nvml=fake, visible_devices=visible, use_torch=False)


def test_background_sampling_produces_samples():
    fake = FakeNVML()
    with make(fake, interval_s=0.002) as s:
        assert s.available and s.reason is None
        time.sleep(0.05)
    assert len(s.samples) >= 3  # start + several polls + stop
    assert set(s.samples[0]) == set(telemetry.SAMPLE_FIELDS)
    ts = [x["t"] for x in s.samples]
    assert ts == sorted(ts)
    first = s.samples[0]
    assert first["gpu_util_pct"] == 50 and first["mem_util_pct"] == 20
    assert first["sm_clock_mhz"] == 1980 and first["mem_clock_mhz"] == 2619
    assert first["power_w"] == pytest.approx(300.0)
    assert first["temperature_c"] == 60
    assert first["device_used_mb"] == pytest.approx(10 * 1024)
    summ = s.summary()
    assert summ["n_samples"] == len(s.samples)
    assert summ["energy_j"] == pytest.approx(250.5)  # (1_250_500 - 1_000_000) mJ
    assert fake.shutdowns == fake.inits == 1
    # sampling really stopped
    n = len(s.samples)
    time.sleep(0.02)
    assert len(s.samples) == n


def test_summary_exact_medians_and_extremes():
    fake = FakeNVML(
        script={
            "util": [Util(10, 1), Util(90, 2), Util(40, 3), Util(100, 4)],
            "sm": [1500, 1980, 1700, 1410],
            "mem": [2619, 2619, 1593, 2619],
            "power": [100_000, 400_500, 250_000, 350_000],
            "temp": [55, 71, 68, 70],
            "meminfo": [Mem(0, 0, 2**30), Mem(0, 0, 3 * 2**30), Mem(0, 0, 2 * 2**30), Mem(0, 0, 2**29)],
            "energy": [5_000, 7_500],
        }
    )
    s = make(fake, interval_s=60.0)  # the thread never gets to poll: samples are start, 2 polls, stop
    s.start()
    s.poll()
    s.poll()
    s.stop()
    assert len(s.samples) == 4
    summ = s.summary()
    assert list(summ) == list(SUMMARY_KEYS)
    assert summ["gpu_util_p50_pct"] == 65.0  # median of 10, 90, 40, 100
    assert summ["gpu_util_max_pct"] == 100.0
    assert summ["sm_clock_p50_mhz"] == 1600.0  # median of 1500, 1980, 1700, 1410
    assert summ["sm_clock_min_mhz"] == 1410.0
    assert summ["sm_clock_start_mhz"] == 1500.0
    assert summ["sm_clock_end_mhz"] == 1410.0
    assert summ["mem_clock_p50_mhz"] == 2619.0
    assert summ["power_p50_w"] == pytest.approx(300.0)  # (250 + 350) / 2
    assert summ["power_max_w"] == pytest.approx(400.5)
    assert summ["temperature_max_c"] == 71.0
    assert summ["device_used_max_mb"] == 3072.0
    assert summ["energy_j"] == pytest.approx(2.5)
    assert summ["n_samples"] == 4
    assert energy_per_token_j(summ, 10) == pytest.approx(0.25)


def test_summarize_samples_odd_count_and_missing_values():
    samples = [
        {"t": 0.0, "gpu_util_pct": 30, "sm_clock_mhz": None, "power_w": 100.0},
        {"t": 0.1, "gpu_util_pct": None, "sm_clock_mhz": 1200, "power_w": 300.0},
        {"t": 0.2, "gpu_util_pct": 10, "sm_clock_mhz": 1000, "power_w": 200.0},
        {"t": 0.3, "gpu_util_pct": 20, "sm_clock_mhz": 1100, "power_w": None},
    ]
    summ = summarize_samples(samples, energy_start_mj=None, energy_end_mj=500)
    assert summ["gpu_util_p50_pct"] == 20.0
    assert summ["sm_clock_p50_mhz"] == 1100.0
    assert summ["sm_clock_start_mhz"] is None  # the first sample had no clock
    assert summ["sm_clock_end_mhz"] == 1100.0
    assert summ["power_p50_w"] == 200.0
    assert summ["temperature_max_c"] is None
    assert summ["energy_j"] is None
    assert summ["n_samples"] == 4


def test_not_supported_fields_are_none_while_others_sample():
    fake = FakeNVML(unsupported={"power", "energy", "temp"})
    with make(fake) as s:
        time.sleep(0.02)
    assert s.available
    assert len(s.samples) >= 2
    for x in s.samples:
        assert x["power_w"] is None and x["temperature_c"] is None
        assert x["gpu_util_pct"] == 50 and x["sm_clock_mhz"] == 1980
    summ = s.summary()
    assert summ["power_p50_w"] is None and summ["power_max_w"] is None
    assert summ["temperature_max_c"] is None
    assert summ["energy_j"] is None
    assert summ["gpu_util_p50_pct"] == 50.0
    assert energy_per_token_j(summ, 100) is None
    assert s.unsupported_fields == {"power", "energy", "temperature"}
    # A field refused for good is not asked again on every poll.
    assert sum(1 for k, _ in fake.calls if k == "power") == 1


def test_transient_error_only_blanks_that_sample():
    fake = FakeNVML(script={"sm": [NVMLError_Unknown("Unknown Error"), 1800, 1800]})
    s = make(fake, interval_s=60.0)
    s.start()
    s.poll()
    s.stop()
    assert [x["sm_clock_mhz"] for x in s.samples] == [None, 1800, 1800]
    assert "sm_clock" not in s.unsupported_fields
    assert s.summary()["sm_clock_start_mhz"] is None


def test_init_failure_makes_a_noop_sampler():
    fake = FakeNVML(init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))
    s = make(fake)
    assert s.available is False
    assert "NVML" in s.reason and "LibraryNotFound" in s.reason
    with s:
        time.sleep(0.01)
    assert s.samples == []
    summ = s.summary()
    assert summ["n_samples"] == 0
    assert all(summ[k] is None for k in SUMMARY_KEYS if k != "n_samples")
    assert fake.calls == []


def test_missing_pynvml_module_makes_a_noop_sampler(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    s = GpuSampler(0, 0.002)
    assert s.available is False and "pynvml" in s.reason
    s.start()
    s.stop()
    assert s.summary()["n_samples"] == 0


def test_default_nvml_is_the_pynvml_module(monkeypatch):
    fake = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s = GpuSampler(2, 0.002, use_torch=False)
    assert s.available and s.nvml_index == 2


def test_device_index_beyond_visible_devices_is_unavailable():
    fake = FakeNVML()
    s = make(fake, device_index=2, visible="2,3")
    assert not s.available and "CUDA_VISIBLE_DEVICES" in s.reason
    assert fake.shutdowns == fake.inits == 1


@pytest.mark.parametrize(
    ("visible", "device_index", "nvml_index"),
    [
        (None, 1, 1),
        ("2,3", 1, 3),
        ("2,3", 0, 2),
        (" 3 , 0", 0, 3),
    ],
)
def test_cuda_visible_devices_integer_mapping(visible, device_index, nvml_index):
    fake = FakeNVML()
    with make(fake, device_index=device_index, visible=visible) as s:
        pass
    assert s.available, s.reason
    assert s.nvml_index == nvml_index
    assert {h for _, h in fake.calls} == {("handle", nvml_index)}


def test_cuda_visible_devices_env_var_is_read(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    fake = FakeNVML()
    s = GpuSampler(1, 0.002, nvml=fake, use_torch=False)
    assert s.nvml_index == 3


def test_cuda_visible_devices_uuid_mapping():
    fake = FakeNVML()
    full = fake.uuids[3]
    s = make(fake, device_index=1, visible=f"{fake.uuids[0]},{full}")
    assert s.available and s.nvml_index == 3
    # CUDA accepts a unique prefix of the UUID too
    s = make(FakeNVML(), device_index=0, visible="GPU-2222")
    assert s.available and s.nvml_index == 2
    # an unknown UUID leaves the sampler unavailable, not crashed
    s = make(FakeNVML(), device_index=0, visible="GPU-ffffffff")
    assert not s.available and s.reason


def test_torch_uuid_is_preferred_over_the_environment(monkeypatch):
    fake = FakeNVML()
    # torch reports the UUID without the "GPU-" prefix, as CUDA's device properties do
    monkeypatch.setattr(telemetry, "_torch_uuid", lambda i: fake.uuids[1][4:] if i == 0 else None)
    s = GpuSampler(0, 0.002, nvml=fake, visible_devices="3", use_torch=True)
    assert s.nvml_index == 1 and "uuid" in s.mapping


def test_parse_visible_devices():
    assert parse_visible_devices(None) is None
    assert parse_visible_devices("") == []
    assert parse_visible_devices("0,2") == [0, 2]
    assert parse_visible_devices("1,x,3") == [1]  # CUDA stops at the first invalid entry
    assert parse_visible_devices("1,-1,3") == [1]
    assert parse_visible_devices("1,1") == []
    assert parse_visible_devices("GPU-abc, MIG-def") == ["GPU-abc", "MIG-def"]


def test_restart_after_stop():
    fake = FakeNVML()
    s = make(fake)
    s.start()
    s.stop()
    s.start()
    s.stop()
    assert s.available and len(s.samples) >= 2
    assert fake.inits == fake.shutdowns == 2


def test_energy_per_token_j():
    assert energy_per_token_j({"energy_j": 12.0}, 4) == 3.0
    assert energy_per_token_j({"energy_j": None}, 4) is None
    assert energy_per_token_j({"energy_j": 12.0}, 0) is None
    assert energy_per_token_j({}, 4) is None


def test_telemetry_columns_cover_the_summary():
    assert all(isinstance(c, Column) for c in TELEMETRY_COLUMNS)
    names = [c.name for c in TELEMETRY_COLUMNS]
    assert len(names) == len(set(names))
    assert set(names) == set(SUMMARY_KEYS) | {"energy_j_per_token"}
    assert all(c.description.endswith(".") for c in TELEMETRY_COLUMNS)
    assert {c.name: c.unit for c in TELEMETRY_COLUMNS}["energy_j"] == "J"


def test_nvtx_range_with_fake_nvtx(monkeypatch):
    events = []

    class Annotate:
        def __init__(self, message=None, domain=None, **kw):
            self.message, self.domain = message, domain

        def __enter__(self):
            events.append(("push", self.message, self.domain))
            return self

        def __exit__(self, *exc):
            events.append(("pop", self.message, self.domain))
            return False

    monkeypatch.setitem(sys.modules, "nvtx", types.SimpleNamespace(annotate=Annotate))
    with nvtx_range("prefill"):
        events.append(("body",))
    assert events == [("push", "prefill", "latency_sensitivity"), ("body",), ("pop", "prefill", "latency_sensitivity")]
    with pytest.raises(ValueError):
        with nvtx_range("decode"):
            raise ValueError("propagates")
    assert events[-1] == ("pop", "decode", "latency_sensitivity")


def test_nvtx_range_with_real_nvtx_if_installed():
    pytest.importorskip("nvtx")
    ran = False
    with nvtx_range("real"):
        ran = True
    assert ran


def test_nvtx_range_without_nvtx(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvtx", None)  # import nvtx -> ImportError
    ran = False
    with nvtx_range("prefill"):
        ran = True
    assert ran
    with pytest.raises(KeyError):
        with nvtx_range("x"):
            raise KeyError("propagates")
