"""The workflow's form, without running a job: `snakemake --lint` and a dry run of `all` on the default config."""

import re

from conftest import REPO, run_snakemake, snakemake

# Rules whose jobs record what they cost the machine (Snakemake's benchmark directive), and where.
BENCHMARKED = ("measure_cell", "calibrate_device", "materialize_checkpoint", "measure_loading")


def test_snakemake_lint_is_clean():
    proc = run_snakemake(["--lint"], cwd=REPO, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-4000:]


def test_dry_run_of_all_plans_every_step_with_benchmark_records(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "1", "all", configfile=REPO / "config" / "config.yaml")
    jobs = re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", proc.stdout + proc.stderr, flags=re.M | re.S)
    planned = {rule for rule, _ in jobs}
    assert {*BENCHMARKED, "combine_replicates", "merge_sweep", "detect_collapse", "plot_sweep",
            "build_report", "all"} <= planned
    for rule, body in jobs:
        if rule in BENCHMARKED:
            assert re.search(rf"^\s+benchmark: logs/benchmark/{rule}/\S+\.tsv$", body, flags=re.M), (rule, body)
    assert not (tmp_path / "results").exists()  # a dry run writes no result
