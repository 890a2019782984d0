"""Snakemake entry: flag collapsed, out-of-memory and failed cells of one sweep."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.collapse_sweep(
        snakemake.input[0], snakemake.output[0], axis=snakemake.params.axis, factor=snakemake.params.factor  # noqa: F821
    )
