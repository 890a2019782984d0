"""Snakemake entry: merge one sweep's cell results into results/{sweep}/merged.csv."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.merge_sweep(
        snakemake.input.cells,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        sweep=snakemake.wildcards.sweep,  # noqa: F821
        calibration_files=snakemake.input.calibration,  # noqa: F821
    )
