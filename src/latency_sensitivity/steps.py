"""The downstream pipeline steps, as plain functions of file paths (the scripts/ entries call these).

Nothing here imports torch: these steps run in the light `report` environment.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from latency_sensitivity.atomic import write_csv

if TYPE_CHECKING:  # pandas is imported where a table is built or read
    import pandas as pd


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
    import pandas as pd  # in the steps that read tables only: a combine job, say, needs no pandas

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


def combine_replicates(replicate_files: Sequence[str], out_json: str) -> dict:
    """A cell's result file from its replicates' result files (replicates.combine)."""
    from latency_sensitivity.atomic import write_json
    from latency_sensitivity.analysis.merge import read_cell
    from latency_sensitivity.analysis.replicates import combine

    result = combine([read_cell(path) for path in replicate_files])
    write_json(out_json, result)
    m = result["metrics"]
    print(f"{out_json}: {result['status']} from {len(replicate_files)} replicate(s); decode spread "
          f"{m.get('decode_replicate_spread_pct', float('nan')):.1f}%, prefill spread "
          f"{m.get('prefill_replicate_spread_pct', float('nan')):.1f}%")
    return result


def merge_sweep(cell_files: Sequence[str], out_csv: str, sweep: str, calibration_files: Sequence[str] = ()) -> pd.DataFrame:
    from latency_sensitivity.analysis.merge import load_results, merge

    frame = merge(load_results(cell_files), sweep=sweep, ceilings=load_ceilings(calibration_files))
    write_csv(out_csv, frame)
    print(f"merged {len(frame)} cells of sweep {sweep} into {out_csv}")
    return frame


def collapse_sweep(in_csv: str, out_csv: str, axis: str, factor: float) -> pd.DataFrame:
    from latency_sensitivity.analysis.collapse import detect

    frame = detect(read_sweep(in_csv), axis, float(factor))
    write_csv(out_csv, frame)
    counts = frame["flag"].value_counts().to_dict()
    print(f"flags along {axis} (factor {factor}): {counts}")
    return frame


def plot_sweep(in_csv: str, out_png: str, sweep: str, axis: str) -> None:
    from latency_sensitivity.report import figures as plots

    frame = read_sweep(in_csv)
    if axis == "grid":  # the combined figure of a grid is drawn along seq_len, one line per batch
        axis = "seq_len"
    plots.plot_sweep(frame, axis, out_png, title=sweep)


def plot_heatmap(in_csv: str, out_png: str, sweep: str) -> None:
    from latency_sensitivity.report import heatmap

    frame = read_sweep(in_csv)
    heatmap.plot_heatmap(frame, out_png, title=sweep)


def plot_anatomy(in_csv: str, out_png: str, sweep: str) -> None:
    from latency_sensitivity.report import anatomy

    anatomy.plot_anatomy(read_sweep(in_csv), out_png, title=sweep)


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
    profile_files: Sequence[str] = (),
    reference_study: dict | None = None,
    loading_files: Sequence[str] = (),
    compare_devices: Sequence[dict] = (),
) -> str:
    """The markdown report; compare_devices: [{label, results}] other runs of the same sweeps (see the schema)."""
    import pandas as pd

    from latency_sensitivity import config as lsconfig
    from latency_sensitivity.report import document as report
    from latency_sensitivity.report import compare, series, setup
    from latency_sensitivity.report.format import job_seconds

    from latency_sensitivity.analysis.merge import read_cell

    settings = setup.cell_settings([read_cell(p) for p in cell_files], settings)
    ceilings = load_ceilings(calibration_files)
    for (device, dtype), cal in sorted(ceilings.items()):
        settings[f"ceilings ({device}, {dtype})"] = (
            f"{cal['bandwidth_gb_s']:.1f} GB/s copy, {cal['matmul_tflops']:.3g} TFLOP/s matmul "
            f"on {cal.get('device_name', device)}"
            + (f"; measured by a job of {job_seconds(cal['job_s'], cal.get('gpu_wait_s'))}, once per device and "
               "dtype" if cal.get("job_s") else "")
        )

    out_dir = Path(out_md).parent
    sweeps = []
    for csv, name, axis in zip(sweep_csvs, sweep_names, axes):
        folder = Path(csv).parent
        figures = [("Combined figure", os.path.relpath(folder / "combined.png", out_dir))]
        if (folder / "anatomy.png").exists():
            figures.append(("Request anatomy", os.path.relpath(folder / "anatomy.png", out_dir)))
        if axis == "grid":
            figures.append(("Heatmap", os.path.relpath(folder / "heatmap.png", out_dir)))
        sweeps.append(series.SweepInput(name=name, axis=axis, frame=read_sweep(csv), figures=figures))
    profiles = [json.loads(Path(p).read_text()) for p in profile_files]
    claims_text = None
    if reference_study:
        from latency_sensitivity.report import claims

        frames = [sw.frame for sw in sweeps if not sw.frame.empty]
        ours = claims.our_series(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(),
                                 reference_study["model"], reference_study["dtype"])
        results = claims.evaluate(claims.load_reference(reference_study["csv"]), reference_study["label"], ours)
        claims_text = claims.claims_section(results)
    loading = [json.loads(Path(p).read_text()) for p in loading_files]
    others = []
    for other in compare_devices:
        frames = {name: read_sweep(path)
                  for name, path in lsconfig.compare_device_sweeps(other, [sw.name for sw in sweeps]).items()}
        calibration = lsconfig.compare_device_folder(other) / "calibration"
        others.append(compare.OtherDevice(other["label"], frames,
                                         load_ceilings(sorted(glob.glob(str(calibration / "*.json"))))))
    text = report.build_report(sweeps, distinct_environments(cell_files), settings, profiles=profiles,
                               claims_text=claims_text, claims_label=(reference_study or {}).get("label"),
                               loading=loading, other_devices=others,
                               ceilings=ceilings)
    report.write_report(text, out_md)
    print(f"wrote {out_md} ({len(text)} characters)", file=sys.stderr)
    return text


# ------------------------------------------------------------------------------------------ profiles


def nsys_stats(nsys: str, report_file: str, out_csvs: dict[str, str]) -> None:
    """`nsys stats` exports of one report as CSV files: {report name: output path}.

    A report nsys skips (no data of that kind in the capture) becomes a CSV with the header only, so
    a profile of a failed cell still completes and says what it lacks.
    """
    import shutil
    import subprocess
    import tempfile

    from latency_sensitivity.atomic import write_text

    with tempfile.TemporaryDirectory(dir=Path(report_file).parent) as tmp:
        prefix = Path(tmp) / "stats"
        cmd = [nsys, "stats", "--report", ",".join(out_csvs), "--format", "csv", "--output", str(prefix),
               "--force-export", "true", "--force-overwrite", "true", str(report_file)]
        print("$", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout)
        print(proc.stderr, file=sys.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"nsys stats failed with exit code {proc.returncode} (see the log)")
        for name, out in out_csvs.items():
            produced = Path(f"{prefix}_{name}.csv")
            if produced.exists():
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(produced, out)
            else:
                print(f"nsys stats wrote no {name} (nothing of that kind captured): writing an empty table")
                write_text(out, "")


def _cell_record(cell_file: str) -> dict:
    with open(cell_file) as fh:
        result = json.load(fh)
    m = result.get("metrics", {})
    return {
        "cell": result.get("cell", {}),
        "status": result.get("status"),
        "error": (result.get("error") or {}).get("message"),
        "under_profiler": {k: m.get(k) for k in ("prefill_p50_ms", "decode_p50_ms_per_tok", "ttft_p50_ms")},
    }


def summarize_profile(tool: str, inputs: dict, cell_file: str, out_json: str) -> dict:
    """One profile's summary (see profiling.py): kernel classes and idle share per phase, or ncu figures.

    inputs: nsys -> {nvtx_kern_sum, nvtx_gpu_proj_sum}; ncu -> {details}; torch -> {trace}.
    A cell that failed under the profiler gets a summary with its status and error and no tables.
    """
    from latency_sensitivity.analysis import profiling
    from latency_sensitivity.atomic import write_json

    record = _cell_record(cell_file)
    summary: dict = {"tool": tool}
    if record["status"] == "ok":
        if tool == "nsys":
            summary = profiling.nsys_summary(inputs["nvtx_kern_sum"], inputs["nvtx_gpu_proj_sum"])
        elif tool == "ncu":
            summary = profiling.ncu_summary(inputs["details"])
        elif tool == "torch":
            summary = profiling.torch_summary(inputs["trace"])
        else:
            raise ValueError(f"unknown profiler {tool!r}")
    summary.update(record)
    summary["inputs"] = {k: [str(x) for x in v] if isinstance(v, (list, tuple)) else str(v) for k, v in inputs.items()}
    write_json(out_json, summary)
    print(f"{tool} summary of {cell_file}: status {record['status']}")
    return summary


def profile_report(summary_files: Sequence[str], out_md: str, tables_dir: str) -> str:
    """results/profiles/report.md plus tidy CSVs (kernel_classes, phases, ncu_kernels) over all profiles."""
    import pandas as pd

    from latency_sensitivity.analysis import profiling
    from latency_sensitivity.atomic import write_text
    from latency_sensitivity.report import profiles

    summaries = [json.loads(Path(p).read_text()) for p in summary_files]
    labelled = [(profiles.profile_label(s), s) for s in summaries]
    for table in ("classes", "phases", "kernels"):
        rows = profiling.tidy_rows(labelled, table)
        name = {"classes": "kernel_classes", "phases": "phases", "kernels": "ncu_kernels"}[table]
        write_csv(Path(tables_dir) / f"{name}.csv", pd.DataFrame(rows))
    text = "# Profiles\n\n" + profiles.profiles_section(summaries, heading_level=2) + "\n"
    write_text(out_md, text)
    print(f"wrote {out_md} from {len(summaries)} summaries", file=sys.stderr)
    return text
