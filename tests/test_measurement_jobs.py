import copy

from conftest import REPO
from latency_sensitivity import config as lsconfig
from latency_sensitivity import measurement_jobs


def test_measurement_order_runs_replicate_by_replicate_and_worker_by_worker():
    """Higher priority first: all first replicates, then all second ones; within a replicate the cells of one
    model, dtype and backend together (one worker); a worker's cells in reverse order in even replicates."""
    from latency_sensitivity.vocabulary import Cell

    cells = [Cell("m", "fp16", backend, seq, 1) for backend in ("eager", "graph") for seq in (128, 256, 512)]
    order = measurement_jobs.measurement_order(cells, 2)
    ranked = [job for job, _ in sorted(order.items(), key=lambda item: -item[1])]
    assert [r for _, r in ranked] == [1] * 6 + [2] * 6
    first = [(c.backend, c.seq) for c, _ in ranked[:6]]
    second = [(c.backend, c.seq) for c, _ in ranked[6:]]
    assert first == [("eager", 128), ("eager", 256), ("eager", 512), ("graph", 128), ("graph", 256), ("graph", 512)]
    assert second == [("eager", 512), ("eager", 256), ("eager", 128), ("graph", 512), ("graph", 256), ("graph", 128)]
    assert len(set(order.values())) == len(order) and min(order.values()) > 0


def test_measurement_settings_are_what_a_cell_of_its_backend_depends_on(default_config):
    """The rerun trigger of a measurement job: the keys that name the cells and those that do not change its
    numbers are out; compile_shapes is in for compiled cells only."""
    cfg = lsconfig.validate(copy.deepcopy(default_config), base_dir=REPO)
    measure = cfg["measure"]
    schema = lsconfig.load_schema()["properties"]["measure"]["properties"]
    assert measurement_jobs.COMPILED_ONLY in schema["compile_shapes"]["description"]
    for backend in ("eager", "graph", "compiled"):
        settings = measurement_jobs.measurement_settings(measure, backend)
        assert not set(settings) & {"models", "dtypes", "backends", "replicates"}
        assert not any(measurement_jobs.NOT_A_MEASUREMENT in schema[key].get("description", "") for key in settings)
        assert ("compile_shapes" in settings) is (backend == "compiled")
        assert {"gen_tokens", "reps", "warmup", "seed", "device"} <= set(settings)
    assert measure["compile_shapes"] == "dynamic_batch"  # the default
    assert measurement_jobs.measurement_settings({**measure, "compile_shapes": "static"}, "compiled") != \
        measurement_jobs.measurement_settings(measure, "compiled")
    assert measurement_jobs.measurement_settings({**measure, "compile_shapes": "static"}, "graph") == \
        measurement_jobs.measurement_settings(measure, "graph")


def test_compile_shapes_reaches_the_runner_of_compiled_cells_only():
    measure = {"compile_shapes": "dynamic_batch"}
    assert measurement_jobs.compiling_setting(measure, "compiled", "compile_shapes") == "dynamic_batch"
    assert measurement_jobs.compiling_setting(measure, "graph", "compile_shapes") == "static"
    assert measurement_jobs.compiling_setting(measure, "eager", "compile_shapes") == "static"


def test_compiled_step_is_a_measurement_of_compiled_cells_only(default_config):
    cfg = lsconfig.validate(copy.deepcopy(default_config), base_dir=REPO)
    measure = cfg["measure"]
    assert measure["compiled_step"] == "saved"  # the default
    for backend in ("eager", "graph"):
        assert measurement_jobs.compiling_setting(measure, backend, "compiled_step") == "traced"
        assert "compiled_step" not in measurement_jobs.measurement_settings(measure, backend)
    traced = {**measure, "compiled_step": "traced"}
    assert measurement_jobs.compiling_setting(traced, "compiled", "compiled_step") == "traced"
    assert measurement_jobs.measurement_settings({**measure, "compiled_step": "traced"}, "compiled") != \
        measurement_jobs.measurement_settings(measure, "compiled")


def test_placement_is_a_measurement_of_cuda_cells_only(default_config):
    """measure.placement moves nothing on the CPU: it re-measures CUDA cells only and reaches their runner only."""
    cfg = lsconfig.validate(copy.deepcopy(default_config), base_dir=REPO)
    schema = lsconfig.load_schema()["properties"]["measure"]["properties"]
    assert measurement_jobs.CUDA_ONLY in schema["placement"]["description"]
    cpu = {**cfg["measure"], "device": "cpu"}
    cuda = {**cfg["measure"], "device": "cuda"}
    for backend in ("eager", "graph", "compiled"):
        assert "placement" not in measurement_jobs.measurement_settings(cpu, backend)
        assert measurement_jobs.measurement_settings(cuda, backend)["placement"] == "by_replicate"
        assert measurement_jobs.measurement_settings({**cpu, "placement": "fixed"}, backend) == \
            measurement_jobs.measurement_settings(cpu, backend)
    assert measurement_jobs.placement(cuda) == "by_replicate"
    assert measurement_jobs.placement({**cuda, "placement": "fixed"}) == "fixed"
    assert measurement_jobs.placement(cpu) == "fixed"
