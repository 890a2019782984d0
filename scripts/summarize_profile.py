"""Snakemake entry: one profile's summary (kernel classes and idle share per phase, or ncu figures)."""

from latency_sensitivity import steps

with steps.logged(snakemake.log[0]):  # noqa: F821 - injected by Snakemake
    steps.summarize_profile(
        tool=snakemake.params.tool,  # noqa: F821
        inputs={k: v if isinstance(v, str) else list(v)  # noqa: F821
                for k, v in snakemake.input.items() if k != "cell"},  # noqa: F821
        cell_file=snakemake.input.cell,  # noqa: F821
        out_json=snakemake.output[0],  # noqa: F821
    )
