"""The real Snakemake pipeline on the CPU default, in a temporary folder."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
import pytest
import torch

from conftest import job_outputs, small_config, snakemake, write_config
from latency_sensitivity import cli

pytestmark = pytest.mark.e2e


CELLS = "results/cells/tiny-qwen2/fp32"


def measured(proc) -> set[str]:
    """The replicate files the run measures (jobs of measure_cell)."""
    return set(job_outputs(proc, "measure_cell"))


def combined(proc) -> set[str]:
    """The cell files the run combines from their replicates (jobs of combine_replicates)."""
    return set(job_outputs(proc, "combine_replicates"))


def test_graph_and_compiled_backend_cells_are_scheduled(tmp_path, default_config):
    cfg = small_config(default_config, backends=["eager", "graph", "compiled"], replicates=1)
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", configfile=config_file)
    cells = combined(proc)
    assert len(cells) == 18 and len(measured(proc)) == 18  # 6 cells per backend, one replicate each
    assert f"{CELLS}/graph/seq16_batch1.json" in cells and f"{CELLS}/graph/seq16_batch1/r1.json" in measured(proc)
    assert f"{CELLS}/compiled/seq16_batch1.json" in cells
    assert f"{CELLS}/compiled/seq16_batch1/r1.json" in measured(proc)
    assert "--backend compiled" in proc.stdout + proc.stderr  # the wildcard reaches the runner


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["sweeps"]["seq_sweep"]["seq"].__setitem__(0, 0), "sweeps.seq_sweep.seq[0]"),
        (lambda c: c["measure"].__setitem__("dtypes", ["int3"]), "measure.dtypes[0]"),
        (lambda c: c.__setitem__("collapse_factor", 1.0), "collapse_factor"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, default_config, mutate, message):
    cfg = small_config(default_config)
    mutate(cfg)
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    proc = snakemake(tmp_path, "--cores", "1", "all", configfile=config_file, check=False)
    assert proc.returncode != 0
    assert "invalid configuration" in proc.stderr and message in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_cuda_stops_before_any_job(tmp_path, default_config):
    """measure.device: cuda without a CUDA device: the workflow says so before any job runs."""
    cfg = small_config(default_config, device="cuda")
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    proc = snakemake(tmp_path, "--cores", "1", "all", configfile=config_file, check=False)
    assert proc.returncode != 0
    assert "config key measure.device: torch sees no CUDA device" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_error_cells_fail_the_run_after_the_report(tmp_path, default_config):
    """A cell that fails at run time is a row; the report is written, then the run exits non-zero with the
    summary; allow_errors: true accepts it (given on the command line, where Snakemake passes a string)."""
    cfg = small_config(default_config, attn_implementation="flash_attention_2", replicates=1)
    cfg["sweeps"] = {"s": {"seq": [16], "batch": [1]}}
    cfg["loading"] = {"enabled": False}
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    proc = snakemake(tmp_path, "--cores", "1", "all", configfile=config_file, check=False)
    assert proc.returncode != 0
    assert (tmp_path / "results" / "report.md").is_file() and (tmp_path / "results" / "s" / "combined.png").is_file()
    assert "cells: 0 ok, 0 oom, 1 error" in proc.stderr
    assert f"{CELLS}/eager/seq16_batch1.json: replicate 1: ImportError during model_build" in proc.stderr
    # `latency-sensitivity failed-cells` lists the failed replicate and its cell; --forcerun of that list
    # measures the replicate again.
    listing = subprocess.run([str(Path(sys.executable).parent / "latency-sensitivity"), "failed-cells"],
                             cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(listing) == [f"{CELLS}/eager/seq16_batch1.json", f"{CELLS}/eager/seq16_batch1/r1.json"]
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", "--forcerun", *listing, configfile=config_file)
    assert measured(proc) == {f"{CELLS}/eager/seq16_batch1/r1.json"}
    assert combined(proc) == {f"{CELLS}/eager/seq16_batch1.json"}
    proc = snakemake(tmp_path, "--cores", "1", "all", "--config", "allow_errors=true", configfile=config_file)
    assert "1 failed, allowed by the config" in proc.stderr


def test_cli_backends_option(tmp_path, capsys):
    """--backends selects the execution backends; a dry run plans one cell per backend; bad names stop early."""
    out = tmp_path / "b.csv"
    rc = cli.main(["sweep", "--model", "tiny-qwen2", "--dtype", "fp32", "--device", "cpu", "--seq", "16",
                   "--batch-sizes", "1,2", "--backends", "eager,graph", "--gen-tokens", "3", "--warmup", "0",
                   "--reps", "1", "--out", str(out), "--dry-run"])
    assert rc == 0
    cfg = yaml.safe_load((tmp_path / "b.work" / "config" / "config.yaml").read_text())
    assert cfg["measure"]["backends"] == ["eager", "graph"]
    # the reference interface's default: a process per cell; the compiled step once for every batch size (the
    # config's default too)
    assert (cfg["measure"]["isolation"], cfg["measure"]["compile_shapes"]) == ("process", "dynamic_batch")
    assert cfg["measure"]["compiled_step"] == "saved"
    rc = cli.main(["sweep", "--model", "tiny-qwen2", "--dtype", "fp32", "--device", "cpu", "--seq", "16",
                   "--batch-sizes", "2,4", "--backends", "compiled", "--isolation", "shared", "--compile-shapes",
                   "static", "--compiled-step", "traced", "--out", str(out), "--dry-run"])
    assert rc == 0
    cfg = yaml.safe_load((tmp_path / "b.work" / "config" / "config.yaml").read_text())
    assert (cfg["measure"]["isolation"], cfg["measure"]["compile_shapes"]) == ("shared", "static")
    assert cfg["measure"]["compiled_step"] == "traced"
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--model", "tiny-qwen2", "--seq", "16", "--isolation", "thread", "--out", str(out)])
    assert "argument --isolation: invalid choice: 'thread'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--model", "tiny-qwen2", "--seq", "16", "--backends", "tensorrt", "--out", str(out)])
    assert "backends must be a comma-separated subset of eager, graph, compiled" in capsys.readouterr().err
