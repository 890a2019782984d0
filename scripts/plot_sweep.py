"""Snakemake entry: the line figures of one sweep (combined, request anatomy), drawn in one process."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    sweep = snakemake.wildcards.sweep  # noqa: F821
    steps.plot_sweep(snakemake.input[0], snakemake.output.combined, sweep=sweep,  # noqa: F821
                     axis=snakemake.params.axis)  # noqa: F821
    steps.plot_anatomy(snakemake.input[0], snakemake.output.anatomy, sweep=sweep)  # noqa: F821
