"""Per run (a pipeline working directory of first_worker.sh) and measuring worker, in the order the workers
started: the worker's first use of the GPU stack and start-up, then its cells in the order it measured them with
their setup's prefill and warm-up steps, the whole setup, the warmup requests and the decode median.

    python3 benchmarks/sweep_cost/first_worker.py RUN_DIR [RUN_DIR ...]

Prints markdown tables; the last one puts each run's first worker beside its later ones.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def workers(root: Path) -> list[list[dict]]:
    """The run's workers (each its cells in measuring order), the first started first."""
    by_pid: dict = defaultdict(list)
    for path in sorted(root.glob("results/cells/*/*/*/seq*_batch*/r*.json")):
        r = json.loads(path.read_text())
        if r.get("status") != "ok":
            continue
        w, m = r.get("worker", {}), r["metrics"]
        parts = (r.get("backend_info") or {}).get("setup_parts") or {}
        by_pid[w.get("pid")].append({
            "replicate": r["cell"].get("replicate", 1), "batch": r["cell"]["batch"],
            "cells_before": m.get("cells_before", 0), "started": w.get("started_at") or 0.0,
            "process_age_s": w.get("process_age_s"),
            "first_use_s": (w.get("startup_parts") or {}).get("first_use_s"), "startup_s": w.get("startup_s"),
            "prefill_s": parts.get("prefill_s"), "warm_up_s": parts.get("warm_up_s"),
            "setup_s": m.get("backend_setup_s"), "warmup_s": m.get("warmup_s"), "measured_s": m.get("measured_s"),
            "decode_ms": m.get("decode_p50_ms_per_tok"), "prefill_ms": m.get("prefill_p50_ms"),
            "job_s": m.get("job_s"), "mtime": path.stat().st_mtime,
        })
    cells = [sorted(c, key=lambda x: x["cells_before"]) for c in by_pid.values()]
    return sorted(cells, key=lambda c: c[0]["mtime"])  # the worker whose first cell was written first


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def main(roots: list[str]) -> None:
    summary = []
    for root in map(Path, roots):
        ws = workers(root)
        print(f"\n## {root.name}\n")
        print("| worker | replicate | first use s | start-up s | cell | batch | setup prefill s | setup warm-up s | "
              "setup s | warmup s | measured s | prefill ms | decode ms/step |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, cells in enumerate(ws, 1):
            for c in cells:
                print(f"| {i} | {c['replicate']} | {fmt(c['first_use_s'], 2)} | {fmt(c['startup_s'], 1)} | "
                      f"{c['cells_before'] + 1} | {c['batch']} | {fmt(c['prefill_s'])} | {fmt(c['warm_up_s'])} | "
                      f"{fmt(c['setup_s'])} | {fmt(c['warmup_s'])} | {fmt(c['measured_s'])} | "
                      f"{fmt(c['prefill_ms'], 2)} | {fmt(c['decode_ms'], 4)} |")
        if ws:
            later = [c for cells in ws[1:] for c in cells]
            summary.append((root.name, ws[0], later))
    print("\n## The first worker against the later ones\n")
    print("| run | first worker: first use s | later: first use s | first worker: setup s (sum) | later workers: "
          "setup s per worker (median) | first worker's first cell: setup prefill s | later workers' first cells |")
    print("|---|---:|---|---:|---:|---:|---|")
    for name, first, later in summary:
        by_worker = defaultdict(list)
        for c in later:
            by_worker[c["first_use_s"]].append(c)
        later_setup = [sum(c["setup_s"] or 0 for c in cells) for cells in by_worker.values()]
        later_first = [min(cells, key=lambda c: c["cells_before"])["prefill_s"] for cells in by_worker.values()]
        print(f"| {name} | {fmt(first[0]['first_use_s'], 2)} | {', '.join(fmt(u, 2) for u in by_worker)} | "
              f"{fmt(sum(c['setup_s'] or 0 for c in first))} | "
              f"{fmt(statistics.median(later_setup) if later_setup else None)} | {fmt(first[0]['prefill_s'])} | "
              f"{', '.join(fmt(p) for p in later_first)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
