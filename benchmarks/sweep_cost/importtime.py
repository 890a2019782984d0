"""Where a measuring process's start-up goes: the imports of torch and transformers, the model's code (what
``measure.model.model_config`` imports for the architecture), and the CUDA context, timed, with Python's
``-X importtime`` record of the modules that took longest.

    python3 benchmarks/sweep_cost/importtime.py [--runs 2] [--device cuda] [--out DIR]

Each run is a fresh interpreter. Prints the three parts per run and the slowest imports (cumulative, at most four
levels deep); --out keeps each run's full importtime record (importtime-runK.txt).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from study_cell import ARCHITECTURE


CHILD = """
import time
t0 = time.perf_counter()
import torch, transformers
t1 = time.perf_counter()
from latency_sensitivity.measure.model import CellSpec, model_config
spec = CellSpec(model="qwen2.5-3b", model_kind="architecture", model_location={location!r}, dtype="fp16",
                backend="graph", device={device!r}, attn_implementation="sdpa", seq_len=128, batch=1, gen_tokens=32,
                warmup=1, reps=1, seed=0, threads=1)
model_config(spec)
t2 = time.perf_counter()
if {device!r} == "cuda":
    torch.cuda.init()
    torch.empty(1, device="cuda")
t3 = time.perf_counter()
print(f"imports {{t1 - t0:.2f}} s, model code {{t2 - t1:.2f}} s, CUDA context {{t3 - t2:.2f}} s")
"""


def slowest(record: str, limit: int = 25, depth: int = 4) -> list[tuple[float, int, str]]:
    rows = []
    for line in record.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m and (len(m.group(3)) - 1) // 2 <= depth:
            rows.append((int(m.group(2)) / 1e6, (len(m.group(3)) - 1) // 2, m.group(4)))
    return sorted(rows, reverse=True)[:limit]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    code = CHILD.format(location=str(ARCHITECTURE), device=a.device)
    for k in range(1, a.runs + 1):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        print(f"## run {k}: {proc.stdout.strip()}\n\n| cumulative s | depth | module |\n|---:|---:|---|")
        for seconds, depth, module in slowest(proc.stderr):
            print(f"| {seconds:.2f} | {depth} | {module} |")
        print()
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / f"importtime-run{k}.txt").write_text(proc.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
