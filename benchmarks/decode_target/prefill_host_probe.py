"""Where the host time of an eager prefill goes, graph against compiled backend (run on a CUDA GPU).

Qwen2.5-3B architecture, random fp16 weights, seq 128 x batch 1 (a host-bound prefill). Per backend: the
garbage collector frozen after setup (as the runner does), 3 untimed prefills, then 10 under cProfile; prints
the wall time per prefill and the 25 functions with the most own time.
    python3 benchmarks/decode_target/prefill_host_probe.py [BACKEND ...]        (from the repository root)
"""
import cProfile
import gc
import pstats
import sys
import time

import torch

from compiled_attribution import model_and_prompt  # the same cell, from the script beside this one
from latency_sensitivity.engine import registry
from latency_sensitivity.engine import base

model, prompt = model_and_prompt()
for name in sys.argv[1:] or ["graph", "compiled"]:
    with torch.inference_mode():
        b = registry.make(name, model, prompt, 32, base.Clock(True))
        gc.collect()
        gc.freeze()
        for _ in range(3):
            b.prefill(prompt)
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(10):
            b.prefill(prompt)
        torch.cuda.synchronize()
        prof.disable()
        print(f"== {name}: {(time.perf_counter() - t0) * 100:.1f} ms per prefill under cProfile", b.info()["gemv"])
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        b.close()
        gc.unfreeze()
