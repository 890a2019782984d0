# Per sweep: merge the cells' result files into one table, then flag collapse along the sweep's axis.


rule merge_sweep:
    input:
        cells=sweep_cell_files,
        calibration=calibration_files(),
    output:
        report(
            "results/{sweep}/merged.csv",
            caption="../report/merged.rst",
            category="Sweeps",
            subcategory="{sweep}",
            labels={"sweep": "{sweep}", "item": "merged table"},
        ),
    log:
        "logs/merge/{sweep}.log",
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/merge_sweep.py"


rule detect_collapse:
    input:
        "results/{sweep}/merged.csv",
    output:
        report(
            "results/{sweep}/sweep.csv",
            caption="../report/sweep.rst",
            category="Sweeps",
            subcategory="{sweep}",
            labels={"sweep": "{sweep}", "item": "sweep table"},
        ),
    log:
        "logs/collapse/{sweep}.log",
    params:
        axis=sweep_axis,
        factor=config["collapse_factor"],
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/detect_collapse.py"
