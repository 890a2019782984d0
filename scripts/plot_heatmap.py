"""Snakemake entry: the seq_len x batch heatmap of a grid sweep."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.plot_heatmap(snakemake.input[0], snakemake.output[0], sweep=snakemake.wildcards.sweep)  # noqa: F821
