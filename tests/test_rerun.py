"""What a rerun of the real pipeline measures again: a deleted or unreadable cell, a missing intermediate, a
changed measurement setting or architecture; and nothing else."""

import json
import re
import shutil

import pandas as pd
import pytest
import yaml

from conftest import REPO, small_config, snakemake, write_config
from latency_sensitivity import cli
from latency_sensitivity import config as lsconfig

pytestmark = pytest.mark.e2e

CELL = "results/cells/tiny-qwen2/fp32/eager/seq{seq}_batch{batch}.json"
NOT_A_MEASUREMENT = "Does not change a cell's numbers"


def job_counts(proc) -> dict[str, int]:
    """Snakemake's "Job stats" table: {rule: jobs}."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def scheduled_cells(proc) -> set[str]:
    return set(re.findall(r"output: (results/cells/\S+\.json)", proc.stdout + proc.stderr))


def config_cells(cfg) -> set[str]:
    return {cell.path for cell in lsconfig.all_cells(cfg)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of three cells (two sweeps), its model from an architecture JSON in the work folder."""
    default_config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    root = tmp_path_factory.mktemp("finished")
    (root / "arch").mkdir()
    shutil.copy(REPO / "config" / "models" / "tiny-qwen2.json", root / "arch" / "tiny.json")
    cfg = small_config(default_config)
    cfg["models"] = {"tiny-qwen2": {"architecture": "arch/tiny.json"}, **{
        k: v for k, v in default_config["models"].items() if k != "tiny-qwen2"}}
    cfg["sweeps"] = {"seq_sweep": {"seq": [16, 32], "batch": [1]}, "batch_sweep": {"seq": [16], "batch": [1, 2]}}
    write_config(root / "cfg" / "config.yaml", cfg)
    snakemake(root, "--cores", "2", "all", configfile=root / "cfg" / "config.yaml")
    return root, cfg


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run (times and Snakemake's records kept) and its config."""
    root, cfg = finished
    work = tmp_path / "work"
    shutil.copytree(root, work, symlinks=True)
    return work, json.loads(json.dumps(cfg))


def dry(work, *args, cores="1"):
    return snakemake(work, "-n", "--cores", cores, "all", *args, configfile=work / "cfg" / "config.yaml")


def test_deleted_cell_is_measured_again_and_only_it(run):
    work, _ = run
    assert job_counts(dry(work)) == {}
    cell = CELL.format(seq=32, batch=1)  # in seq_sweep only
    old = json.loads((work / cell).read_text())
    report_time = (work / "results" / "report.md").stat().st_mtime
    (work / cell).unlink()
    expected = {"measure_cell": 1, "merge_sweep": 1, "detect_collapse": 1, "plot_sweep": 1, "plot_anatomy": 1,
                "build_report": 1, "all": 1}
    proc = dry(work)
    assert job_counts(proc) == expected and scheduled_cells(proc) == {cell}
    proc = snakemake(work, "--cores", "1", "all", configfile=work / "cfg" / "config.yaml")
    assert job_counts(proc) == expected
    new = json.loads((work / cell).read_text())
    assert new["status"] == "ok" and new["environment"]["timestamp"] != old["environment"]["timestamp"]
    row = pd.read_csv(work / "results" / "seq_sweep" / "sweep.csv").query("seq_len == 32").iloc[0]
    assert row["prefill_p50_ms"] == pytest.approx(new["metrics"]["prefill_p50_ms"])
    assert (work / "results" / "report.md").stat().st_mtime > report_time
    assert job_counts(dry(work)) == {}


def test_unreadable_cell_stops_the_run_before_any_job_and_is_listed(run):
    work, _ = run
    cell = CELL.format(seq=16, batch=2)
    (work / cell).write_text((work / cell).read_text()[:2154])
    proc = snakemake(work, "--cores", "1", "all", configfile=work / "cfg" / "config.yaml", check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "rule measure_cell" not in err and "rule merge_sweep" not in err
    assert f"{cell}: JSONDecodeError" in err
    assert "delete them and rerun" in err and f"--forcerun {cell}" in err
    listed = cli.failed_cells(work / "results")
    assert [(str(p.relative_to(work)), s.split(":")[0]) for p, s in listed] == [(cell, "unreadable")]
    # The remedies the message names: --forcerun of the file, or deleting it.
    proc = dry(work, "--forcerun", cell)
    assert scheduled_cells(proc) == {cell} and job_counts(proc)["merge_sweep"] == 1
    (work / cell).unlink()
    proc = dry(work)
    assert scheduled_cells(proc) == {cell} and job_counts(proc)["merge_sweep"] == 1


@pytest.mark.parametrize(
    "missing, jobs",
    [
        # A retrained tokenizer is timed by every cell: all are measured again.
        ("results/tokenizer/tokenizer.json", {"train_tokenizer": 1, "measure_cell": 3, "merge_sweep": 2}),
        ("results/calibration/cpu_fp32.json", {"calibrate_device": 1, "merge_sweep": 2}),
        ("results/checkpoints/tiny-qwen2/fp32", {"materialize_checkpoint": 1, "measure_loading": 1}),
        ("results/loading/tiny-qwen2/fp32/cpu.json", {"measure_loading": 1}),
        ("results/seq_sweep/merged.csv", {"merge_sweep": 1, "detect_collapse": 1, "plot_sweep": 1}),
    ],
)
def test_missing_intermediate_is_remade_and_what_follows_rebuilt(run, missing, jobs):
    work, _ = run
    path = work / missing
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    counts = job_counts(dry(work))
    assert {rule: counts.get(rule, 0) for rule in jobs} == jobs
    assert counts.get("build_report") == 1  # the report is rebuilt whatever was remade
    measured = {"calibrate_device", "train_tokenizer", "materialize_checkpoint", "measure_loading", "measure_cell"}
    assert {rule for rule in counts if rule in measured} == {rule for rule in jobs if rule in measured}


def test_changed_architecture_remeasures_its_cells(run):
    work, cfg = run
    arch = json.loads((work / "arch" / "tiny.json").read_text())
    arch["intermediate_size"] *= 2
    (work / "arch" / "tiny.json").write_text(json.dumps(arch))
    proc = dry(work)
    assert scheduled_cells(proc) == config_cells(cfg)
    assert job_counts(proc)["materialize_checkpoint"] == 1


def measure_keys():
    return lsconfig.load_schema()["properties"]["measure"]["properties"]


def changed(key: str, schema: dict, cfg: dict):
    """Another valid value for measure.<key>."""
    value = cfg["measure"][key]
    if key == "models":
        return [next(name for name in cfg["models"] if name not in value)]
    if schema.get("type") == "array":
        return [next(v for v in schema["items"]["enum"] if v not in value)]
    if "enum" in schema:
        return next(v for v in schema["enum"] if v != value)
    if schema.get("type") == "integer":
        return value + 1
    raise AssertionError(f"test_rerun.py cannot change measure.{key} yet: teach changed() a value for it")


@pytest.mark.parametrize("key", sorted(measure_keys()))
def test_every_measure_key_remeasures_its_cells_or_says_it_does_not(run, key):
    """Each measure.* key of the schema: changing it re-measures every cell, unless its description says it does
    not change a cell's numbers (and then it re-measures none)."""
    work, cfg = run
    schema = measure_keys()[key]
    cfg["measure"][key] = changed(key, schema, cfg)
    write_config(work / "cfg" / "config.yaml", cfg)
    proc = dry(work, cores="8")  # enough cores that a thread count is not capped
    if NOT_A_MEASUREMENT in schema.get("description", ""):
        assert scheduled_cells(proc) == set()
    else:
        assert scheduled_cells(proc) == config_cells(lsconfig.validate(cfg, base_dir=work)), key


def test_report_settings_are_the_cells(run):
    """measure.threads changed: every cell is measured again with it, and the report says what the cells say."""
    work, cfg = run
    cfg["measure"]["threads"] = 2
    write_config(work / "cfg" / "config.yaml", cfg)
    proc = snakemake(work, "--cores", "1", "all", configfile=work / "cfg" / "config.yaml")
    assert job_counts(proc)["measure_cell"] == 3
    for path in config_cells(cfg):
        assert json.loads((work / path).read_text())["cell"]["threads"] == 2
    assert "| `threads` | 2 |" in (work / "results" / "report.md").read_text().splitlines()
    assert yaml.safe_load((work / "cfg" / "config.yaml").read_text())["measure"]["threads"] == 2
