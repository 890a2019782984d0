"""The runner on the CPU: a real tiny model, a local checkpoint, and failures recorded as rows."""

import dataclasses
import json
import os

import pytest
import torch

from conftest import cell_spec
from latency_sensitivity.measure import cell, runner
from latency_sensitivity.engine import eager as eager_backend
from latency_sensitivity.config import MODELS_DIR

TINY = str(MODELS_DIR / "tiny-qwen2.json")


def spec(**kw):
    return cell_spec(**kw)


def test_measures_a_real_tiny_model():
    r = cell.measure(spec())
    assert r["status"] == "ok", r["error"]
    s, m = r["samples"], r["metrics"]
    assert len(s["prefill_ms"]) == 3 and all(len(steps) == 3 for steps in s["decode_step_ms"])
    assert all(t > 0 for t in s["prefill_ms"])
    assert m["decode_tok_s"] == pytest.approx(2 * 1000 / m["decode_p50_ms_per_tok"])
    assert m["e2e_p50_ms"] >= m["ttft_p50_ms"] > 0
    assert m["vram_reserved_mb"] == 0.0 and m["peak_rss_mb"] > 0
    # weights of the tiny architecture, fp32: embedding 8192x256 (tied) + 4 layers + final norm
    layer = 256 * 256 + 256 + 2 * (256 * 128 + 128) + 256 * 256 + 3 * 256 * 704 + 2 * 256
    assert m["weights_mb"] == pytest.approx((8192 * 256 + 4 * layer + 256) * 4 / 2**20)
    assert r["architecture"]["num_hidden_layers"] == 4
    assert m["kv_cache_mb"] == pytest.approx(2 * 4 * 2 * 64 * 4 * 2 * (8 + 4) / 2**20)
    assert r["environment"]["torch"] == torch.__version__


def record_collector(monkeypatch, log: list) -> None:
    """Write each gc.collect (with the freeze count then) and gc.set_threshold call into log."""
    import gc

    real_collect, real_set = gc.collect, gc.set_threshold

    def collect(*args):
        log.append(("collect", gc.get_freeze_count()))
        return real_collect(*args)

    def set_threshold(*args):
        log.append(("threshold", args))
        return real_set(*args)

    monkeypatch.setattr(gc, "collect", collect)
    monkeypatch.setattr(gc, "set_threshold", set_threshold)


def test_collection_after_setup_skips_the_start_up_and_the_cell_leaves_nothing_frozen(monkeypatch):
    """The full collection after backend setup runs with what the start-up made frozen (it walks only the cell's
    own objects), no full collection can run from then to the cell's end (the oldest generation's threshold out of
    reach, the young ones as they were), and the cell hands the collector back as it found it."""
    import gc

    log = []
    record_collector(monkeypatch, log)
    before = gc.get_threshold()
    r = cell.measure(spec())
    assert r["status"] == "ok", r["error"]
    assert log[0][0] == "collect" and log[0][1] > 0
    assert log[1:] == [("threshold", (before[0], before[1], cell.NO_FULL_COLLECTION)), ("threshold", before)]
    assert r["metrics"]["gc_full_collections"] == 0
    assert gc.get_freeze_count() == 0 and gc.isenabled() and gc.get_threshold() == before


def test_in_a_worker_the_start_up_stays_frozen_so_the_collection_after_a_cell_walks_only_the_cell(monkeypatch):
    """A worker freezes its start-up once; a cell leaves that freeze (and what it froze of its own start) in place,
    and what the cell made is not frozen: the worker's collection after the cell frees it without walking the
    start-up."""
    import gc
    import weakref

    from latency_sensitivity.measure import worker

    built = []
    real_build = cell.build_model

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.__dict__["cycle"] = [model]  # freed only by a collection that walks it: never, were it frozen
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(cell, "build_model", build)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        r = cell.measure(spec(), startup_frozen=True)
        assert r["status"] == "ok", r["error"]
        assert gc.get_freeze_count() >= frozen
        del r
        worker._release_memory()
        assert built and built[0]() is None  # the cell's model is gone: nothing of it was frozen
    finally:
        gc.unfreeze()


