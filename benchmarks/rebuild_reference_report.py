"""Rebuild results/reference/h100 merge, collapse, plots and report from its committed cell files (no GPU).

For when the downstream steps change: python benchmarks/rebuild_reference_report.py
The report includes the committed profiles' summaries (as profile.in_report would) and, in "Devices
compared", the same sweeps measured on an H200 (results/reference/h200, as compare_devices would).
"""
import glob, yaml
from latency_sensitivity import steps, config as lsconfig
root = "results/reference/h100"
cfg = lsconfig.validate(yaml.safe_load(open("config/gpu.yaml")))
cal = sorted(glob.glob(f"{root}/calibration/*.json"))
names, axes, csvs = [], [], []
for sweep in cfg["sweeps"]:
    cells = [f"{root}/{c.path.removeprefix('results/')}" for c in lsconfig.sweep_cells(cfg, sweep)]
    axis = lsconfig.sweep_axis(cfg, sweep)
    steps.merge_sweep(cells, f"{root}/{sweep}/merged.csv", sweep, cal)
    steps.collapse_sweep(f"{root}/{sweep}/merged.csv", f"{root}/{sweep}/sweep.csv", axis, cfg["collapse_factor"])
    steps.plot_sweep(f"{root}/{sweep}/sweep.csv", f"{root}/{sweep}/combined.png", sweep, axis)
    names.append(sweep); axes.append(axis); csvs.append(f"{root}/{sweep}/sweep.csv")
allcells = [f"{root}/{c.path.removeprefix('results/')}" for c in lsconfig.all_cells(cfg)]
profiles = sorted(glob.glob(f"{root}/profiles/summary/*/**/*.json", recursive=True))
steps.build_report(csvs, names, axes, allcells, lsconfig.settings_summary(cfg), f"{root}/report.md", cal,
                   profile_files=profiles, reference_study=cfg.get("reference_study"),
                   compare_devices=[{"label": "H200", "results": "results/reference/h200"}])
