"""Snakemake entry: one cell's result from its replicates' results."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.combine_replicates(snakemake.input, snakemake.output[0])  # noqa: F821