def test_local_checkpoint_loads_real_weights(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = json.loads(open(TINY).read())
    cfg = AutoConfig.for_model(arch.pop("model_type"), **arch)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(tmp_path / "ckpt")
    r = cell.measure(spec(model_kind="path", model_location=str(tmp_path / "ckpt"), reps=1, warmup=0))
    assert r["status"] == "ok", r["error"]
    expected = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    assert r["metrics"]["weights_mb"] == pytest.approx(expected)


def test_out_of_memory_is_a_recorded_row(monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(eager_backend, "one_request", oom)
    r = cell.measure(spec())
    assert r["status"] == "oom"
    assert r["error"]["phase"] == "warmup"
    assert r["error"]["message"].startswith("OutOfMemoryError during warmup: CUDA out of memory")


def runner_argv(out, dtype="fp32", device="cpu", gen_tokens=3, reps=2):
    """The runner's command line for a seq 8 x batch 1 cell of the tiny model, written to `out`."""
    return ["--model", "tiny", "--model-kind", "architecture", "--model-location", TINY, "--dtype", dtype,
            "--device", device, "--seq", "8", "--batch", "1", "--gen-tokens", str(gen_tokens), "--warmup", "0",
            "--reps", str(reps), "--out", str(out)]


def test_the_thread_count_on_the_command_line_is_the_cells(tmp_path, monkeypatch):
    """--threads (measure.threads on each cell's command line) is the count the cell runs with and records."""
    counts = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: counts.append(n) or real(n))
    before = torch.get_num_threads()
    try:
        assert runner.main(runner_argv(tmp_path / "cell.json") + ["--threads", "3"]) == 0
    finally:
        real(before)
    r = json.loads((tmp_path / "cell.json").read_text())
    assert r["status"] == "ok" and r["cell"]["threads"] == 3 and counts == [3]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_an_error_row_and_the_cli_exits_zero(tmp_path):
    out = tmp_path / "cell.json"
    assert runner.main(runner_argv(out, dtype="fp16", device="cuda", gen_tokens=2, reps=1)) == 0
    r = json.loads(out.read_text())
    assert r["status"] == "error" and "torch sees no CUDA device" in r["error"]["message"]
    assert r["cell"]["seq_len"] == 8


def test_bad_runner_arguments_exit_early():
    with pytest.raises(SystemExit):
        runner.parse_args(["--model", "x", "--model-kind", "architecture", "--model-location", TINY, "--dtype", "fp32",
                           "--device", "cpu", "--seq", "0", "--batch", "1", "--gen-tokens", "4", "--warmup", "0",
                           "--reps", "1", "--out", "x.json"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("warmup, request_", [(1, "after_reps"), (3, "warmup1")])
def test_cuda_cell_with_telemetry(warmup, request_):
    r = cell.measure(spec(device="cuda", dtype="fp16", seq_len=64, batch=4, gen_tokens=8, reps=3, warmup=warmup))
    assert r["status"] == "ok", r["error"]
    m = r["metrics"]
    assert m["vram_reserved_mb"] >= m["vram_allocated_mb"] > m["weights_mb"]
    assert m["n_samples"] >= 2 and m["sm_clock_start_mhz"] is not None
    assert r["environment"]["device_name"] == torch.cuda.get_device_name()
    assert "kernel_time_error" not in r, r.get("kernel_time_error")
    assert m["kernel_time_request"] == request_ and m["kernel_time_s"] > 0 and m["warmup_s"] > 0
    if request_ != "after_reps":  # the profiler's seconds by part: kernel_time_s is all but the device's wait
        parts = r["kernel_time_parts"]
        assert list(parts) == ["sync_s", "start_s", "stop_s", "read_s"] and all(v >= 0 for v in parts.values())
        assert abs(sum(parts.values()) - parts["sync_s"] - m["kernel_time_s"]) < 1e-4
    assert 0 < m["decode_kernel_ms_per_step"] and 0 < m["prefill_kernel_ms"]
    assert m["gc_full_collections"] == 0
    # kernel time cannot exceed the time the phase took (small slack for timer granularity)
    assert 0 < m["decode_gpu_busy"] <= 1.05 and 0 < m["prefill_gpu_busy"] <= 1.05


def test_host_state_is_recorded_and_affinity_pins_the_process():
    """Each cell records the host around its measured reps (affinity, CPU clock, load, stolen time) and
    measure.cpu_affinity pins the measuring process before anything is measured."""
    import os

    from latency_sensitivity.measure import host

    before = os.sched_getaffinity(0)
    try:
        r = cell.measure(cell_spec(seq_len=8, batch=1, gen_tokens=3, reps=2, cpu_affinity=[0]))
        assert r["status"] == "ok", r["error"]
        assert r["host"]["cpu_affinity"] == [0] and r["host"]["cpu_affinity_requested"] == [0]
        assert r["metrics"]["cpus_allowed"] == 1
        for key in ("load_1m_start", "load_1m_end"):
            assert r["metrics"][key] is None or r["metrics"][key] >= 0
        assert r["metrics"]["steal_s"] is None or r["metrics"]["steal_s"] >= 0
    finally:
        os.sched_setaffinity(0, before)
    bad = cell.measure(cell_spec(seq_len=8, batch=1, gen_tokens=3, reps=1, cpu_affinity=[10_000]))
    assert bad["status"] == "error" and "cpu_affinity [10000]" in bad["error"]["message"]
    assert os.sched_getaffinity(0) == before


def test_host_readings_from_proc_files(tmp_path):
    from latency_sensitivity.measure import host

    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 5 100 0 0 0 42 0 0\ncpu0 10 0 5 100 0 0 0 42 0 0\n")
    assert host.steal_ticks(stat) == 42
    stat.write_text("intr 1\n")
    assert host.steal_ticks(stat) is None
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu MHz\t\t: 2000.0\nprocessor\t: 1\ncpu MHz\t\t: 3000.0\n")
    assert host.cpu_mhz([0, 1], sysfs=tmp_path / "none", cpuinfo=info) == 2500.0
    assert host.cpu_mhz([1], sysfs=tmp_path / "none", cpuinfo=info) == 3000.0
    (tmp_path / "sys" / "cpu0" / "cpufreq").mkdir(parents=True)
    (tmp_path / "sys" / "cpu0" / "cpufreq" / "scaling_cur_freq").write_text("1500000\n")
    assert host.cpu_mhz([0], sysfs=tmp_path / "sys", cpuinfo=info) == 1500.0
    s = host.summary({"steal_ticks": 100, "cpu_mhz": 1.0, "load_1m": 0.5}, {"steal_ticks": 100 + os_ticks(), "cpu_mhz": 2.0, "load_1m": 0.7})
    assert s["steal_s"] == 1.0 and s["cpu_mhz_start"] == 1.0 and s["load_1m_end"] == 0.7


def os_ticks():
    import os

    return os.sysconf("SC_CLK_TCK")


def test_the_cell_records_its_job_time_and_its_measured_time(tmp_path):
    out = tmp_path / "cell.json"
    assert runner.main(runner_argv(out)) == 0
    m = json.loads(out.read_text())["metrics"]
    # this test's process started before the cell: its age bounds the job from above, the reps from below
    assert 0 < m["measured_s"] < m["job_s"]
    assert m["job_s"] >= m["model_build_s"] + m["measured_s"]


def test_compile_shapes_reaches_the_compiled_backend_only():
    """--compile-shapes dynamic_batch asks the compiled backend for a batch-dynamic step; other backends do not
    compile and get no option (the eager backend would refuse one)."""
    argv = ["--model", "tiny", "--model-kind", "architecture", "--model-location", "x.json", "--dtype", "fp32",
            "--device", "cpu", "--seq", "8", "--batch", "2", "--gen-tokens", "4", "--warmup", "1", "--reps", "1",
            "--out", "r.json"]
    for backend in ("eager", "graph", "compiled"):
        for shapes in ("static", "dynamic_batch"):
            spec = runner.parse_args(argv + ["--backend", backend, "--compile-shapes", shapes])[0]
            assert spec.compile_shapes == shapes
            want = {"dynamic_batch": True} if (backend, shapes) == ("compiled", "dynamic_batch") else {}
            assert cell.backend_options(spec) == want
    assert runner.parse_args(argv)[0].compile_shapes == "static"


def test_compiled_step_saved_reaches_the_compiled_backend_only_with_a_compile_cache(tmp_path, capsys):
    """--compiled-step saved needs the compile cache, whose steps folder the runner gives the compiled backend;
    other backends get no option."""
    argv = ["--model", "tiny", "--model-kind", "architecture", "--model-location", "x.json", "--dtype", "fp32",
            "--device", "cpu", "--seq", "8", "--batch", "2", "--gen-tokens", "4", "--warmup", "1", "--reps", "1",
            "--out", "r.json"]
    assert runner.parse_args(argv + ["--backend", "compiled"])[0].compiled_step == "traced"  # the runner's default
    with pytest.raises(SystemExit):
        runner.parse_args(argv + ["--backend", "compiled", "--compiled-step", "saved"])
    assert "--compiled-step saved needs --compile-cache" in capsys.readouterr().err
    for backend in ("eager", "graph", "compiled"):
        spec = runner.parse_args(argv + ["--backend", backend, "--compiled-step", "saved",
                                         "--compile-cache", str(tmp_path)])[0]
        assert spec.compiled_step == "saved"
        if backend == "compiled":
            with pytest.raises(ValueError, match="no folder for saved steps"):  # the runner sets it, not the argv
                cell.backend_options(spec)
            spec = dataclasses.replace(spec, saved_step_dir=str(tmp_path / "steps"))
        assert cell.backend_options(spec) == ({"saved_step_dir": str(tmp_path / "steps")} if backend == "compiled"
                                              else {})


def test_kernel_time_sessions_detach_cupti_when_the_request_s_last_one_stops(monkeypatch):
    """kineto detaches CUPTI when a profiler stops only with TEARDOWN_CUPTI=1, read at each stop: the kernel-time
    sessions set it at every stop, whatever the environment said (else later cells in the process run with CUPTI
    attached). In a profiled warmup request the prefill's session leaves it attached for the window's session,
    which detaches it; a request that fails between the two has it detached by a session opened to close."""
    import types

    import torch.profiler

    from latency_sensitivity.measure import probes

    seen = []

    from torch.autograd import DeviceType

    kernel = types.SimpleNamespace(device_type=lambda: DeviceType.CUDA, start_ns=lambda: 0, end_ns=lambda: 1_000_000)

    class FakeProfile:
        def __init__(self, **kwargs):
            results = types.SimpleNamespace(events=lambda: [kernel])  # one 1 ms kernel
            self.profiler = types.SimpleNamespace(kineto_results=results)

        def __enter__(self):
            seen.append("start")
            return self

        def __exit__(self, *exc):
            seen.append(os.environ.get("TEARDOWN_CUPTI"))
            return False

    monkeypatch.setattr(torch.profiler, "profile", FakeProfile)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args, **kwargs: None)
    monkeypatch.setenv("TEARDOWN_CUPTI", "0")
    assert probes.kernel_time_ms(lambda: None) == 1.0
    assert seen == ["start", "1"]

    from latency_sensitivity.engine.base import Clock

    seen.clear()
    probes.profiled_request(LoggingBackend([]), None, 20, Clock(False), "warmup1")
    assert seen == ["start", "0", "start", "1"]
    seen.clear()
    probes.profiled_request(LoggingBackend([]), None, 20, Clock(False), "warmup1", keep_attached=False)
    assert seen == ["start", "1", "start", "1"]
    first, _ = probes.kernel_time_window(20)
    for fail_at, sessions in ((first - 1, ["start", "0", "start", "1"]), (first, ["start", "0", "start", "1"])):
        seen.clear()
        with pytest.raises(RuntimeError, match="failed"):
            probes.profiled_request(LoggingBackend([], fail={"warmup1": [fail_at]}), None, 20, Clock(False), "warmup1")
        assert seen == sessions and os.environ["TEARDOWN_CUPTI"] == "1"


def recording_timer(log: list):
    """A stand-in for probes.KernelTimer that writes start, stop and abandon into log. Its kernel time: 2 ms when
    the prefill ran while it timed, else 0.5 ms for each decode step (an int in log) that did."""

    class Timer:
        def start(self):
            log.append("start")

        def stop(self, detach=True):
            timed = log[len(log) - log[::-1].index("start"):]
            log.append("stop" if detach else "stop, attached")
            return 2.0 if "prefill" in timed else 0.5 * sum(isinstance(entry, int) for entry in timed)

        def abandon(self):
            log.append("abandon")

    return Timer


def test_a_profiler_session_that_recorded_no_device_event_is_an_error(monkeypatch):
    """What a kernel timer times always runs kernels, so a session whose trace holds no device event did not record
    (CUPTI missed the work): an error, which the profiled warmup request records before it runs again plain, never a
    kernel time of 0 and a GPU-busy share of 0."""
    import types

    from torch.autograd import DeviceType

    from latency_sensitivity.measure import probes

    def Event(device, start, end):
        return types.SimpleNamespace(device_type=lambda: device, start_ns=lambda: start, end_ns=lambda: end)

    class Profile:
        def __init__(self, events):
            self.profiler = types.SimpleNamespace(kineto_results=types.SimpleNamespace(events=lambda: events))

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    timer = probes.KernelTimer()
    timer.prof = Profile([Event(DeviceType.CPU, 0, 10), Event(DeviceType.CUDA, 2_000_000, 3_000_000),
                          Event(DeviceType.CUDA, 2_500_000, 4_000_000)])
    assert timer.stop() == 2.0  # ms: the device's spans, overlaps once
    # its seconds by part: waiting for the device, stopping, reading (no start here); its own cost is all but the
    # wait, which is the timed work's
    assert set(timer.parts) == set(probes.PROFILER_PARTS) and timer.parts["start_s"] == 0.0
    assert all(v >= 0 for v in timer.parts.values())
    assert timer.seconds == timer.parts["stop_s"] + timer.parts["read_s"]
    timer.prof = Profile([Event(DeviceType.CPU, 0, 10)])
    with pytest.raises(RuntimeError, match="recorded no device event"):
        timer.stop()
    assert timer.prof is None and os.environ["TEARDOWN_CUPTI"] == "1"  # closed, CUPTI detached


@pytest.mark.parametrize("gen_tokens, first, steps", [(32, 14, 3), (8, 2, 3), (20, 8, 3), (3, 0, 2)])
def test_kernel_time_pass_times_the_steps_in_the_middle_of_the_request(gen_tokens, first, steps):
    """The kernel-time pass times the prefill alone, then decode steps first .. first + steps - 1 of a request that
    runs as the cell's (the same timed_request and clock) and stops after them: the middle of the cell's request,
    where its median step lies (the first steps ran slower after a compute-bound prefill)."""
    from latency_sensitivity.engine.base import Clock, timed_request
    from latency_sensitivity.measure import probes

    log = []
    Timer = recording_timer(log)

    class Backend:
        def reset(self):
            log.append("reset")

        def prefill(self, prompt):
            log.append("prefill")

        def request(self, prompt, gen_tokens, clock, rep_name):
            log.append(("request", gen_tokens))
            step_no = iter(range(gen_tokens))

            def step(token):
                log.append(next(step_no))
                return token

            return timed_request(lambda: torch.zeros(1), step, gen_tokens, clock, rep_name)

    assert probes.kernel_time_window(gen_tokens) == (first, steps)
    got = probes.gpu_busy(Backend(), prompt=None, gen_tokens=gen_tokens, clock=Clock(False), timer_factory=Timer)
    window = list(range(first, first + steps))
    assert log == (["reset", "start", "prefill", "stop", "reset", ("request", first + steps + 1)]
                   + list(range(first)) + ["start"] + window + ["stop"])
    assert got == {"prefill_kernel_ms": 2.0, "decode_kernel_ms_per_step": 0.5, "kernel_time_decode_steps": steps,
                   "kernel_time_first_step": first}


def test_a_narrower_kernel_time_window_stays_centred():
    from latency_sensitivity.measure import probes

    assert probes.kernel_time_window(32) == (14, 3)
    assert probes.kernel_time_window(32, 7) == (12, 7) and probes.kernel_time_window(32, 1) == (15, 1)
    assert probes.kernel_time_window(3, 7) == (0, 2)


def test_a_failing_kernel_time_request_closes_its_profiler_session():
    from latency_sensitivity.engine.base import Clock, timed_request
    from latency_sensitivity.measure import probes

    log = []
    Timer = recording_timer(log)

    class Backend:
        def reset(self):
            pass

        def prefill(self, prompt):
            pass

        def request(self, prompt, gen_tokens, clock, rep_name):
            def step(token):
                if clock.marks > clock.start_at:
                    raise RuntimeError("step failed")
                return token

            return timed_request(lambda: torch.zeros(1), step, gen_tokens, clock, rep_name)

    with pytest.raises(RuntimeError, match="step failed"):
        probes.gpu_busy(Backend(), prompt=None, gen_tokens=32, clock=Clock(False), timer_factory=Timer)
    assert log == ["start", "stop", "start", "abandon"]


class LoggingBackend:
    """A stand-in backend whose requests run engine.base.timed_request, writing each request's name, its prefill
    and its decode step numbers into log. fail: {request name: [step, ...]}, the step at which that request's
    first, second, ... run raises."""

    def __init__(self, log: list, fail: dict | None = None):
        self.log, self.fail = log, fail or {}

    def reset(self):
        self.log.append("reset")

    def prefill(self, prompt):
        self.log.append("prefill")

    def request(self, prompt, gen_tokens, clock, rep_name):
        from latency_sensitivity.engine.base import timed_request

        self.log.append(rep_name)
        step_no = iter(range(gen_tokens))
        fail_at = self.fail[rep_name].pop(0) if self.fail.get(rep_name) else None

        def prefill():
            self.log.append("prefill")
            return torch.zeros(1)

        def step(token):
            n = next(step_no)
            if n == fail_at:
                raise RuntimeError(f"{rep_name} step {n} failed")
            self.log.append(n)
            return token

        return timed_request(prefill, step, gen_tokens, clock, rep_name)


@pytest.mark.parametrize("warmup, profiled", [(0, None), (1, None), (2, None), (3, 1), (5, 3)])
def test_kernel_time_comes_from_the_second_to_last_warmup_request(warmup, profiled):
    """With 3 or more warmup requests the kernel time is taken from the second to last (a warmed request before
    it, a plain one between it and the reps): its prefill under one profiler session, its middle decode steps
    (kernel_time_window) under another; the request runs whole, as every warmup request. With fewer, none is
    profiled (the pass after the reps takes it)."""
    from latency_sensitivity.engine.base import Clock
    from latency_sensitivity.measure import probes

    assert probes.kernel_time_warmup_request(warmup) == profiled
    log = []
    gen_tokens = 20
    warm = probes.warm_up(LoggingBackend(log), None, gen_tokens, warmup, Clock(False), profiled,
                          timer_factory=recording_timer(log))
    steps = list(range(gen_tokens - 1))
    plain = [[f"warmup{i}", "prefill", *steps] for i in range(warmup)]
    if profiled is not None:
        first, n = probes.kernel_time_window(gen_tokens)
        plain[profiled] = ([f"warmup{profiled}", "start", "prefill", "stop, attached"] + steps[:first] + ["start"]
                           + steps[first:first + n] + ["stop"] + steps[first + n:])
        assert warm["kernel"] == {"prefill_kernel_ms": 2.0, "decode_kernel_ms_per_step": 0.5,
                                  "kernel_time_decode_steps": n, "kernel_time_first_step": first}
    else:
        assert warm["kernel"] is None
    assert log == [entry for request in plain for entry in request]
    assert warm["error"] is None and warm["kernel_time_s"] == 0.0 and warm["warmup_s"] >= 0
    # the profiler's seconds by part, both sessions together (the stand-in timers have none)
    assert warm["kernel_time_parts"] == (None if profiled is None else dict.fromkeys(probes.PROFILER_PARTS, 0.0))


def test_a_failing_profiled_warmup_request_is_recorded_and_run_again_plain():
    """The profiled request fails in its window: its profiler sessions are closed, the error is kept, the request
    runs again without the profiler (the reps still follow 3 whole warmup requests), and the failed attempt's
    seconds are counted as the kernel time's, not the warmup's."""
    from latency_sensitivity.engine.base import Clock
    from latency_sensitivity.measure import probes

    log = []
    first, n = probes.kernel_time_window(8)
    backend = LoggingBackend(log, fail={"warmup1": [first + 1]})
    warm = probes.warm_up(backend, None, 8, 3, Clock(False), 1, timer_factory=recording_timer(log))
    assert warm["kernel"] is None and warm["error"] == f"RuntimeError: warmup1 step {first + 1} failed"
    steps = list(range(7))
    assert log == (["warmup0", "prefill", *steps]
                   + ["warmup1", "start", "prefill", "stop, attached", *steps[:first], "start", first, "abandon",
                      "abandon"]
                   + ["warmup1", "prefill", *steps] + ["warmup2", "prefill", *steps])
    assert warm["kernel_time_s"] > 0 and warm["kernel_time_parts"] is None  # the failed attempt's, whole

    # failing before its window: the prefill's session left CUPTI attached, so one is opened and closed to detach it
    log.clear()
    backend = LoggingBackend(log, fail={"warmup1": [first - 1]})
    warm = probes.warm_up(backend, None, 8, 3, Clock(False), 1, timer_factory=recording_timer(log))
    assert warm["error"] == f"RuntimeError: warmup1 step {first - 1} failed"
    assert log == (["warmup0", "prefill", *steps]
                   + ["warmup1", "start", "prefill", "stop, attached", *steps[:first - 1], "abandon", "abandon",
                      "start", "abandon"]
                   + ["warmup1", "prefill", *steps] + ["warmup2", "prefill", *steps])


def test_a_warmup_request_that_fails_without_the_profiler_fails_the_cell():
    from latency_sensitivity.engine.base import Clock
    from latency_sensitivity.measure import probes

    log = []
    backend = LoggingBackend(log, fail={"warmup1": [0, 0]})
    with pytest.raises(RuntimeError, match="warmup1 step 0 failed"):
        probes.warm_up(backend, None, 8, 3, Clock(False), 1, timer_factory=recording_timer(log))
    assert log.count("warmup1") == 2 and "warmup2" not in log


def test_a_cell_job_that_hands_its_cell_to_a_worker_imports_no_measurement():
    """The cell job's side of a shared worker (runner.main, worker_pool) imports neither torch nor the engine nor
    the measurement (cell.py): with isolation shared its start is part of every cell's job."""
    import subprocess
    import sys

    code = ("import sys, latency_sensitivity.measure.runner, latency_sensitivity.measure.worker_pool; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert "latency_sensitivity.measure.runner" in loaded
    heavy = [m for m in loaded if m.split(".")[0] in ("torch", "transformers", "numpy")
             or m.startswith(("latency_sensitivity.engine", "latency_sensitivity.measure.cell",
                              "latency_sensitivity.measure.probes", "latency_sensitivity.analysis"))]
    assert heavy == []


def test_a_worker_s_later_cells_take_the_model_its_first_cell_built(monkeypatch):
    """With a keeper (a worker's), the first cell builds the model and the later cells of the same model take it,
    after a backend that changed the model and undid it; their weights are a fresh build's, value for value."""
    from latency_sensitivity.measure.model import ModelKeeper, build_model, model_fingerprint

    # the changes the graph backend can make to a model on the CPU, each undone by its close()
    changes = dict(fuse_norms=True, fuse_projections=True, fuse_layers=True, pack_gqa=True)
    monkeypatch.setattr(cell, "backend_options", lambda spec: dict(changes))
    keeper = ModelKeeper()
    first = cell.measure(spec(backend="graph"), models=keeper)
    assert first["status"] == "ok", first["error"]
    assert first["backend_info"]["fused_layers"] == 4 and first["backend_info"]["fused_rms_norms"] > 0
    assert first["model_from"] == "built" and keeper._kept is not None
    kept = keeper._kept[1]
    second = cell.measure(spec(backend="graph", batch=1, seq_len=12), models=keeper)
    assert second["status"] == "ok", second["error"]
    assert second["model_from"] == "kept" and "model_kept_changed" not in second
    assert keeper._kept[1] is kept
    fresh = build_model(spec())
    assert model_fingerprint(kept) == model_fingerprint(fresh)
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), fresh.state_dict().values()))
    # a process of its own builds per cell
    assert cell.measure(spec())["model_from"] == "built"


