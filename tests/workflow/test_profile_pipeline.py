"""The profiling stage through the real Snakemake: the torch.profiler target end to end on the CPU, the
profiler targets kept out of `all`, and a missing profiler binary stopping only its targets, by name."""

import json
import re

import pandas as pd
import pytest

from conftest import small_config, snakemake, write_config

pytestmark = pytest.mark.e2e


def profiled_config(default_config, **profile):
    cfg = small_config(default_config, replicates=1)
    cfg["sweeps"] = {"seq_sweep": {"seq": [16], "batch": [1]}}
    cfg["loading"] = dict(cfg.get("loading") or {}, enabled=False)  # not what these tests are about
    cfg["profile"] = dict({"tools": ["torch"], "cells": [{"seq": 16, "batch": 4}, {"seq": 64, "batch": 1}],
                           "warmup": 1, "reps": 1}, **profile)
    return cfg


def outputs(proc) -> list[str]:
    """Every output file of the planned or run jobs."""
    lines = re.findall(r"^\s*output: (.+)$", proc.stdout + proc.stderr, flags=re.MULTILINE)
    return [path.strip() for line in lines for path in line.split(",")]


def test_torch_profiles_end_to_end_and_not_part_of_all(tmp_path, default_config):
    cfg = profiled_config(default_config)
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)

    planned = " ".join(outputs(snakemake(tmp_path, "-n", "--cores", "1", "all", configfile=config_file)))
    assert "results/profiles" not in planned

    snakemake(tmp_path, "--cores", "2", "profile_all", configfile=config_file)
    root = tmp_path / "results" / "profiles"
    for cell in ("seq16_batch4", "seq64_batch1"):
        folder = root / "torch" / "tiny-qwen2" / "fp32" / "eager" / cell
        assert (folder / "trace.json.gz").stat().st_size > 1000
        ops = pd.read_csv(folder / "ops.csv")
        assert "aten::mm" in set(ops["name"]) or "aten::addmm" in set(ops["name"])
        summary = json.loads((root / "summary" / "torch" / "tiny-qwen2" / "fp32" / "eager" / f"{cell}.json").read_text())
        assert summary["status"] == "ok" and summary["basis"] == "cpu ops"
        phases = {r["phase"]: r for r in summary["phases"]}
        assert set(phases) == {"prefill", "decode"} and all(r["ranges"] == 1 for r in phases.values())
        shares = {}
        for row in summary["classes"]:
            shares.setdefault(row["phase"], {})[row["kernel_class"]] = row["share"]
        assert sum(shares["decode"].values()) == pytest.approx(1.0)
        assert shares["prefill"]["GEMM"] > 0.05
    text = (root / "report.md").read_text()
    assert "| s16×b4 prefill | s16×b4 decode | s64×b1 prefill | s64×b1 decode |" in text
    classes = pd.read_csv(root / "kernel_classes.csv")
    assert set(classes["cell"]) == {"tiny-qwen2 fp32 eager seq 16 x batch 4", "tiny-qwen2 fp32 eager seq 64 x batch 1"}
    # The measured cells were not built by profile_all.
    assert not (tmp_path / "results" / "cells").exists()

    # in_report: the main report gains the profiles' section, reusing the profiles already built.
    cfg["profile"]["in_report"] = True
    write_config(config_file, cfg)
    proc = snakemake(tmp_path, "--cores", "2", "all", configfile=config_file)
    assert not [o for o in outputs(proc) if o.startswith("results/profiles/torch")]
    assert "## Profiles" in (tmp_path / "results" / "report.md").read_text()


@pytest.mark.parametrize("tool", ["nsys", "ncu"])
def test_missing_profiler_names_binary_and_key(tmp_path, default_config, tool):
    cfg = profiled_config(default_config, tools=["torch", tool], **{tool: {"path": f"/nonexistent/{tool}"}})
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "profile_all", configfile=config_file, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{tool} binary not found" in text and f"profile.{tool}.path" in text
    # Every other target is unaffected.
    snakemake(tmp_path, "-n", "--cores", "1", "all", configfile=config_file)
    snakemake(tmp_path, "-n", "--cores", "1", "profile_torch", configfile=config_file)


def test_profile_targets_plan_the_wrapped_runner(tmp_path, default_config):
    """nsys and ncu rules wrap the measure rule's runner line (planned with fake binaries on the CPU)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("nsys", "ncu"):
        (fake / tool).write_text("#!/bin/sh\nexit 0\n")
        (fake / tool).chmod(0o755)
    cfg = profiled_config(default_config, tools=["nsys", "ncu"], nsys={"path": str(fake / "nsys")},
                          ncu={"path": str(fake / "ncu"), "launch_count": 3, "set": "detailed"})
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "profile_all", configfile=config_file)
    text = proc.stdout + proc.stderr
    assert "--capture-range nvtx --nvtx-capture measured@latency_sensitivity" in text
    assert "--clock-control none" in text and "latency_sensitivity@rep0.decode/" in text
    assert "--launch-count 3" in text and "--section SpeedOfLight" in text and "--set detailed" in text
    assert text.count("-m latency_sensitivity.measure.runner") >= 6  # 2 cells x (nsys + ncu prefill + ncu decode)
    assert text.count("--profile-mode external") >= 6
    planned = outputs(proc)
    assert "results/profiles/nsys/tiny-qwen2/fp32/eager/seq16_batch4/nvtx_kern_sum.csv" in planned
    assert "results/profiles/ncu/tiny-qwen2/fp32/eager/seq64_batch1/decode.details.csv" in planned
    assert "results/profiles/report.md" in planned


def test_profile_cell_config_errors(tmp_path, default_config):
    cfg = profiled_config(default_config, cells=[{"seq": 100000, "batch": 1}])
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "profile_all", configfile=config_file, check=False)
    assert proc.returncode != 0 and "profile.cells[0].seq" in proc.stdout + proc.stderr
    cfg = profiled_config(default_config, cells=[{"seq": 16, "batch": 1, "model": "nope"}])
    write_config(config_file, cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "profile_all", configfile=config_file, check=False)
    assert proc.returncode != 0 and "profile.cells[0].model" in proc.stdout + proc.stderr
