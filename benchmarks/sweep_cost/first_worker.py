"""Per run (a pipeline working directory of first_worker.sh) and measuring worker, in the order the workers
started: the worker's first use of the GPU stack and start-up, then its cells in the order it measured them with
their setup's prefill and warm-up steps, the whole setup, the warmup requests and the decode median (the cells as
cost.py reads them).

    python3 benchmarks/sweep_cost/first_worker.py RUN_DIR [RUN_DIR ...]

Prints markdown tables; the last one puts each run's first worker beside its later ones.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from cost import load


def workers(rows: list[dict]) -> list[list[dict]]:
    """A run's workers (each its cells in measuring order), the one whose first cell was written first first."""
    by_pid: dict = defaultdict(list)
    for row in rows:
        by_pid[row["pid"]].append(row)
    cells = [sorted(c, key=lambda r: r["cells_before"]) for c in by_pid.values()]
    return sorted(cells, key=lambda c: c[0]["written_at"])


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def main(roots: list[str]) -> None:
    summary = []
    rows = load(roots)
    for root in roots:
        ws = workers([r for r in rows if r["root"] == root])
        print(f"\n## {Path(root).name}\n")
        print("| worker | replicate | first use s | start-up s | cell | batch | setup prefill s | setup warm-up s | "
              "setup s | warmup s | measured s | prefill ms | decode ms/step |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, cells in enumerate(ws, 1):
            for c in cells:
                parts = c["setup_parts"]
                print(f"| {i} | {c['replicate']} | {fmt(c['worker_parts'].get('first_use_s'), 2)} | "
                      f"{fmt(c['worker_startup_s'], 1)} | {c['cells_before'] + 1} | {c['batch']} | "
                      f"{fmt(parts.get('prefill_s'))} | {fmt(parts.get('warm_up_s'))} | {fmt(c['setup_s'])} | "
                      f"{fmt(c['warmup_s'])} | {fmt(c['measured_s'])} | {fmt(c['prefill_ms'], 2)} | "
                      f"{fmt(c['decode_ms'], 4)} |")
        if ws:
            summary.append((Path(root).name, ws))
    print("\n## The first worker against the later ones\n")
    print("| run | first worker: first use s | later: first use s | first worker: setup s (sum) | later workers: "
          "setup s per worker (median) | first worker's first cell: setup prefill s | later workers' first cells |")
    print("|---|---:|---|---:|---:|---:|---|")
    for name, (first, *later) in summary:
        later_setup = [sum(c["setup_s"] for c in cells) for cells in later]
        print(f"| {name} | {fmt(first[0]['worker_parts'].get('first_use_s'), 2)} | "
              f"{', '.join(fmt(cells[0]['worker_parts'].get('first_use_s'), 2) for cells in later)} | "
              f"{fmt(sum(c['setup_s'] for c in first))} | "
              f"{fmt(statistics.median(later_setup) if later_setup else None)} | "
              f"{fmt(first[0]['setup_parts'].get('prefill_s'))} | "
              f"{', '.join(fmt(cells[0]['setup_parts'].get('prefill_s')) for cells in later)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
