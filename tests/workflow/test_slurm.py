"""The CPU pipeline through a real SLURM (snakemake-executor-plugin-slurm), on a one-node cluster started by
tests/slurm/local_cluster.sh from Debian's packages.

Opt-in, because it installs system packages and starts root daemons: LS_TEST_SLURM=1 python -m pytest -m slurm
(see README, "Running on a SLURM cluster"). Skipped otherwise, and skipped with the reason when this machine
cannot run the cluster (no root, no apt, no plugin).
"""

import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, small_config, snakemake, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

SCRIPT = REPO / "tests" / "slurm" / "local_cluster.sh"
STATE = Path(os.environ.get("LS_SLURM_STATE", "/tmp/ls-slurm"))


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("LS_TEST_SLURM") != "1":
        pytest.skip("opt-in: LS_TEST_SLURM=1 (installs SLURM from apt and starts its daemons as root)")
    pytest.importorskip("snakemake_executor_plugin_slurm")
    proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"cannot run a SLURM cluster here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield STATE / "jobcomp.log"
    subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=60)


def test_pipeline_on_slurm_matches_a_local_run(cluster, tmp_path, default_config):
    cfg = small_config(default_config)
    cfg["sweeps"] = {"seq_sweep": {"seq": [16, 32], "batch": [1]}, "batch_sweep": {"seq": [16], "batch": [1, 2]}}
    cfg["measure"]["isolation"] = "process"  # every cell a SLURM job of its own (README: no shared workers there)
    config_file = write_config(tmp_path / "cfg" / "config.yaml", cfg)
    before = cluster.read_text() if cluster.exists() else ""

    on_slurm = tmp_path / "slurm"
    proc = snakemake(
        on_slurm, "--jobs", "4", "all", "--workflow-profile", str(REPO / "profiles" / "slurm"),
        # this machine's one-node cluster: no accounting database (job states from squeue), little memory
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "2",
        "--default-resources", "mem_mb=1000", "runtime=10", "cpus_per_task=1",
        "--set-resources", "measure_cell:mem_mb=2000", "measure_cell:cpus_per_task=1", "calibrate_device:mem_mb=2000",
        configfile=config_file,
    )
    local = tmp_path / "local"
    snakemake(local, "--cores", "2", "all", configfile=config_file)

    # Every cell (and the calibration) ran as its own SLURM job, which SLURM recorded as completed.
    jobs = {}
    for job_id, log in re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)", proc.stdout + proc.stderr):
        log = Path(log)
        jobs[log.parent.parent.name, log.parent.name] = job_id
    cells = sorted(p for p in (on_slurm / "results" / "cells").rglob("*.json"))
    assert len(cells) == 3
    measure_jobs = {k: v for k, v in jobs.items() if k[0] == "rule_measure_cell"}
    assert len(measure_jobs) == len(cells)
    assert ("rule_calibrate_device", "cpu_fp32") in jobs
    completions = cluster.read_text()[len(before):]
    for job_id in jobs.values():
        assert re.search(rf"JobId={job_id} .*JobState=COMPLETED", completions), job_id
    # Light steps ran locally: no SLURM job for them.
    assert not any(k[0] in ("rule_merge_sweep", "rule_build_report") for k in jobs)

    # The same outputs as a local run, in shape.
    for sweep in ("seq_sweep", "batch_sweep"):
        a = pd.read_csv(on_slurm / "results" / sweep / "sweep.csv")
        b = pd.read_csv(local / "results" / sweep / "sweep.csv")
        assert list(a.columns) == list(b.columns)
        assert list(zip(a["seq_len"], a["batch"])) == list(zip(b["seq_len"], b["batch"]))
        assert (a["status"] == "ok").all() and (b["status"] == "ok").all()
    assert (on_slurm / "results" / "report.md").read_text().count("## Sweep") == 2
