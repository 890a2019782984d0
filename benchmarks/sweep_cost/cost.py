"""What a sweep cost the machine, from its replicate result files: per backend and isolation, the measure jobs'
wall time against the measured reps', the one-time worker start-ups apart; and whether a cell's value depends on
its position in its process (cells_before).

    python3 benchmarks/sweep_cost/cost.py RESULTS_DIR [RESULTS_DIR ...]   # each with results/cells/ below it

Prints markdown tables.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


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
            rows.append({
                "root": str(root), "backend": c["backend"], "seq": c["seq_len"], "batch": c["batch"],
                "replicate": c.get("replicate", 1), "isolation": w.get("isolation", c.get("isolation", "process")),
                "job_s": m.get("job_s"), "measured_s": m.get("measured_s"), "worker_start_s": m.get("worker_start_s", 0.0),
                "setup_s": m.get("backend_setup_s") or 0.0, "compile_s": m.get("backend_compile_s"),
                "cells_before": m.get("cells_before", 0), "decode_ms": m.get("decode_p50_ms_per_tok"),
                "prefill_ms": m.get("prefill_p50_ms"), "pid": w.get("pid"),
                "fx_hits": (r.get("backend_info") or {}).get("compile_stats", {}).get("fxgraph_cache_hit"),
            })
    return rows


def cost_table(rows) -> str:
    groups = defaultdict(list)
    for row in rows:
        groups[(row["root"], row["isolation"], row["backend"])].append(row)
    lines = ["| run | isolation | backend | jobs | processes | job s | worker start-up s | measured s | job / measured "
             "| (job - start-up) / measured | backend setup s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    totals = defaultdict(float)
    for (root, isolation, backend), members in sorted(groups.items()):
        job = sum(r["job_s"] for r in members if r["job_s"] is not None)
        measured = sum(r["measured_s"] for r in members)
        start = sum(r["worker_start_s"] or 0.0 for r in members)
        setup = sum(r["setup_s"] for r in members)
        pids = len({r["pid"] for r in members})
        lines.append(f"| {Path(root).name} | {isolation} | {backend} | {len(members)} | {pids} | {job:.1f} | {start:.1f} "
                     f"| {measured:.1f} | {job / measured:.2f} | {(job - start) / measured:.2f} | {setup:.1f} |")
        for k, v in (("job", job), ("measured", measured), ("start", start)):
            totals[(root, isolation, k)] += v
    for (root, isolation) in sorted({(k[0], k[1]) for k in totals}):
        job, measured, start = (totals[(root, isolation, k)] for k in ("job", "measured", "start"))
        lines.append(f"| {Path(root).name} | {isolation} | all | | | {job:.1f} | {start:.1f} | {measured:.1f} | "
                     f"{job / measured:.2f} | {(job - start) / measured:.2f} | |")
    return "\n".join(lines)


def position_table(rows) -> str:
    """Per cell of a shared run: the value of the replicate measured first in its process against the others."""
    cells = defaultdict(list)
    for row in rows:
        if row["isolation"] == "shared":
            cells[(row["root"], row["backend"], row["seq"], row["batch"])].append(row)
    lines = ["| run | backend | seq | batch | decode ms/step by replicate (cells before it in its process) | spread % |",
             "|---|---|---:|---:|---|---:|"]
    for (root, backend, seq, batch), members in sorted(cells.items()):
        members.sort(key=lambda r: r["replicate"])
        values = [r["decode_ms"] for r in members]
        spread = (max(values) - min(values)) / statistics.median(values) * 100 if len(values) > 1 else float("nan")
        shown = ", ".join(f"r{r['replicate']} {r['decode_ms']:.3f} ({r['cells_before']})" for r in members)
        lines.append(f"| {Path(root).name} | {backend} | {seq} | {batch} | {shown} | {spread:.2f} |")
    return "\n".join(lines)


def compile_table(rows) -> str:
    lines = ["| run | batch | replicate | compile s | FX graph cache hits | backend setup s |", "|---|---:|---:|---:|---:|---:|"]
    for row in sorted((r for r in rows if r["compile_s"] is not None), key=lambda r: (r["root"], r["batch"], r["replicate"])):
        lines.append(f"| {Path(row['root']).name} | {row['batch']} | {row['replicate']} | {row['compile_s']:.1f} | "
                     f"{row['fx_hits']} | {row['setup_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    rows = load([Path(a) for a in argv])
    print("## What the measure jobs cost\n\n" + cost_table(rows))
    print("\n## A cell's value by its position in its process (shared workers)\n\n" + position_table(rows))
    if any(r["compile_s"] is not None for r in rows):
        print("\n## torch.compile per cell (first replicate cold, later ones from the cache)\n\n" + compile_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
