"""A measuring process's imports where Python writes no bytecode, with and without the bytecode cache under the
compile cache's root (measure/compile_cache.py, bytecode_cache).

Where ``PYTHONDONTWRITEBYTECODE`` is set and torch was installed without bytecode (as in some container images),
every process compiles the sources of torch, transformers and the compiler again. This starts fresh
interpreters with ``PYTHONDONTWRITEBYTECODE=1`` that make a compiled worker's imports (torch, transformers, the
measuring modules, torch's compiler), `--runs` times each way: ``off`` without the cache, then ``cached`` with
``compile_cache.configure(ROOT, device)`` first, as a measuring process does (the first of them writes the
bytecode, the later ones read it). It prints each run's wall time and what the cache record said. Run it in an
environment whose torch has no bytecode beside its sources (else the cache is not used: ``cached`` says
``default``), e.g. one installed with ``pip install --no-compile`` and never run with bytecode writing on:

    python3 benchmarks/sweep_cost/bytecode_start.py --root /tmp/bytecode-study [--runs 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

IMPORTS = ("from latency_sensitivity.measure import worker; worker.import_measuring_code(); "
           "from latency_sensitivity.engine import decode_step; decode_step.import_compiler()")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="the compile cache's root for the cached runs (a new folder)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPYCACHEPREFIX", None)
    configure = ("from latency_sensitivity.measure import compile_cache; import json; "
                 f"r = compile_cache.configure({a.root!r}, {a.device!r}); ")
    ways = {"off": "r = None; ", "cached": configure}
    for way, setup in ways.items():
        for run in range(1, a.runs + 1):
            code = f"{setup}{IMPORTS}; import json; print(json.dumps(r and r['bytecode']))"
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            print(json.dumps({"way": way, "run": run, "wall_s": round(wall, 2),
                              "bytecode": json.loads(out.stdout.strip().splitlines()[-1])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
