"""Snakemake entry: merge one sweep's cell results into results/{sweep}/merged.csv."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.merge_sweep(snakemake.input.cells, snakemake.output[0], sweep=snakemake.wildcards.sweep)  # noqa: F821
