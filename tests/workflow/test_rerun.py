"""The real pipeline on the CPU default, run once whole (its tables, figures and report), and what a rerun of it
measures again: a deleted or unreadable replicate or cell, a missing intermediate, a changed measurement setting,
replicate count or architecture; and nothing else."""

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, job_outputs, small_config, snakemake, write_config
from latency_sensitivity import cli
from latency_sensitivity import config as lsconfig
from latency_sensitivity import measurement_jobs
from latency_sensitivity.columns import REFERENCE_NAMES

pytestmark = pytest.mark.e2e

CELL = "results/cells/tiny-qwen2/fp32/eager/seq{seq}_batch{batch}.json"
REPLICATE = "results/cells/tiny-qwen2/fp32/eager/seq{seq}_batch{batch}/r{k}.json"
NOT_A_MEASUREMENT = measurement_jobs.NOT_A_MEASUREMENT
COMPILED_ONLY = measurement_jobs.COMPILED_ONLY
CUDA_ONLY = measurement_jobs.CUDA_ONLY
REPLICATES = 2  # the finished run's replicates per cell
N_CELLS = 6  # the finished run's cells (small_config's sweeps)
NOTHING = {"all": 1}  # nothing to measure or rebuild: only `all` runs, printing the run's summary
FORKED = sys.platform == "linux"  # measure.isolation forked is Linux only


