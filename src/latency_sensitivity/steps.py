"""The downstream pipeline steps, as plain functions of file paths (the scripts/ entries call these).

Nothing here imports torch: these steps run in the light `report` environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd

from .atomic import write_csv


@contextlib.contextmanager
def logged(log_path: str | os.PathLike) -> Iterator[None]:
    """Send stdout and stderr of a step to its log file; a failure's traceback lands there too."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            yield
        except BaseException:
            traceback.print_exc()
            raise


def read_sweep(path: str | os.PathLike) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=True, na_values=[""], dtype={"flag_detail": str, "error": str})


def load_ceilings(calibration_files: Sequence[str]) -> dict:
    """{(device, dtype): calibration} from the calibration step's files."""
    out = {}
    for path in calibration_files:
        with open(path) as fh:
            cal = json.load(fh)
        if "error" in cal:
            print(f"no ceilings for {cal['device']} {cal['dtype']}: {cal['error']}")
            continue
        device = str(cal["device"]).split(":")[0]
        out[(device, cal["dtype"])] = cal
    return out


def merge_sweep(cell_files: Sequence[str], out_csv: str, sweep: str, calibration_files: Sequence[str] = ()) -> pd.DataFrame:
    from .merge import load_results, merge

    frame = merge(load_results(cell_files), sweep=sweep, ceilings=load_ceilings(calibration_files))
    write_csv(out_csv, frame)
    print(f"merged {len(frame)} cells of sweep {sweep} into {out_csv}")
    return frame


def collapse_sweep(in_csv: str, out_csv: str, axis: str, factor: float) -> pd.DataFrame:
    from .collapse import detect

    frame = detect(read_sweep(in_csv), axis, float(factor))
    write_csv(out_csv, frame)
    counts = frame["flag"].value_counts().to_dict()
    print(f"flags along {axis} (factor {factor}): {counts}")
    return frame


def plot_sweep(in_csv: str, out_png: str, sweep: str, axis: str) -> None:
    from . import plots

    frame = read_sweep(in_csv)
    if axis == "grid":  # the combined figure of a grid is drawn along seq_len, one line per batch
        axis = "seq_len"
    plots.plot_sweep(frame, axis, out_png, title=sweep)


def plot_heatmap(in_csv: str, out_png: str, sweep: str) -> None:
    from . import plots

    frame = read_sweep(in_csv)
    plots.plot_heatmap(frame, out_png, title=sweep)


def distinct_environments(cell_files: Sequence[str]) -> list[dict]:
    """The environments the cells ran in, once each (timestamps and thread counts aside)."""
    seen: dict[str, dict] = {}
    for path in cell_files:
        with open(path) as fh:
            env = dict(json.load(fh).get("environment", {}))
        env.pop("timestamp", None)
        seen.setdefault(json.dumps(env, sort_keys=True, default=str), env)
    return list(seen.values())


def build_report(
    sweep_csvs: Sequence[str],
    sweep_names: Sequence[str],
    axes: Sequence[str],
    cell_files: Sequence[str],
    settings: dict,
    out_md: str,
    calibration_files: Sequence[str] = (),
) -> str:
    from . import report

    settings = dict(settings)
    for (device, dtype), cal in sorted(load_ceilings(calibration_files).items()):
        settings[f"ceilings ({device}, {dtype})"] = (
            f"{cal['bandwidth_gb_s']:.1f} GB/s copy, {cal['matmul_tflops']:.3g} TFLOP/s matmul "
            f"on {cal.get('device_name', device)}"
        )

    out_dir = Path(out_md).parent
    sweeps = []
    for csv, name, axis in zip(sweep_csvs, sweep_names, axes):
        folder = Path(csv).parent
        figures = [("Combined figure", os.path.relpath(folder / "combined.png", out_dir))]
        if axis == "grid":
            figures.append(("Heatmap", os.path.relpath(folder / "heatmap.png", out_dir)))
        sweeps.append(report.SweepInput(name=name, axis=axis, frame=read_sweep(csv), figures=figures))
    text = report.build_report(sweeps, distinct_environments(cell_files), settings)
    report.write_report(text, out_md)
    print(f"wrote {out_md} ({len(text)} characters)", file=sys.stderr)
    return text
