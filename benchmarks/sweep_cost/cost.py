"""What a sweep cost the machine, from its replicate result files: per backend and isolation, the measure jobs'
wall time against the measured reps', the one-time worker start-ups apart; whether a cell's value depends on
its position in its process (cells_before); a job's parts besides its reps, and the kernel-time profile's by part;
the kernel times' range over a cell's replicates; where a process's start-up goes; and torch.compile's time per
cell.

    python3 benchmarks/sweep_cost/cost.py [--jobs] RESULTS_DIR [RESULTS_DIR ...]   # each with results/cells/ below it

Prints markdown tables; with --jobs also one row per job, its prefill beside the same run's eager cell.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from latency_sensitivity.measure.probes import PROFILER_COST_PARTS, PROFILER_PARTS
from latency_sensitivity.vocabulary import WORKER_ISOLATIONS as WORKERS


# what a cell's own time (cell_s) is itemized into; the rest of it is the cell's untimed code
CELL_PARTS = ("model_build_s", "backend_setup_s", "warmup_s", "measured_s", "tokenization_s", "kernel_time_s",
              "environment_s", "import_s", "startup_s")


def replicate_files(root: Path):
    yield from sorted(Path(root).glob("results/cells/*/*/*/seq*_batch*/r*.json"))


def load(roots):
    rows = []
    for root in roots:
        for path in replicate_files(root):
            r = json.loads(path.read_text())
            m, w = r.get("metrics", {}), r.get("worker", {})
            if r.get("status") != "ok":
                continue
            c = r["cell"]
            stats = (r.get("backend_info") or {}).get("compile_stats", {})
            rows.append({
                "root": str(root), "backend": c["backend"], "seq": c["seq_len"], "batch": c["batch"],
                "replicate": c.get("replicate", 1), "isolation": w.get("isolation", c.get("isolation", "process")),
                "job_s": m.get("job_s"), "measured_s": m.get("measured_s"), "worker_start_s": m.get("worker_start_s", 0.0),
                "setup_s": m.get("backend_setup_s") or 0.0, "compile_s": m.get("backend_compile_s"),
                "cells_before": m.get("cells_before", 0), "decode_ms": m.get("decode_p50_ms_per_tok"),
                "prefill_ms": m.get("prefill_p50_ms"), "pid": w.get("pid"),
                "prefill_kernel_ms": m.get("prefill_kernel_ms"), "decode_kernel_ms": m.get("decode_kernel_ms_per_step"),
                "kernel_time_s": m.get("kernel_time_s") or 0.0, "warmup_s": m.get("warmup_s") or 0.0,
                "pad_mb": m.get("placement_pad_mb"),
                "fx_hits": stats.get("fxgraph_cache_hit"),
                "kept": stats.get("kept"),
                # where the step came from (compiled and saved, loaded, kept, traced); older cells: kept or not
                "step": stats.get("step"),
                "setup_graphs": stats.get("setup_graphs"),
                "dynamic_batch": (r.get("backend_info") or {}).get("compile_dynamic_batch"),
                "setup_parts": (r.get("backend_info") or {}).get("setup_parts") or {},
                "startup": {k: m.get(k) for k in ("import_s", "environment_s", "model_code_s", "compiler_import_s",
                                                  "cuda_init_s", "startup_s")},
                "worker_parts": w.get("startup_parts") or {},
                "worker_startup_s": w.get("startup_s"),
                "written_at": path.stat().st_mtime,
                "cell_s": m.get("cell_s"),
                "model_from": r.get("model_from", "built"),  # kept: the worker's model, built by an earlier cell
                "parts": {k: m.get(k) or 0.0 for k in CELL_PARTS},
                "kernel_time_parts": r.get("kernel_time_parts"),  # cells recorded before it: none
            })
            _device_wait_to_warmup(rows[-1])
    return rows


def _device_wait_to_warmup(row) -> None:
    """Count the profiled warmup request's wait for the device as the warmup's, as cells do now: cells recorded
    before that counted it in kernel_time_s (the profile's own cost is its start, stop and read)."""
    parts = row["kernel_time_parts"]
    if parts:
        cost = sum(parts.get(k, 0.0) for k in PROFILER_COST_PARTS)
        moved = row["kernel_time_s"] - cost
        for where in (row, row["parts"]):
            where["kernel_time_s"], where["warmup_s"] = cost, where["warmup_s"] + moved


def cost_table(rows) -> str:
    groups = defaultdict(list)
    for row in rows:
        groups[(row["root"], row["isolation"], row["backend"])].append(row)
    lines = ["| run | isolation | backend | jobs | processes | job s | worker start-up s | measured s | job / measured "
             "| (job - start-up) / measured | backend setup s | warmup s | kernel time s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    totals = defaultdict(float)
    for (root, isolation, backend), members in sorted(groups.items()):
        job = sum(r["job_s"] for r in members if r["job_s"] is not None)
        measured = sum(r["measured_s"] for r in members)
        start = sum(r["worker_start_s"] or 0.0 for r in members)
        setup = sum(r["setup_s"] for r in members)
        warmup = sum(r["warmup_s"] for r in members)
        kernel = sum(r["kernel_time_s"] for r in members)
        pids = len({r["pid"] for r in members})
        lines.append(f"| {Path(root).name} | {isolation} | {backend} | {len(members)} | {pids} | {job:.1f} | {start:.1f} "
                     f"| {measured:.1f} | {job / measured:.2f} | {(job - start) / measured:.2f} | {setup:.1f} | {warmup:.1f} "
                     f"| {kernel:.1f} |")
        for k, v in (("job", job), ("measured", measured), ("start", start)):
            totals[(root, isolation, k)] += v
    for (root, isolation) in sorted({(k[0], k[1]) for k in totals}):
        job, measured, start = (totals[(root, isolation, k)] for k in ("job", "measured", "start"))
        lines.append(f"| {Path(root).name} | {isolation} | all | | | {job:.1f} | {start:.1f} | {measured:.1f} | "
                     f"{job / measured:.2f} | {(job - start) / measured:.2f} | | | |")
    return "\n".join(lines)


def parts_table(rows) -> str:
    """Per run, isolation and backend: seconds summed over its jobs, what a job spends besides its measured reps.
    Hand-over is the job less its cell and its wait for a worker (the client's start, passing the spec, the
    reply); rest is the cell less its itemized parts; setup is without torch.compile, which has a column."""
    groups = defaultdict(list)
    for row in rows:
        if row["cell_s"] is not None and row["job_s"] is not None:
            groups[(row["root"], row["isolation"], row["backend"])].append(row)
    lines = ["| run | isolation | backend | measured s | warmup s | setup s | torch.compile s | kernel time s | "
             "tokenization s | model build s (models built) | start-up in the cell s | hand-over s | rest s | (job - start-up) / "
             "measured | the same without torch.compile |", "|---|---|---|" + "---:|" * 12]
    for (root, isolation, backend), members in sorted(groups.items()):
        def total(key):
            return sum(r["parts"][key] for r in members)
        compile_s = sum(r["compile_s"] or 0.0 for r in members)
        job = sum(r["job_s"] - (r["worker_start_s"] or 0.0) for r in members)
        hand_over = sum(r["job_s"] - r["cell_s"] - (r["worker_start_s"] or 0.0) for r in members)
        rest = sum(r["cell_s"] - sum(r["parts"].values()) for r in members)
        start = total("startup_s") + total("environment_s") + total("import_s")
        measured = total("measured_s")
        built = sum(r["model_from"] == "built" for r in members)
        lines.append(f"| {Path(root).name} | {isolation} | {backend} | {measured:.2f} | {total('warmup_s'):.2f} | "
                     f"{total('backend_setup_s') - compile_s:.2f} | {compile_s:.2f} | {total('kernel_time_s'):.2f} | "
                     f"{total('tokenization_s'):.2f} | {total('model_build_s'):.2f} ({built}) | {start:.2f} | {hand_over:.2f} | "
                     f"{rest:.2f} | {job / measured:.2f} | {(job - compile_s) / measured:.2f} |")
    return "\n".join(lines)


def kernel_time_table(rows) -> str:
    """Per run, isolation and backend: the kernel-time profile's seconds by part, summed over the cells that record
    them (kernel_time_parts): waiting for the device to finish the work timed (the request's own, counted as the
    warmup's), starting, stopping and reading (the profile's cost, its kernel time s)."""
    groups = defaultdict(list)
    for row in rows:
        if row["kernel_time_parts"]:
            groups[(row["root"], row["isolation"], row["backend"])].append(row)
    lines = ["| run | isolation | backend | cells | kernel time s | device wait s | start s | stop s | read s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for (root, isolation, backend), members in sorted(groups.items()):
        parts = [sum(r["kernel_time_parts"].get(k, 0.0) for r in members) for k in PROFILER_PARTS]
        lines.append(f"| {Path(root).name} | {isolation} | {backend} | {len(members)} | "
                     f"{sum(r['kernel_time_s'] for r in members):.2f} | " + " | ".join(f"{v:.2f}" for v in parts) + " |")
    return "\n".join(lines)


def kernel_spread_table(rows) -> str:
    """Per backend and cell, over all its replicates in the runs given: the kernel times' range. Each replicate's
    come from profiler sessions of their own, so a session that missed part of the work it timed would show as a
    low outlier beside its cell's other replicates."""
    groups = defaultdict(list)
    for row in rows:
        if row["prefill_kernel_ms"] is not None and row["decode_kernel_ms"] is not None:
            groups[(row["backend"], row["seq"], row["batch"])].append(row)
    lines = ["| backend | seq | batch | replicates | prefill kernel ms | spread % | decode kernel ms/step | spread % |",
             "|---|---:|---:|---:|---|---:|---|---:|"]

    def span(values):
        return f"{min(values):.3f}-{max(values):.3f} | {100 * (max(values) / min(values) - 1):.2f}"

    for (backend, seq, batch), members in sorted(groups.items()):
        lines.append(f"| {backend} | {seq} | {batch} | {len(members)} | "
                     f"{span([r['prefill_kernel_ms'] for r in members])} | "
                     f"{span([r['decode_kernel_ms'] for r in members])} |")
    return "\n".join(lines)


def position_table(rows) -> str:
    """Per cell measured in a shared worker: each replicate's decode value, with the cells its process measured
    before it, beside the same cell's values from runs in a process of its own (the runs given together)."""
    cells = defaultdict(list)
    for row in rows:
        cells[(row["backend"], row["seq"], row["batch"])].append(row)
    lines = ["| backend | seq | batch | decode ms/step: run/replicate, isolation (cells before it in its process"
             "; MiB held while it was built, where any) | spread % |", "|---|---:|---:|---|---:|"]
    for (backend, seq, batch), members in sorted(cells.items()):
        if not any(r["isolation"] in WORKERS for r in members):
            continue
        members.sort(key=lambda r: (r["isolation"] not in WORKERS, r["root"], r["replicate"]))
        values = [r["decode_ms"] for r in members]
        spread = (max(values) - min(values)) / statistics.median(values) * 100 if len(values) > 1 else float("nan")
        shown = ", ".join(f"{Path(r['root']).name}/r{r['replicate']} {r['isolation']} {r['decode_ms']:.3f} "
                          f"({_position(r)})" for r in members)
        lines.append(f"| {backend} | {seq} | {batch} | {shown} | {spread:.2f} |")
    return "\n".join(lines)


def _position(row) -> str:
    return f"{row['cells_before']}; {row['pad_mb']}" if row["pad_mb"] else str(row["cells_before"])


def compile_table(rows) -> str:
    lines = ["| run | batch | replicate | batch dynamic | compile s | FX graph cache hits | step | "
             "graphs in setup | cells before | backend setup s | its parts s | decode ms/step |",
             "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---|---:|"]
    for row in sorted((r for r in rows if r["compile_s"] is not None), key=lambda r: (r["root"], r["batch"], r["replicate"])):
        lines.append(f"| {Path(row['root']).name} | {row['batch']} | {row['replicate']} | {row['dynamic_batch']} | "
                     f"{row['compile_s']:.1f} | {row['fx_hits']} | {row['step'] or ('kept' if row['kept'] else 'traced')} | "
                     f"{row['setup_graphs']} | "
                     f"{row['cells_before']} | "
                     f"{row['setup_s']:.1f} | {setup_parts(row)} | {row['decode_ms']:.3f} |")
    return "\n".join(lines)


def setup_parts(row) -> str:
    """The backend setup's parts (backend_info setup_parts; the warm-up's without the compiling first step), or ''
    for cells recorded before the setup was timed in parts."""
    parts = dict(row["setup_parts"])
    if "warm_up_s" in parts and row["compile_s"] is not None:
        parts["warm_up_s"] -= row["compile_s"]
        parts = {"compile_s": row["compile_s"], **parts}
    return ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.2f}" for k, v in parts.items())


def _seconds(value) -> str:
    return "" if value is None else f"{value:.2f}"


def startup_table(rows) -> str:
    """Where a measuring process's start-up goes: a cell in its own process (its imports, environment record,
    model code, compiler (compiled backend) and CUDA context) and a shared worker (its GPU claim, imports, model
    code, compiler, CUDA context and, on CUDA, its first use: one small request of its model, worker.first_use)."""
    lines = ["| run | process | backend | batch | replicate | job s | imports s | environment s | model code s "
             "| compiler s | CUDA context s | GPU claim s | first use s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    seen_workers = set()
    for row in sorted(rows, key=lambda r: (r["root"], r["isolation"], r["backend"], r["replicate"], r["batch"])):
        if row["isolation"] == "process":
            s = row["startup"]
            lines.append(f"| {Path(row['root']).name} | own | {row['backend']} | {row['batch']} | {row['replicate']} "
                         f"| {_seconds(row['job_s'])} | {_seconds(s['import_s'])} | {_seconds(s['environment_s'])} "
                         f"| {_seconds(s['model_code_s'])} | {_seconds(s.get('compiler_import_s'))} "
                         f"| {_seconds(s['cuda_init_s'])} | | |")
        elif row["worker_parts"] and (row["root"], row["pid"]) not in seen_workers:
            seen_workers.add((row["root"], row["pid"]))
            w = row["worker_parts"]
            lines.append(f"| {Path(row['root']).name} | worker | {row['backend']} | | {row['replicate']} | "
                         f"{_seconds(sum(w.values()))} | {_seconds(w.get('import_s'))} | | "
                         f"{_seconds(w.get('model_code_s'))} | {_seconds(w.get('compiler_import_s'))} "
                         f"| {_seconds(w.get('cuda_init_s'))} "
                         f"| {_seconds(w.get('gpu_claim_s'))} | {_seconds(w.get('first_use_s'))} |")
    return "\n".join(lines)


def jobs_table(rows) -> str:
    """One row per job: its wall time (the wait for a worker's start-up apart), its measured reps, its backend's
    setup (torch.compile within it), and its prefill and decode medians, the prefill also against the eager cell of
    the same run and replicate (the backends' prefill is meant to be the same computation)."""
    eager = {(r["root"], r["seq"], r["batch"], r["replicate"]): r["prefill_ms"]
             for r in rows if r["backend"] == "eager"}
    lines = ["| run | backend | seq | batch | replicate | isolation | job s | worker start-up s | measured s | "
             "(job - start-up) / measured | backend setup s | torch.compile s | prefill p50 ms | against eager's % | "
             "decode p50 ms/step |", "|---|---|---:|---:|---:|---|" + "---:|" * 9]
    for r in sorted(rows, key=lambda r: (r["root"], r["backend"], r["seq"], r["batch"], r["replicate"])):
        base = eager.get((r["root"], r["seq"], r["batch"], r["replicate"]))
        vs = "" if not base or r["backend"] == "eager" else f"{100 * (r['prefill_ms'] / base - 1):+.1f}"
        start = r["worker_start_s"] or 0.0
        lines.append(f"| {Path(r['root']).name} | {r['backend']} | {r['seq']} | {r['batch']} | {r['replicate']} | "
                     f"{r['isolation']} | {_seconds(r['job_s'])} | {start:.2f} | {r['measured_s']:.2f} | "
                     f"{(r['job_s'] - start) / r['measured_s']:.2f} | {r['setup_s']:.2f} | "
                     f"{_seconds(r['compile_s'])} | "
                     f"{r['prefill_ms']:.2f} | {vs} | {r['decode_ms']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    jobs = "--jobs" in argv
    argv = [a for a in argv if a != "--jobs"]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    rows = load([Path(a) for a in argv])
    print("## What the measure jobs cost\n\n" + cost_table(rows))
    if jobs:
        print("\n## Each job\n\n" + jobs_table(rows))
    print("\n## A job's parts besides its measured reps (seconds summed over the jobs)\n\n" + parts_table(rows))
    if any(r["kernel_time_parts"] for r in rows):
        print("\n## The kernel-time profile by part (seconds summed over the cells)\n\n" + kernel_time_table(rows))
    if any(r["prefill_kernel_ms"] is not None for r in rows):
        print("\n## The kernel times over a cell's replicates (one profile each)\n\n" + kernel_spread_table(rows))
    print("\n## A cell's value by its position in its process (shared workers)\n\n" + position_table(rows))
    print("\n## Start-up of a measuring process\n\n" + startup_table(rows))
    if any(r["compile_s"] is not None for r in rows):
        print("\n## torch.compile per cell (first replicate cold, later ones from the cache)\n\n" + compile_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
