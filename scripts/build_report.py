"""Snakemake entry: results/report.md over every sweep."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.build_report(
        sweep_csvs=list(snakemake.input.sweeps),  # noqa: F821
        sweep_names=list(snakemake.params.sweeps),  # noqa: F821
        axes=list(snakemake.params.axes),  # noqa: F821
        cell_files=list(snakemake.input.cells),  # noqa: F821
        settings=dict(snakemake.params.settings),  # noqa: F821
        out_md=snakemake.output[0],  # noqa: F821
        calibration_files=list(snakemake.input.calibration),  # noqa: F821
        profile_files=list(snakemake.input.profiles),  # noqa: F821
        reference_study=snakemake.params.reference_study,  # noqa: F821
        loading_files=list(snakemake.input.loading),  # noqa: F821
        compare_devices=list(snakemake.params.compare_devices),  # noqa: F821
    )
