"""Snakemake entry: results/profiles/report.md and the tidy tables over every profile summary."""

from pathlib import Path

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.profile_report(
        summary_files=list(snakemake.input),  # noqa: F821
        out_md=snakemake.output.report,  # noqa: F821
        tables_dir=str(Path(snakemake.output.classes).parent),  # noqa: F821
    )