def job_counts(proc) -> dict[str, int]:
    """Snakemake's "Job stats" table: {rule: jobs}."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def measured(proc) -> set[str]:
    """The replicate files the run measures (jobs of measure_cell)."""
    return set(job_outputs(proc, "measure_cell"))


def combined(proc) -> set[str]:
    """The cell files the run combines from their replicates (jobs of combine_replicates)."""
    return set(job_outputs(proc, "combine_replicates"))


def config_cells(cfg) -> set[str]:
    return {cell.path for cell in lsconfig.all_cells(cfg)}


def config_replicates(cfg, replicates: int | None = None) -> set[str]:
    """Every replicate file of the config's cells (replicates 1..replicates, default the config's count)."""
    k = cfg["measure"]["replicates"] if replicates is None else replicates
    return {path for cell in lsconfig.all_cells(cfg) for path in cell.replicate_paths(k)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The whole pipeline run once on two cores: the small config's three sweeps (six cells: the grid adds one to
    the other two sweeps' five), two replicates each, its model from an architecture JSON in the work folder; with
    Snakemake's output. The tests below read it or rerun copies of it."""
    default_config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    root = tmp_path_factory.mktemp("finished")
    (root / "arch").mkdir()
    shutil.copy(REPO / "config" / "models" / "tiny-qwen2.json", root / "arch" / "tiny.json")
    # the workers forked from a fork server where the platform can (the rerun tests do not depend on it; the
    # replicate-order test checks the forked path end to end)
    cfg = small_config(default_config, replicates=REPLICATES, **({"isolation": "forked"} if FORKED else {}))
    cfg["models"] = {"tiny-qwen2": {"architecture": "arch/tiny.json"}, **{
        k: v for k, v in default_config["models"].items() if k != "tiny-qwen2"}}
    write_config(root / "cfg" / "config.yaml", cfg)
    proc = snakemake(root, "--cores", "2", "all", configfile=root / "cfg" / "config.yaml")
    return root, cfg, proc


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run (times and Snakemake's records kept) and its config."""
    root, cfg, _ = finished
    work = tmp_path / "work"
    shutil.copytree(root, work, symlinks=True)
    return work, json.loads(json.dumps(cfg))


def dry(work, *args, cores="1"):
    return snakemake(work, "-n", "--cores", cores, "all", *args, configfile=work / "cfg" / "config.yaml")


DOWNSTREAM = {"merge_sweep": 1, "detect_collapse": 1, "plot_sweep": 1, "build_report": 1, "all": 1}


def test_every_first_replicate_runs_before_any_second(finished):
    """measure.replicates 2 (the finished run): every cell's replicate 1 is measured before any cell's replicate
    2, and each cell's result is combined from both, with the spread between them. With
    isolation forked, each replicate's worker was forked from the run's one fork server, which the run's end
    stopped."""
    root, _, proc = finished
    order = [re.fullmatch(r".*/(seq\d+_batch\d+)/r(\d+)\.json", path).groups()
             for path in job_outputs(proc, "measure_cell")]
    cells = {cell for cell, _ in order}
    assert len(cells) == N_CELLS and sorted(order) == sorted((cell, k) for cell in cells for k in ("1", "2"))
    assert [k for _, k in order] == ["1"] * N_CELLS + ["2"] * N_CELLS, order
    for cell in cells:
        seq, batch = re.fullmatch(r"seq(\d+)_batch(\d+)", cell).groups()
        result = json.loads((root / CELL.format(seq=seq, batch=batch)).read_text())
        assert result["status"] == "ok" and result["metrics"]["replicates"] == 2
        assert [r["replicate"] for r in result["replicates"]] == [1, 2]
        assert math.isfinite(result["metrics"]["decode_replicate_spread_pct"])
        assert result["metrics"]["decode_replicate_spread_pct"] >= 0
    for sweep in ("seq_sweep", "batch_sweep", "grid"):
        table = pd.read_csv(root / "results" / sweep / "sweep.csv")
        assert (table["replicates"] == 2).all() and table["decode_replicate_spread_pct"].notna().all()
    if FORKED:
        workers = [json.loads(path.read_text())["worker"] for path in (root / "results" / "cells").rglob("r*.json")]
        assert len(workers) == N_CELLS * REPLICATES and {w["isolation"] for w in workers} == {"forked"}
        assert len({w["pid"] for w in workers}) == 2  # a worker per replicate
        (server,) = {w["forked_from"]["pid"] for w in workers}  # one fork server for the run
        deadline = time.monotonic() + 10
        while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{server}").exists(), "the fork server outlived the run"


def test_full_pipeline_then_only_changed_cells_rerun(finished, run):
    """The finished run's tables, figures and report; then, on a copy: a rerun with nothing changed runs only
    `all`; another run's results added to the report rebuild only the report; a seq added measures only that
    cell; a changed measurement setting measures every cell again; the HTML report bundles the figures."""
    root, _, _ = finished
    for sweep, axis, n in (("seq_sweep", "seq_len", 3), ("batch_sweep", "batch", 3)):
        df = pd.read_csv(root / "results" / sweep / "sweep.csv")
        assert list(df.columns[: len(REFERENCE_NAMES)]) == REFERENCE_NAMES
        assert len(df) == n and (df["status"] == "ok").all()
        assert (df["prefill_p50_ms"] > 0).all() and (df["decode_tok_s"] > 0).all()
        assert df[axis].is_monotonic_increasing
        assert {"ttft_p50_ms", "tpot_p50_ms", "decode_floor_ms", "decode_efficiency"} <= set(df.columns)
        assert (df["tokenize_p50_ms"] > 0).all() and (df["request_p50_ms"] > df["e2e_p50_ms"]).all()
        assert (root / "results" / sweep / "anatomy.png").read_bytes().startswith(b"\x89PNG")
        png = (root / "results" / sweep / "combined.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    grid = pd.read_csv(root / "results" / "grid" / "sweep.csv")
    assert sorted(zip(grid["seq_len"], grid["batch"])) == [(16, 1), (16, 2), (32, 1), (32, 2)]
    assert (root / "results" / "grid" / "heatmap.png").read_bytes().startswith(b"\x89PNG")
    assert not (root / "results" / "seq_sweep" / "heatmap.png").exists()
    assert (root / "results" / "calibration" / "cpu_fp32.json").is_file()
    assert (root / "results" / "tokenizer" / "tokenizer.json").is_file()
    load = json.loads((root / "results" / "loading" / "tiny-qwen2" / "fp32" / "cpu.json").read_text())
    assert load["status"] == "ok" and load["bytes"] > 0 and load["read_s"] > 0
    assert (root / "logs" / "measure" / "tiny-qwen2" / "fp32" / "eager" / "seq16_batch1" / "r1.log").is_file()
    report = (root / "results" / "report.md").read_text()
    for text in ("## Setup", "## Sweep `seq_sweep`", "## Sweep `batch_sweep`", "## Sweep `grid`", "![", "| 64 |",
                 "Findings", "Roofline", "ceilings (cpu, fp32)", "Request anatomy", "## Model loading",
                 # the one-time jobs' wall time, apart from the cells' cost
                 "once per device and dtype", "The loading jobs' wall time"):
        assert text in report
    cells = (root / "results" / "cells").glob("*/*/*/*.json")
    replicates = (root / "results" / "cells").glob("*/*/*/*/r*.json")
    # cells shared between sweeps are measured once
    assert len(list(cells)) == N_CELLS and len(list(replicates)) == N_CELLS * REPLICATES

    work, cfg = run
    config_file = work / "cfg" / "config.yaml"
    # Nothing changed: nothing is measured; only `all` runs, printing the summary.
    proc = snakemake(work, "--cores", "1", "all", configfile=config_file)
    assert re.findall(r"rule (\w+):", proc.stdout + proc.stderr) == ["all"]
    assert f"cells: {N_CELLS} ok, 0 oom, 0 error" in proc.stderr

    # Another run of the same sweeps (as if on another device) added to the report: only the report is rebuilt.
    shutil.copytree(work / "results", work / "other_run")
    cfg["compare_devices"] = [{"label": "other run", "results": "other_run"}]
    write_config(config_file, cfg)
    proc = snakemake(work, "--cores", "1", "all", configfile=config_file)
    assert re.findall(r"rule (\w+):", proc.stdout + proc.stderr) == ["build_report", "all"]
    report = (work / "results" / "report.md").read_text()
    assert "## Devices compared" in report and "### other run: sweep `grid` · tiny-qwen2 · fp32 · eager" in report

    # One seq added to one sweep: exactly that cell is measured; the other sweep is not rebuilt.
    cfg["sweeps"]["seq_sweep"]["seq"].append(128)
    write_config(config_file, cfg)
    proc = dry(work)
    assert measured(proc) == {REPLICATE.format(seq=128, batch=1, k=k) for k in range(1, REPLICATES + 1)}
    assert combined(proc) == {CELL.format(seq=128, batch=1)}
    assert "results/batch_sweep/sweep.csv" not in re.findall(r"output: (\S+)", proc.stdout + proc.stderr)

    # A measurement setting changed: every cell is measured again.
    cfg["measure"]["reps"] = 3
    write_config(config_file, cfg)
    proc = dry(work)
    assert len(measured(proc)) == (N_CELLS + 1) * REPLICATES and len(combined(proc)) == N_CELLS + 1

    # The HTML report bundles the registered figures.
    snakemake(work, "--report", "results/report.html", configfile=config_file)
    assert (work / "results" / "report.html").stat().st_size > 100_000


def test_deleted_replicate_is_measured_again_and_only_it(run):
    work, _ = run
    assert job_counts(dry(work)) == NOTHING
    cell = CELL.format(seq=64, batch=1)  # in seq_sweep only
    replicate = REPLICATE.format(seq=64, batch=1, k=2)
    old = json.loads((work / replicate).read_text())
    kept = (work / REPLICATE.format(seq=64, batch=1, k=1)).read_bytes()
    report_time = (work / "results" / "report.md").stat().st_mtime
    (work / replicate).unlink()
    expected = {"measure_cell": 1, "combine_replicates": 1, **DOWNSTREAM}
    proc = dry(work)
    assert job_counts(proc) == expected and measured(proc) == {replicate} and combined(proc) == {cell}
    proc = snakemake(work, "--cores", "1", "all", configfile=work / "cfg" / "config.yaml")
    assert job_counts(proc) == expected
    new = json.loads((work / replicate).read_text())
    assert new["status"] == "ok" and new["cell"]["replicate"] == 2
    assert new["environment"]["timestamp"] != old["environment"]["timestamp"]
    assert (work / REPLICATE.format(seq=64, batch=1, k=1)).read_bytes() == kept  # the other replicate stays
    result = json.loads((work / cell).read_text())
    assert result["metrics"]["replicates"] == REPLICATES
    assert [r["replicate"] for r in result["replicates"]] == [1, 2]
    assert result["replicates"][1]["prefill_p50_ms"] == pytest.approx(new["metrics"]["prefill_p50_ms"])
    row = pd.read_csv(work / "results" / "seq_sweep" / "sweep.csv").query("seq_len == 64").iloc[0]
    assert row["prefill_p50_ms"] == pytest.approx(result["metrics"]["prefill_p50_ms"])
    assert (work / "results" / "report.md").stat().st_mtime > report_time
    assert job_counts(dry(work)) == NOTHING


def test_deleted_cell_is_combined_again_without_measuring(run):
    work, _ = run
    cell = CELL.format(seq=64, batch=1)  # in seq_sweep only
    old = json.loads((work / cell).read_text())
    replicates = {k: (work / REPLICATE.format(seq=64, batch=1, k=k)).read_bytes() for k in (1, 2)}
    report_time = (work / "results" / "report.md").stat().st_mtime
    (work / cell).unlink()
    expected = {"combine_replicates": 1, **DOWNSTREAM}
    proc = dry(work)
    assert job_counts(proc) == expected and measured(proc) == set() and combined(proc) == {cell}
    proc = snakemake(work, "--cores", "1", "all", configfile=work / "cfg" / "config.yaml")
    assert job_counts(proc) == expected
    assert {k: (work / REPLICATE.format(seq=64, batch=1, k=k)).read_bytes() for k in (1, 2)} == replicates
    new = json.loads((work / cell).read_text())
    assert new["status"] == "ok" and new["metrics"] == pytest.approx(old["metrics"], nan_ok=True)
    row = pd.read_csv(work / "results" / "seq_sweep" / "sweep.csv").query("seq_len == 64").iloc[0]
    assert row["prefill_p50_ms"] == pytest.approx(new["metrics"]["prefill_p50_ms"])
    assert (work / "results" / "report.md").stat().st_mtime > report_time
    assert job_counts(dry(work)) == NOTHING


@pytest.mark.parametrize(
    "broken, measures",
    [
        (CELL.format(seq=16, batch=4), set()),  # the combined cell: combined again from its replicates
        (REPLICATE.format(seq=16, batch=4, k=2), {REPLICATE.format(seq=16, batch=4, k=2)}),
    ],
    ids=["cell", "replicate"],
)
def test_unreadable_cell_stops_the_run_before_any_job_and_is_listed(run, broken, measures):
    work, _ = run
    cell = CELL.format(seq=16, batch=4)  # in batch_sweep only
    text = (work / broken).read_text()
    (work / broken).write_text(text[: len(text) // 2])
    proc = snakemake(work, "--cores", "1", "all", configfile=work / "cfg" / "config.yaml", check=False)
    err = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert not re.search(r"rule (measure_cell|combine_replicates|merge_sweep):", err)
    assert f"{broken}: JSONDecodeError" in err
    assert "delete them and rerun" in err and f"--forcerun {broken}" in err
    listed = cli.failed_cells(work / "results")
    assert [(str(p.relative_to(work)), s.split(":")[0]) for p, s in listed] == [(broken, "unreadable")]
    # The remedies the message names: --forcerun of the file, or deleting it.
    proc = dry(work, "--forcerun", broken)
    assert measured(proc) == measures and combined(proc) == {cell} and job_counts(proc)["merge_sweep"] == 1
    (work / broken).unlink()
    proc = dry(work)
    assert measured(proc) == measures and combined(proc) == {cell} and job_counts(proc)["merge_sweep"] == 1


def test_failed_replicate_is_listed_with_its_cell_and_forcerun_measures_only_it(run):
    """A replicate that failed (here one that ran out of memory) fails its cell; `latency-sensitivity
    failed-cells` lists both files, and `--forcerun` of that list measures that replicate again, and only it."""
    work, _ = run
    cell = CELL.format(seq=16, batch=4)  # in batch_sweep only
    replicate = REPLICATE.format(seq=16, batch=4, k=2)
    result = json.loads((work / replicate).read_text())
    message = "OutOfMemoryError during decode: out of memory"  # the runner's layout of a failed cell
    result.update(status="oom", metrics={}, samples={},
                  error={"type": "OutOfMemoryError", "message": message, "phase": "decode"})
    (work / replicate).write_text(json.dumps(result))
    # The edited replicate is newer than its cell: the next run combines the cell again, without measuring.
    proc = snakemake(work, "--cores", "1", "all", configfile=work / "cfg" / "config.yaml")
    assert measured(proc) == set() and combined(proc) == {cell}
    assert f"cells: {N_CELLS - 1} ok, 1 oom, 0 error" in proc.stderr
    assert json.loads((work / cell).read_text())["error"]["message"] == f"replicate 2: {message}"
    listing = subprocess.run([str(Path(sys.executable).parent / "latency-sensitivity"), "failed-cells"], cwd=work,
                             capture_output=True, text=True, check=True).stdout.split()
    assert sorted(listing) == [cell, replicate]
    proc = dry(work, "--forcerun", *listing)
    assert measured(proc) == {replicate} and combined(proc) == {cell}
    assert job_counts(proc)["measure_cell"] == 1 and job_counts(proc)["merge_sweep"] == 1


@pytest.mark.parametrize(
    "missing, jobs",
    [
        # A retrained tokenizer is timed by every cell: all are measured again.
        ("results/tokenizer/tokenizer.json",
         {"train_tokenizer": 1, "measure_cell": N_CELLS * REPLICATES, "combine_replicates": N_CELLS,
          "merge_sweep": 3}),
        ("results/calibration/cpu_fp32.json", {"calibrate_device": 1, "merge_sweep": 3}),
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
    remade = {"calibrate_device", "train_tokenizer", "materialize_checkpoint", "measure_loading", "measure_cell",
              "combine_replicates"}
    assert {rule for rule in counts if rule in remade} == {rule for rule in jobs if rule in remade}


def test_changed_architecture_remeasures_its_cells(run):
    work, cfg = run
    arch = json.loads((work / "arch" / "tiny.json").read_text())
    arch["intermediate_size"] *= 2
    (work / "arch" / "tiny.json").write_text(json.dumps(arch))
    proc = dry(work)
    assert measured(proc) == config_replicates(cfg) and combined(proc) == config_cells(cfg)
    assert job_counts(proc)["materialize_checkpoint"] == 1


def measure_keys():
    return lsconfig.load_schema()["properties"]["measure"]["properties"]


def changed(key: str, schema: dict, cfg: dict):
    """Another valid value for measure.<key>."""
    if key == "cpu_affinity":  # default [] (the CPUs the job starts with)
        return [0]
    value = cfg["measure"].get(key, schema.get("default"))  # a key the config leaves to its default
    if key == "models":
        return [next(name for name in cfg["models"] if name not in value)]
    if schema.get("type") == "array":
        return [next(v for v in schema["items"]["enum"] if v not in value)]
    if "enum" in schema:
        return next(v for v in schema["enum"] if v != value)
    if schema.get("type") == "integer":
        return value + 1
    raise AssertionError(f"test_rerun.py cannot change measure.{key} yet: teach changed() a value for it")


@pytest.mark.parametrize("key", [
    pytest.param(key, marks=pytest.mark.skipif(
        key == "device" and not torch.cuda.is_available(), reason="measure.device: cuda needs a CUDA device"))
    for key in sorted(set(measure_keys()) - {"replicates"})
])
def test_every_measure_key_remeasures_its_cells_or_says_it_does_not(run, key):
    """Each measure.* key of the schema: changing it re-measures every replicate of every cell, unless its
    description says it does not change a cell's numbers, changes only the compiled backend's cells (the
    finished run's cells are eager ones) or only cells on CUDA (they are on the CPU): then it re-measures none. `replicates` names the replicate files
    instead (the next test)."""
    work, cfg = run
    schema = measure_keys()[key]
    cfg["measure"][key] = changed(key, schema, cfg)
    write_config(work / "cfg" / "config.yaml", cfg)
    proc = dry(work, cores="8")  # enough cores that a thread count is not capped
    described = schema.get("description", "")
    if NOT_A_MEASUREMENT in described or COMPILED_ONLY in described or CUDA_ONLY in described:
        assert {cell.backend for cell in lsconfig.all_cells(cfg)} == {"eager"} and cfg["measure"]["device"] == "cpu"
        assert measured(proc) == set() and combined(proc) == set()
    else:
        cells = lsconfig.validate(cfg, base_dir=work)
        assert measured(proc) == config_replicates(cells, REPLICATES), key
        assert combined(proc) == config_cells(cells), key


@pytest.mark.parametrize("replicates", [REPLICATES + 1, REPLICATES - 1])
def test_replicates_measures_only_new_replicates_and_recombines(run, replicates):
    """Raising measure.replicates measures only the new replicate of each cell; lowering it measures nothing;
    either way every cell is combined again from its replicates, and what follows rebuilt."""
    work, cfg = run
    assert "replicates" in measure_keys()
    cfg["measure"]["replicates"] = replicates
    write_config(work / "cfg" / "config.yaml", cfg)
    proc = dry(work)
    new = config_replicates(cfg) - config_replicates(cfg, REPLICATES)
    assert measured(proc) == new and len(new) == (N_CELLS if replicates > REPLICATES else 0)
    assert combined(proc) == config_cells(cfg)
    counts = job_counts(proc)
    assert counts.get("measure_cell", 0) == len(new) and counts["merge_sweep"] == 3 and counts["build_report"] == 1
    assert not {"calibrate_device", "train_tokenizer", "materialize_checkpoint", "measure_loading"} & set(counts)


def test_threads_reach_every_cell_command(run):
    """measure.threads changed: every replicate of every cell is measured again, each with the new count on its
    runner's command line, and the device calibrated again with it. (The runner records the count in the cell,
    test_runner.py, and the report's Settings show what the cells record, test_config.py's cell_settings tests.)"""
    work, cfg = run
    cfg["measure"]["threads"] = 2
    write_config(work / "cfg" / "config.yaml", cfg)
    proc = dry(work, cores="8")  # enough cores that the count is not capped
    assert measured(proc) == config_replicates(cfg) and combined(proc) == config_cells(cfg)
    lines = (proc.stdout + proc.stderr).splitlines()
    for module, jobs in (("runner", N_CELLS * REPLICATES), ("calibrate", 1)):
        commands = [line for line in lines
                    if line.startswith(f"Shell command: python3 -m latency_sensitivity.measure.{module} ")]
        assert len(commands) == jobs and all(" --threads 2 " in c for c in commands), commands