def test_a_kept_model_left_changed_or_of_another_key_or_after_a_failed_cell_is_built_afresh(monkeypatch):
    from latency_sensitivity.measure.model import ModelKeeper

    keeper = ModelKeeper()
    assert cell.measure(spec(), models=keeper)["model_from"] == "built"
    model = keeper._kept[1]
    model.model.layers[0].mlp.forward = lambda x: x  # what a backend that did not undo its change would leave
    changed = cell.measure(spec(), models=keeper)
    assert changed["status"] == "ok" and changed["model_from"] == "built"
    assert "model.layers.0.mlp (Qwen2MLP) has ['forward']" in changed["model_kept_changed"]
    assert keeper._kept[1] is not model
    keeper._kept[1].model.norm.register_forward_hook(lambda *args: None)  # a hook left in place
    hooked = cell.measure(spec(), models=keeper)
    assert hooked["model_from"] == "built" and "model.norm (Qwen2RMSNorm) has 1 hooks, against 0" in \
        hooked["model_kept_changed"]
    assert cell.measure(spec(seed=1), models=keeper)["model_from"] == "built"  # other weights
    # a cell that fails after its model was taken: the next one builds afresh
    monkeypatch.setattr(eager_backend.EagerBackend, "request", lambda *a, **kw: 1 / 0)
    failed = cell.measure(spec(seed=1), models=keeper)
    assert failed["status"] == "error" and failed["model_from"] == "kept" and keeper._kept is None
    monkeypatch.undo()
    assert cell.measure(spec(seed=1), models=keeper)["model_from"] == "built"


