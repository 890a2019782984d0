"""Snakemake entry: `nsys stats` CSV exports of one Nsight Systems report."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.nsys_stats(
        nsys=snakemake.params.nsys,  # noqa: F821
        report_file=snakemake.input.report,  # noqa: F821
        out_csvs={name: path for name, path in snakemake.output.items()},  # noqa: F821
    )
