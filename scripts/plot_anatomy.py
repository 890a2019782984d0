"""Snakemake entry: the request-anatomy figure of a sweep (stacked p50 stages per cell)."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.plot_anatomy(snakemake.input[0], snakemake.output[0], sweep=snakemake.wildcards.sweep)  # noqa: F821
