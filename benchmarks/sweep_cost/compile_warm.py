"""Where the compiled backend's setup goes when its compile cache is warm: each batch size's compile in a fresh
process, as a cell in its own process or a worker's first cell of that shape meets it, in torch.compile's phases.

For each of `--batches` (the study cell: seq 128, Qwen2.5-3B architecture, random weights, fp16 on CUDA), a child
process points inductor's and Triton's caches at `--cache` (a sweep's `results/cache/compile`: the same folder
the pipeline uses), builds the model and sets up the compiled backend, and prints the backend's setup and compile
seconds, the cache counters (inductor's FX graph cache, AOTAutograd's cache), torch.compile's own phase times
(`torch._dynamo.utils.compilation_time_metrics`) and, with `--profile`, the functions that take most of the setup under
cProfile (which slows Python code: the phase times of a run without it are the figures). `--rounds` repeats it.

    python3 benchmarks/sweep_cost/compile_warm.py --cache WORK/results/cache/compile [--batches 8,64] [--rounds 2]
        [--profile [--pstats PREFIX]] [--json FILE]

A cold cache compiles in the first child and serves the later ones. `--device cpu` with `--layers` and `--hidden`
runs a smaller model on the CPU (inductor's C++ path: the phases differ from CUDA's, the script is the same).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_cell import ARCHITECTURE  # noqa: E402


def child(a) -> dict:
    import cProfile
    import io
    import pstats
    import time

    from latency_sensitivity.measure import compile_cache

    record = compile_cache.configure(a.cache, a.device)
    t0 = time.perf_counter()
    import torch
    from torch._dynamo.utils import compilation_time_metrics, counters

    from latency_sensitivity.engine import registry
    from latency_sensitivity.engine.base import Clock
    from latency_sensitivity.measure.model import CellSpec, build_model, make_prompt, model_config

    arch = json.loads(Path(a.architecture).read_text())
    if a.layers:
        arch["num_hidden_layers"] = a.layers
    if a.hidden:
        arch.update(hidden_size=a.hidden, intermediate_size=a.hidden * 4, vocab_size=min(arch["vocab_size"], 4096))
    arch_file = Path(a.tmp) / "architecture.json"
    arch_file.write_text(json.dumps(arch))
    spec = CellSpec(model="study", model_kind="architecture", model_location=str(arch_file),
                    dtype="fp16" if a.device == "cuda" else "fp32", backend="compiled", device=a.device,
                    attn_implementation="sdpa", seq_len=a.seq, batch=a.batch, gen_tokens=32, warmup=3, reps=7,
                    seed=0, threads=1)
    model = build_model(spec, model_config(spec))
    prompt = make_prompt(spec, model.config.vocab_size)
    imports_s = time.perf_counter() - t0
    options = {"dynamic_batch": True} if a.dynamic_batch else {}
    prof = cProfile.Profile() if a.profile else None
    if prof:
        prof.enable()
    backend = registry.make("compiled", model, prompt, spec.gen_tokens, Clock(a.device == "cuda"), **options)
    if prof:
        prof.disable()
    info = backend.info()
    out = {
        "batch": a.batch, "dynamic_batch": a.dynamic_batch, "profiled": bool(prof), "cache": record,
        "imports_and_build_s": imports_s, "setup_s": backend.setup_s, "compile_s": info.get("compile_s"),
        "compile_stats": info.get("compile_stats"),
        "counters": {group: dict(counters[group]) for group in ("inductor", "aot_autograd", "stats")},
        "compile_times": {name: list(values) for name, values in compilation_time_metrics.items()},
        "torch": torch.__version__,
    }
    if prof:
        if a.pstats:
            prof.dump_stats(f"{a.pstats}-batch{a.batch}.pstats")
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(a.top)
        out["profile"] = text.getvalue().strip().split("\n", 3)[-1]
    backend.close()
    return out


def phases(times: dict) -> list[tuple[str, float, int]]:
    """(phase, seconds summed, calls) from compile_times' raw record, longest first."""
    rows = [(name, float(sum(values)), len(values)) for name, values in times.items() if values]
    return sorted(rows, key=lambda r: -r[1])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, help="the compile cache's root (a sweep's results/cache/compile)")
    p.add_argument("--batches", default="8,64")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--architecture", default=str(ARCHITECTURE))
    p.add_argument("--layers", type=int, help="override the architecture's decoder layers")
    p.add_argument("--hidden", type=int, help="override its hidden size (intermediate 4x, vocabulary at most 4096)")
    p.add_argument("--dynamic-batch", action="store_true", help="compile the batch as a dynamic dimension")
    p.add_argument("--profile", action="store_true", help="cProfile the setup too")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--pstats", help="with --profile: write each child's profile to PREFIX-batchN.pstats")
    p.add_argument("--json", type=Path, help="write every child's record here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a)))
        return 0

    import tempfile

    records = []
    passed = ["--cache", a.cache, "--seq", str(a.seq), "--device", a.device, "--architecture", a.architecture,
              "--top", str(a.top)]
    passed += [f"--{name}={value}" for name, value in (("layers", a.layers), ("hidden", a.hidden)) if value]
    passed += [flag for flag, on in (("--dynamic-batch", a.dynamic_batch), ("--profile", a.profile)) if on]
    passed += ["--pstats", a.pstats] if a.pstats else []
    for rnd in range(1, a.rounds + 1):
        for batch in (int(b) for b in a.batches.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, __file__, *passed, "--child", "--batch", str(batch), "--tmp", tmp]
                done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"## round {rnd}, batch {batch}: failed (rc {done.returncode})\n```\n{done.stderr[-3000:]}\n```")
                records.append({"round": rnd, "batch": batch, "error": done.stderr[-3000:]})
                continue
            rec = json.loads(done.stdout.strip().splitlines()[-1])
            rec["round"] = rnd
            records.append(rec)
            s = rec["compile_stats"] or {}
            aot = rec["counters"]["aot_autograd"]
            print(f"\n## round {rnd}, batch {batch}{' (profiled)' if rec['profiled'] else ''}\n")
            print(f"setup {rec['setup_s']:.2f} s, compile {rec['compile_s'] or 0:.2f} s; FX graph cache "
                  f"hit {s.get('fxgraph_cache_hit')} miss {s.get('fxgraph_cache_miss')}; AOTAutograd cache "
                  f"hit {aot.get('autograd_cache_hit', 0)} miss {aot.get('autograd_cache_miss', 0)} "
                  f"bypass {aot.get('autograd_cache_bypass', 0)}; imports and build {rec['imports_and_build_s']:.1f} s")
            print("\n| phase | s | calls |\n|---|---:|---:|")
            for name, secs, calls in phases(rec["compile_times"])[:25]:
                print(f"| {name} | {secs:.3f} | {calls} |")
            if rec.get("profile"):
                print("\n```\n" + rec["profile"] + "\n```")
    if a.json:
        a.json.write_text(json.dumps(records, indent=1))
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
