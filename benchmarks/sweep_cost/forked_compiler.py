"""Whether a child forked after torch's compiler was imported can use CUDA, and what in that import decides it.

`measure.isolation: forked` forks each worker from a fork server that has made the worker's imports once. For a
compiling backend those imports include torch's compiler (`decode_step.import_compiler`). This study runs, for
each way torch answers `torch.cuda.is_available()` (through the CUDA runtime, torch's default, or through NVML,
`PYTORCH_NVML_BASED_CUDA_CHECK=1`), a fresh Python process that imports torch, counts the calls of
`torch._C._cuda_getDeviceCount` (the CUDA runtime's device count) and where the first came from, imports the
compiler, then forks a child. The child says whether torch marked it a bad fork, makes a CUDA tensor and runs a
small `torch.compile`d function on it. Printed: one row per way.

    python3 benchmarks/sweep_cost/forked_compiler.py [--ways runtime,nvml] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PROBE = r"""
import json, os, sys, time, traceback
import torch

calls, first = [0], []
count = getattr(torch._C, "_cuda_getDeviceCount", None)  # absent from a CPU build of torch

def counted():
    calls[0] += 1
    if not first:
        first.extend(f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.line}"
                     for f in traceback.extract_stack()[:-1] if "torch" in f.filename)
    return count()

if count is not None:
    torch._C._cuda_getDeviceCount = counted
from latency_sensitivity.engine import decode_step

t0 = time.perf_counter()
decode_step.import_compiler()
row = {"compiler_import_s": round(time.perf_counter() - t0, 2), "device_count_calls": calls[0],
       "first_call_from": first[-3:], "parent_cuda_initialized": torch.cuda.is_initialized()}
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    child = {"bad_fork": bool(getattr(torch._C, "_cuda_isInBadFork", lambda: None)())}
    try:
        x = torch.ones(4, device="cuda")
        child["cuda_tensor"] = "ok"
        t0 = time.perf_counter()
        y = torch.compile(lambda t: t * 2 + 1)(x)
        torch.cuda.synchronize()
        child["compile_s"] = round(time.perf_counter() - t0, 2)
        child["compiled_result"] = y.sum().item()
    except Exception as exc:
        child.setdefault("cuda_tensor", f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        child.setdefault("compiled_result", None)
    os.write(write, json.dumps(child).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read) as fh:
    row["child"] = json.loads(fh.read() or "{}")
os.waitpid(pid, 0)
print(json.dumps(row))
"""


def probe(way: str) -> dict:
    env = dict(os.environ)
    env.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    if way == "nvml":
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"way": way, "error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return {"way": way, **json.loads(lines[-1])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ways", default="runtime,nvml", help="runtime (torch's default), nvml, or both")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args()
    rows = [probe(way) for way in a.ways.split(",")]
    print("| is_available through | compiler import s | CUDA runtime device counts | parent CUDA initialised | "
          "child: bad fork | child: CUDA tensor | child: torch.compile |")
    print("|---|---:|---:|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['way']} | error: {r['error']} | | | | | |")
            continue
        c = r["child"]
        compiled = f"{c.get('compiled_result')} in {c['compile_s']} s" if "compile_s" in c else "-"
        print(f"| {r['way']} | {r['compiler_import_s']} | {r['device_count_calls']} | {r['parent_cuda_initialized']} | "
              f"{c.get('bad_fork')} | {c.get('cuda_tensor')} | {compiled} |")
    for r in rows:
        if r.get("first_call_from"):
            print(f"\n{r['way']}: the first device count came from:\n" +
                  "\n".join(f"    {line}" for line in r["first_call_from"]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
