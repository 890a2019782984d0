"""The real Snakemake pipeline on the CPU default, in a temporary folder."""

import json
import re
import shutil

import pandas as pd
import yaml
import pytest
import torch

from conftest import small_config, snakemake, write_config
from latency_sensitivity import cli
from latency_sensitivity.columns import REFERENCE_NAMES

pytestmark = pytest.mark.e2e


def scheduled_cells(proc) -> set[str]:
    text = proc.stdout + proc.stderr
    return set(re.findall(r"output: (results/cells/\S+\.json)", text))


def test_full_pipeline_then_only_changed_cells_rerun(tmp_path, default_config):
    cfg = small_config(default_config)
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    snakemake(tmp_path, "--cores", "2", "all", configfile=config_file)

    for sweep, axis, n in (("seq_sweep", "seq_len", 3), ("batch_sweep", "batch", 3)):
        df = pd.read_csv(tmp_path / "results" / sweep / "sweep.csv")
        assert list(df.columns[: len(REFERENCE_NAMES)]) == REFERENCE_NAMES
        assert len(df) == n and (df["status"] == "ok").all()
        assert (df["prefill_p50_ms"] > 0).all() and (df["decode_tok_s"] > 0).all()
        assert df[axis].is_monotonic_increasing
        assert {"ttft_p50_ms", "tpot_p50_ms", "decode_floor_ms", "decode_efficiency"} <= set(df.columns)
        assert (df["tokenize_p50_ms"] > 0).all() and (df["request_p50_ms"] > df["e2e_p50_ms"]).all()
        assert (tmp_path / "results" / sweep / "anatomy.png").read_bytes().startswith(b"\x89PNG")
        png = (tmp_path / "results" / sweep / "combined.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000
    grid = pd.read_csv(tmp_path / "results" / "grid" / "sweep.csv")
    assert sorted(zip(grid["seq_len"], grid["batch"])) == [(16, 1), (16, 2), (32, 1), (32, 2)]
    assert (tmp_path / "results" / "grid" / "heatmap.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "results" / "seq_sweep" / "heatmap.png").exists()
    assert (tmp_path / "results" / "calibration" / "cpu_fp32.json").is_file()
    assert (tmp_path / "results" / "tokenizer" / "tokenizer.json").is_file()
    load = json.loads((tmp_path / "results" / "loading" / "tiny-qwen2" / "fp32" / "cpu.json").read_text())
    assert load["status"] == "ok" and load["bytes"] > 0 and load["read_s"] > 0
    assert (tmp_path / "logs" / "measure" / "tiny-qwen2" / "fp32" / "eager" / "seq16_batch1.log").is_file()
    report = (tmp_path / "results" / "report.md").read_text()
    for text in ("## Setup", "## Sweep `seq_sweep`", "## Sweep `batch_sweep`", "## Sweep `grid`", "![", "| 64 |",
                 "Findings", "Roofline", "ceilings (cpu, fp32)", "Request anatomy", "## Model loading"):
        assert text in report
    cells = sorted(p.name for p in (tmp_path / "results" / "cells").rglob("*.json"))
    assert len(cells) == 6  # cells shared between sweeps are measured once

    # Nothing changed: nothing runs.
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", configfile=config_file)
    assert "Nothing to be done" in proc.stdout + proc.stderr

    # Another run of the same sweeps (as if on another device) added to the report: only the report is rebuilt.
    shutil.copytree(tmp_path / "results", tmp_path / "other_run")
    cfg["compare_devices"] = [{"label": "other run", "results": "other_run"}]
    write_config(config_file, cfg)
    proc = snakemake(tmp_path, "--cores", "1", "all", configfile=config_file)
    assert re.findall(r"rule (\w+):", proc.stdout + proc.stderr) == ["build_report", "all"]
    report = (tmp_path / "results" / "report.md").read_text()
    assert "## Devices compared" in report and "### other run: sweep `grid` · tiny-qwen2 · fp32 · eager" in report

    # One seq added to one sweep: exactly that cell is measured; the other sweep is not rebuilt.
    cfg["sweeps"]["seq_sweep"]["seq"].append(128)
    write_config(config_file, cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", configfile=config_file)
    assert scheduled_cells(proc) == {"results/cells/tiny-qwen2/fp32/eager/seq128_batch1.json"}
    assert "results/batch_sweep/sweep.csv" not in re.findall(r"output: (\S+)", proc.stdout + proc.stderr)

    # A measurement setting changed: every cell is measured again.
    cfg["measure"]["reps"] = 3
    write_config(config_file, cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", configfile=config_file)
    assert len(scheduled_cells(proc)) == 7

    # The HTML report bundles the registered figures.
    snakemake(tmp_path, "--report", "results/report.html", configfile=config_file)
    assert (tmp_path / "results" / "report.html").stat().st_size > 100_000


def test_graph_and_compiled_backend_cells_are_scheduled(tmp_path, default_config):
    cfg = small_config(default_config, backends=["eager", "graph", "compiled"])
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", configfile=config_file)
    cells = scheduled_cells(proc)
    assert len(cells) == 18  # 6 cells per backend
    assert "results/cells/tiny-qwen2/fp32/graph/seq16_batch1.json" in cells
    assert "results/cells/tiny-qwen2/fp32/compiled/seq16_batch1.json" in cells
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
def test_cli_sweep_finishes_with_failed_cells_recorded(tmp_path):
    """Cells that fail (here: CUDA asked for on a CPU machine) are rows; the sweep, plots and report finish."""
    out = tmp_path / "x.csv"
    rc = cli.main(["sweep", "--model", "Qwen/Qwen2.5-3B-Instruct", "--dtype", "fp16", "--device", "cuda",
                   "--seq", "128,256", "--batch-sizes", "1", "--gen-tokens", "32", "--warmup", "3", "--reps", "7",
                   "--collapse-factor", "2", "--out", str(out)])
    assert rc == 0
    df = pd.read_csv(out)
    assert list(df.columns[: len(REFERENCE_NAMES)]) == REFERENCE_NAMES
    assert list(df["seq_len"]) == [128, 256] and list(df["flag"]) == ["error", "error"]
    work = tmp_path / "x.work"
    assert "torch sees no CUDA device" in (work / "results" / "report.md").read_text()
    assert [status for _, status in cli.failed_cells(work / "results")] == ["error", "error"]


def test_cli_backends_option(tmp_path, capsys):
    """--backends selects the execution backends; a dry run plans one cell per backend; bad names stop early."""
    out = tmp_path / "b.csv"
    rc = cli.main(["sweep", "--model", "tiny-qwen2", "--dtype", "fp32", "--device", "cpu", "--seq", "16",
                   "--batch-sizes", "1,2", "--backends", "eager,graph", "--gen-tokens", "3", "--warmup", "0",
                   "--reps", "1", "--out", str(out), "--dry-run"])
    assert rc == 0
    cfg = yaml.safe_load((tmp_path / "b.work" / "config" / "config.yaml").read_text())
    assert cfg["measure"]["backends"] == ["eager", "graph"]
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--model", "tiny-qwen2", "--seq", "16", "--backends", "tensorrt", "--out", str(out)])
    assert "backends must be a comma-separated subset of eager, graph, compiled" in capsys.readouterr().err
