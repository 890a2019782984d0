"""Where a cell's time goes besides its measured reps, in a process that has measured a cell before (as a shared
worker's later cells): each cell's parts from its result, and the functions under cProfile.

It measures `--batches` (seq 128, the Qwen2.5-3B architecture with random fp16 weights, gen 32, warmup 3, reps 7,
as benchmarks/replicates/) one after another in this process with `cell.measure`, the first unprofiled (the
process's one-time costs), the others under cProfile, and prints per cell: `cell_s`, the itemized parts and what
is left, then the cumulative time of the functions that take the most of a cell outside its requests. cProfile
slows Python code, so the reps read slower here than in a sweep; the parts outside them are what it is for.

    python3 benchmarks/sweep_cost/cell_overhead.py [--backend graph] [--batches 1,1,8,64] [--out DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

from study_cell import cell_spec

PARTS = ("model_build_s", "backend_setup_s", "warmup_s", "measured_s", "tokenization_s", "kernel_time_s",
         "environment_s", "import_s", "startup_s")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="graph", choices=["eager", "graph", "compiled"])
    p.add_argument("--batches", default="1,1,8,64")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", type=Path, help="write each profiled cell's pstats file here")
    a = p.parse_args(argv)

    from latency_sensitivity.measure import compile_cache
    compile_cache.configure(None, "cuda")
    from latency_sensitivity.measure import cell

    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
    for i, batch in enumerate(int(b) for b in a.batches.split(",")):
        spec = cell_spec(a.backend, batch)
        prof = cProfile.Profile() if i else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        result = cell.measure(spec)
        if prof:
            prof.disable()
        cell_s = time.perf_counter() - t0
        m = result["metrics"]
        parts = {k: m.get(k) or 0.0 for k in PARTS}
        rest = cell_s - sum(parts.values())
        print(f"\n## cell {i + 1}: {a.backend} seq 128 x batch {batch} ({result['status']}"
              f"{', profiled' if prof else ', unprofiled'})\n")
        print(f"cell {cell_s:.3f} s = " + " + ".join(f"{k[:-2]} {v:.3f}" for k, v in parts.items() if v)
              + f" + rest {rest:.3f}")
        if result.get("kernel_time_error"):
            print(f"kernel_time_error: {result['kernel_time_error']}")
        if prof:
            if a.out:
                prof.dump_stats(a.out / f"cell{i + 1}-batch{batch}.pstats")
            text = io.StringIO()
            stats = pstats.Stats(prof, stream=text)
            stats.sort_stats("cumulative").print_stats(a.top)
            print("```\n" + text.getvalue().strip().split("\n", 3)[-1] + "\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
