# latency-sensitivity: one measurement job per (model, dtype, backend, seq_len, batch) cell, then per sweep:
# merge -> collapse detection -> plots, and one markdown report over all sweeps.
#
#   snakemake --cores 1 all                                  # the embedded CPU default (config/config.yaml)
#   snakemake --cores 1 all --configfile config/gpu.yaml     # a config file given replaces the default
#   snakemake --cores 1 profile_all                          # profiler artifacts, on demand only

from snakemake.utils import min_version

min_version("9.0")


# The default config is used only when no --configfile is given, so that a config file is the whole
# configuration (no default sweeps merged into it). --config key=value still edits the default.
if not workflow.overwrite_configfiles:

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
    merge_sweep,
    detect_collapse,
    plot_sweep,
    plot_heatmap,
    plot_anatomy,
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


rule all:
    default_target: True
    input:
        all_targets(),
