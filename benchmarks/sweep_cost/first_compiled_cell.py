"""Where a measuring process's first compiled cell spends its backend setup, by the setup's parts, after the
start-up a shared worker makes (the compile caches configured, the imports, the model's code, the CUDA context and
one small first request).

A worker's first compiled cell set up 2.4-3.6 s slower than its later ones, outside the parts the setup timed
then (NOTES.md, "The compiler in a compiled process's start-up"), and its first batch-1 cell's prefill 0.5-1.2 s
slower. This builds the study cell (study_cell.py) `--cells` times in one fresh process and prints each backend's
setup by part (``backend_info`` ``setup_parts``: the model changes, the static cache and the compiled step found,
prefill, the step as Python, the warm-up with the compile or load, capture, replay). What the start-up makes
before the cells is chosen:

- ``--import-compiler``: import torch's compiler there, as a compiled worker's start-up now does;
- ``--first-use``: the first request before the cells: ``none``; ``graph`` (the graph backend, a compiled worker's
  first use before); ``own`` (the compiled backend without a compile: its batch-1 path, a compiled worker's
  first use now); each at worker.FIRST_USE_SHAPE.

At batch 2 or more the step is compiled with the batch dynamic, and ``--step saved`` (the default) compiles it
ahead of time and saves it under ``--cache`` (or loads it from there), ``--step traced`` traces it with
torch.compile. ``--profile FILE`` writes the first cell's backend setup under cProfile (cumulative, then
internal time) to FILE.

    python3 benchmarks/sweep_cost/first_compiled_cell.py --cache DIR --batch 8            # compile and save
    python3 benchmarks/sweep_cost/first_compiled_cell.py --cache DIR --batch 64           # a later process loads
    python3 benchmarks/sweep_cost/first_compiled_cell.py --cache DIR --batch 1 --first-use own --import-compiler
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from dataclasses import replace

from study_cell import cell_spec


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, help="the compile cache's root (measure/compile_cache.py)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--step", choices=["saved", "traced"], default="saved")
    p.add_argument("--first-use", choices=["none", "graph", "own"], default="graph")
    p.add_argument("--import-compiler", action="store_true")
    p.add_argument("--cells", type=int, default=1)
    p.add_argument("--profile", help="write the first cell's backend setup under cProfile to this file")
    a = p.parse_args(argv)

    t_start = time.perf_counter()
    from latency_sensitivity.measure import compile_cache

    cache = compile_cache.configure(a.cache, "cuda")  # before torch is imported, as a worker does
    import torch

    from latency_sensitivity.engine import base, decode_step, registry
    from latency_sensitivity.measure import worker
    from latency_sensitivity.measure.model import build_model, make_prompt, model_config

    spec = cell_spec("compiled", a.batch)
    model_config(spec)
    if a.import_compiler:
        decode_step.import_compiler()
    torch.cuda.init()
    torch.empty(1, device="cuda")
    first_use_start = time.perf_counter()
    if a.first_use == "own":  # a compiled worker's first use (worker.first_use)
        fields = {k: getattr(spec, k) for k in ("model", "model_kind", "model_location", "dtype", "backend",
                                                "device", "attn_implementation", "threads")}
        if worker.first_use(fields) is not None:
            return 1
    elif a.first_use == "graph":  # the graph backend's request at the same shape, as a compiled worker's was
        small = replace(spec, warmup=0, reps=1, **worker.FIRST_USE_SHAPE)
        model = build_model(small)
        prompt = make_prompt(small, model.config.vocab_size)
        clock = base.Clock(True)
        backend = registry.make("graph", model, prompt, small.gen_tokens, clock)
        with torch.inference_mode():
            backend.request(prompt, small.gen_tokens, clock, "first_use")
        backend.close()
        del model, backend, prompt
        gc.collect()
        torch.cuda.empty_cache()
    first_use_s = time.perf_counter() - first_use_start
    startup_s = time.perf_counter() - t_start
    print(f"compiler imported before the cells: {'torch._inductor.compile_fx' in sys.modules}", flush=True)

    options = {}
    if a.batch >= 2:
        options["dynamic_batch"] = True
        if a.step == "saved":
            options["saved_step_dir"] = cache["steps"]
    for i in range(a.cells):
        model = build_model(spec, model_config(spec))
        prompt = make_prompt(spec, model.config.vocab_size)
        profiler = None
        if a.profile and i == 0:
            import cProfile

            profiler = cProfile.Profile()
        t0 = time.perf_counter()
        with profiler if profiler else contextlib.nullcontext():
            backend = registry.make("compiled", model, prompt, spec.gen_tokens, base.Clock(True), **options)
        make_s = time.perf_counter() - t0
        info = backend.info()
        parts = info["setup_parts"]
        print(json.dumps({"batch": a.batch, "step": a.step, "first_use": a.first_use,
                          "import_compiler": a.import_compiler, "cell": i, "startup_s": round(startup_s, 2),
                          "first_use_s": round(first_use_s, 2), "setup_s": round(backend.setup_s, 3),
                          "make_s": round(make_s, 3), "compiled_step": info["compile_stats"].get("step"),
                          "compile_s": info["compile_s"] and round(info["compile_s"], 3),
                          "fused_layers": info["fused_layers"],
                          "parts": {k: round(v, 3) for k, v in parts.items()},
                          "parts_sum": round(sum(parts.values()), 3)}), flush=True)
        if profiler:
            import io
            import pstats

            with open(a.profile, "w") as f:
                for order, lines in (("cumulative", 70), ("tottime", 40)):
                    text = io.StringIO()
                    pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(lines)
                    f.write(text.getvalue())
        backend.close()
        del model, backend, prompt
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
