# latency-sensitivity: one measurement job per (model, dtype, backend, seq_len, batch) cell, then per sweep:
# merge -> collapse detection -> plots, and one markdown report over all sweeps.
#
#   snakemake --cores 1 all                                  # the embedded CPU default (config/config.yaml)
#   snakemake --cores 1 all --configfile config/gpu.yaml     # a config file given replaces the default
#   snakemake --cores 1 profile_all                          # profiler artifacts, on demand only

from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")


# Our package, from this checkout: its strict YAML loader names file and line of a syntax error or a
# duplicate key (Snakemake's own loader names neither and keeps the last of two equal keys).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from latency_sensitivity import config as lsconfig


# The default config is used only when no --configfile is given, so that a config file is the whole
# configuration (no default sweeps merged into it). --config key=value still edits the default.
if not workflow.overwrite_configfiles:
    if Path("config/config.yaml").is_file():
        try:
            lsconfig.load_yaml("config/config.yaml")
        except lsconfig.ConfigError as exc:
            raise WorkflowError(f"invalid configuration: {exc}")

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/measure.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/loading.smk"


# Light steps run where snakemake runs, also under a cluster executor (profiles/slurm).
localrules:
    all,
    combine_replicates,
    merge_sweep,
    detect_collapse,
    plot_sweep,
    plot_heatmap,
    build_report,
    nsys_stats,
    ncu_export,
    summarize_nsys,
    summarize_ncu,
    summarize_torch,
    profile_report,
    profile_all,
    profile_nsys,
    profile_ncu,
    profile_torch,


# The HTML report (snakemake --report results/report.html): this description, then the findings
# (results/report.md), the sweep tables and the figures, by sweep (the report() items of the rules).
report: "workflow/report/workflow.rst"


# `all` ends every run (also one with nothing left to measure) with the summary of the cells: ok, oom and
# error, each failure with its message. A cell with status `error` makes the run exit non-zero once the
# sweeps, plots and report are written, unless the config sets allow_errors: true. An OOM is a measurement.
# The summary goes to the terminal and to logs/summary.log.
rule all:
    default_target: True
    input:
        all_targets(),
    log:
        "logs/summary.log",
    run:
        show_run_summary(fail_on_errors=True, log=log[0])


# A job failed: say where the cells stand (what was measured before it stopped).
onerror:
    stop_measurement_workers()
    show_run_summary(fail_on_errors=False)


# The run is over: measurement workers (measure.isolation: shared) exit now instead of idling.
onsuccess:
    stop_measurement_workers()
