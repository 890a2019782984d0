# Per sweep: merge the cells' result files into one table, then flag collapse along the sweep's axis.


rule merge_sweep:
    input:
        cells=sweep_cell_files,
        calibration=calibration_files(),
    output:
        "results/{sweep}/merged.csv",
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
        "results/{sweep}/sweep.csv",
    log:
        "logs/collapse/{sweep}.log",
    params:
        axis=sweep_axis,
        factor=config["collapse_factor"],
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/detect_collapse.py"
