# Figures per sweep and the markdown report over all sweeps. A sweep's line figures are drawn in one job (the
# plotting imports paid once); a grid's heatmap in another, only for grid sweeps.


rule plot_sweep:
    input:
        "results/{sweep}/sweep.csv",
    output:
        combined=report(
            "results/{sweep}/combined.png",
            caption="../report/combined.rst",
            category="Sweeps",
            subcategory="{sweep}",
            labels={"sweep": "{sweep}", "item": "combined figure"},
        ),
        anatomy=report(
            "results/{sweep}/anatomy.png",
            caption="../report/anatomy.rst",
            category="Sweeps",
            subcategory="{sweep}",
            labels={"sweep": "{sweep}", "item": "request anatomy"},
        ),
    log:
        "logs/plot/{sweep}.log",
    params:
        axis=sweep_axis,
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/plot_sweep.py"


rule plot_heatmap:
    input:
        "results/{sweep}/sweep.csv",
    output:
        report(
            "results/{sweep}/heatmap.png",
            caption="../report/heatmap.rst",
            category="Sweeps",
            subcategory="{sweep}",
            labels={"sweep": "{sweep}", "item": "heatmap"},
        ),
    log:
        "logs/plot/{sweep}_heatmap.log",
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/plot_heatmap.py"


rule build_report:
    input:
        sweeps=expand("results/{sweep}/sweep.csv", sweep=SWEEPS),
        figures=[f for sweep in SWEEPS for f in sweep_figures(sweep)],
        cells=all_cell_files(),
        calibration=calibration_files(),
        profiles=report_profile_summaries(),
        reference_study=reference_study_files(),
        loading=loading_files(),
        compare_devices=compare_device_files(),
    output:
        report(
            "results/report.md",
            caption="../report/findings.rst",
            category="Findings",
            labels={"item": "report (markdown)"},
        ),
    log:
        "logs/report.log",
    params:
        sweeps=SWEEPS,
        axes=[lsconfig.sweep_axis(config, s) for s in SWEEPS],
        settings=lsconfig.settings_summary(config),
        reference_study=config.get("reference_study"),
        compare_devices=config.get("compare_devices", []),
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/build_report.py"
