"""Snakemake entry: the combined figure of one sweep."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.plot_sweep(snakemake.input[0], snakemake.output[0], sweep=snakemake.wildcards.sweep,  # noqa: F821
                     axis=snakemake.params.axis)  # noqa: F821
