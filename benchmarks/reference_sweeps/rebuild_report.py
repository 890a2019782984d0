"""Rebuild a reference folder's merge, collapse, plots and report from its committed cell files (no GPU).

For when the downstream steps change:

    python benchmarks/reference_sweeps/rebuild_report.py            # reference/h100, compared with the H200
    python benchmarks/reference_sweeps/rebuild_report.py h200       # reference/h200, compared with the H100

The report includes the folder's committed profile summaries (as profile.in_report would), its loading
measurement, and, in "Devices compared", the other device's run of the same sweeps (as compare_devices would).
"""
import glob
import sys

import yaml

from latency_sensitivity import config as lsconfig, steps

OTHER = {"h100": ("H200", "reference/h200"), "h200": ("H100", "reference/h100")}
device = sys.argv[1] if len(sys.argv) > 1 else "h100"
root = f"reference/{device}"
cfg = lsconfig.validate(yaml.safe_load(open("config/gpu.yaml")))
cal = sorted(glob.glob(f"{root}/calibration/*.json"))
names, axes, csvs = [], [], []
for sweep in cfg["sweeps"]:
    cells = [f"{root}/{c.path.removeprefix('results/')}" for c in lsconfig.sweep_cells(cfg, sweep)]
    axis = lsconfig.sweep_axis(cfg, sweep)
    steps.merge_sweep(cells, f"{root}/{sweep}/merged.csv", sweep, cal)
    steps.collapse_sweep(f"{root}/{sweep}/merged.csv", f"{root}/{sweep}/sweep.csv", axis, cfg["collapse_factor"])
    steps.plot_sweep(f"{root}/{sweep}/sweep.csv", f"{root}/{sweep}/combined.png", sweep, axis)
    if glob.glob(f"{root}/{sweep}/anatomy.png"):
        steps.plot_anatomy(f"{root}/{sweep}/sweep.csv", f"{root}/{sweep}/anatomy.png", sweep)
    names.append(sweep); axes.append(axis); csvs.append(f"{root}/{sweep}/sweep.csv")
allcells = [f"{root}/{c.path.removeprefix('results/')}" for c in lsconfig.all_cells(cfg)]
profiles = sorted(glob.glob(f"{root}/profiles/summary/*/**/*.json", recursive=True))
label, other = OTHER[device]
steps.build_report(csvs, names, axes, allcells, lsconfig.settings_summary(cfg), f"{root}/report.md", cal,
                   profile_files=profiles, reference_study=cfg.get("reference_study"),
                   loading_files=sorted(glob.glob(f"{root}/loading/*/*/*.json")),
                   compare_devices=[{"label": label, "results": other}])