@pytest.mark.parametrize("let_go_by", ["a changed form", "a failed cell"])
def test_a_kept_model_let_go_in_a_worker_is_freed_though_the_worker_froze_it(let_go_by, monkeypatch):
    """A worker freezes what outlives its cells, the kept model included (worker._release_memory); a kept model let
    go, for a changed form or after a failed cell, is freed by the worker's next collection though it holds a
    reference cycle."""
    import gc
    import types
    import weakref

    from latency_sensitivity.measure import worker
    from latency_sensitivity.measure.model import ModelKeeper

    keeper = ModelKeeper()
    gc.freeze()  # the worker's start-up
    try:
        assert cell.measure(spec(), models=keeper, startup_frozen=True)["model_from"] == "built"
        worker._release_memory()
        model = keeper._kept[1]
        assert gc.get_freeze_count() > 0
        mlp = model.model.layers[0].mlp
        gone = weakref.ref(mlp.up_proj.weight)
        if let_go_by == "a changed form":
            # a swapped forward left in place, as a backend that did not undo it would: a method bound to its
            # module (a reference cycle, which holds the module's weights)
            mlp.forward = types.MethodType(lambda self, x: x, mlp)
        else:
            mlp.up_proj.weight.cycle = mlp  # a reference cycle the form check does not see (on a tensor)
            monkeypatch.setattr(eager_backend.EagerBackend, "request", lambda *a, **kw: 1 / 0)
        del model, mlp
        r = cell.measure(spec(), models=keeper, startup_frozen=True)
        if let_go_by == "a changed form":
            assert r["status"] == "ok" and r["model_from"] == "built" and "model_kept_changed" in r
        else:
            assert r["status"] == "error" and r["model_from"] == "kept" and keeper._kept is None
        del r
        worker._release_memory()
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
