"""Whether the compiled backend's decode step could be loaded in a measuring process instead of traced there.

torch.compile traces the model's Python again in each process, even where inductor's cache holds the compiled
code (NOTES.md, "Where a warm compile goes"); a worker pays that trace once, a process per cell in every compiled
cell. dynamo's ahead-of-time compile (`torch.compile(...).aot_compile`, saved by `save_compiled_function` and
loaded by `torch.compiler.load_compiled_function`) keeps dynamo's output, its guards and inductor's compiled code
in one file: a process that loads it runs the step without tracing. Unlike an AOTInductor package (aoti_step.py)
the step keeps its Python signature: it takes the model, the tokens and the static cache, as the backend calls it.

This script compiles the backend's decode step (`engine/decode_step.py`) ahead of time from one cell (unless
`--artifact` exists), then builds another model with other weights and a new cache, as the next cell would, loads
the file, runs `--steps` decode steps with it, each fed eager's token, and compares its tokens, logits and every
cache position with eager decoding of the same model (transformers' dynamic cache). `--dynamic-batch` compiles the
batch as a dynamic dimension (as `compile_shapes: dynamic_batch` marks it) and `--run-batch` runs the loaded step
at another batch. `--fuse-projections` and `--pack-gqa` change the model first, as the compiled backend does at
batch 2 or more. The guards kept are those that travel (tensor shapes, dtypes and devices, dynamo's global state):
a file is only valid for the architecture, dtype and model changes it was compiled for, so its name must say
them. With `--capture` (CUDA) the loaded step is also captured in a CUDA graph, as the compiled backend does, and
`--replays` replays timed; `--compare-compile` runs torch.compile of the same step (the backend's way, the batch
dynamic or not as the file's) over the same steps from the same cache, timing its trace with whatever inductor
cache this machine holds and comparing its logits with the loaded step's, and on CUDA captures and times it too.

    python3 benchmarks/sweep_cost/precompiled_step.py --artifact DIR/step.bin [--batch 8] [--seq 128]
        [--steps 8] [--dynamic-batch [--run-batch 64]] [--fuse-projections] [--pack-gqa]
        [--capture [--replays N]] [--compare-compile] [--json FILE]
    python3 benchmarks/sweep_cost/precompiled_step.py --device cpu --dtype fp32
        --architecture config/models/tiny-qwen2.json --artifact DIR/tiny.bin

It prints one JSON record: the seconds of each part (the ahead-of-time compile, the save, the load, the first
step, the median step), the file's size, whether the tokens and the cache matched eager's, and the versions.
The exit status is 0 where the loaded step filled the cache as eager decoding did, or gave torch.compile's logits
(`--compare-compile`; in fp16 the fused projections round otherwise than eager's modules).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aoti_step import (cell, device_sync, replay_times, report, save, step_arguments,  # noqa: E402
                       steps_against_eager, study_record)


def mark_batch_dynamic(token, cache) -> None:
    """The batch of the tokens and of every layer's keys and values as one dynamic dimension, as the backend's
    `compile_shapes: dynamic_batch` marks them."""
    import torch

    torch._dynamo.mark_dynamic(token, 0)
    for layer in cache.layers:
        torch._dynamo.mark_dynamic(layer.keys, 0)
        torch._dynamo.mark_dynamic(layer.values, 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", required=True, help="the compiled step's file: compiled here unless it exists")
    step_arguments(p)
    a = p.parse_args(argv)

    import torch

    from latency_sensitivity.engine.decode_step import decode_step

    cuda = a.device == "cuda"
    sync = device_sync(a.device)
    record = {**study_record(a), "artifact": a.artifact}
    if not hasattr(torch.compiler, "load_compiled_function"):
        record["error"] = f"torch {torch.__version__} has no torch.compiler.load_compiled_function"
        return report(record, a.json, ok=False)
    artifact = Path(a.artifact)
    if not artifact.exists():  # compile ahead of time from one cell
        model, cache, _, token = cell(a, seed=0)
        if a.dynamic_batch:
            mark_batch_dynamic(token, cache)
        record["stage"] = "compiling"
        save(record, a.json)
        torch._dynamo.config.enable_aot_compile = True  # off by default before torch 2.13
        t0 = time.perf_counter()
        compiled = torch.compile(decode_step, dynamic=None if a.dynamic_batch else False, fullgraph=True,
                                 options={"guard_filter_fn": torch.compiler.keep_portable_guards_unsafe})
        with torch.no_grad():
            step = compiled.aot_compile(((model, token, cache, None), {}))
        record["aot_compile_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        artifact.parent.mkdir(parents=True, exist_ok=True)
        step.save_compiled_function(str(artifact))
        record["save_s"] = time.perf_counter() - t0
        del model, cache, step, compiled
        torch._dynamo.reset()
        if cuda:
            torch.cuda.empty_cache()
    record["artifact_bytes"] = artifact.stat().st_size

    # the next cell: other weights, a new cache (at --run-batch); the step loaded, not traced
    model, cache, prompt, token = cell(a, seed=1, batch=a.run_batch or a.batch)
    record["pack_gqa_applied"] = getattr(a, "pack_gqa_applied", False)
    record["stage"] = "loading"
    save(record, a.json)
    t0 = time.perf_counter()
    with open(artifact, "rb") as f:
        step = torch.compiler.load_compiled_function(f)
    record["load_s"] = time.perf_counter() - t0
    record["stage"] = "loaded"

    want_tokens, fields, loaded_logits, token = steps_against_eager(lambda t: step(model, t, cache, None), model,
                                                                    prompt, token, cache, a, sync)
    record.update(fields)
    filled = a.seq + a.steps

    if a.capture and cuda:
        try:
            record["replay_ms_p50"], record["replay_ms"] = replay_times(lambda t: step(model, t, cache, None), token,
                                                                        cache, filled, a.replays)
        except Exception as exc:  # noqa: BLE001 - the record says what failed
            record["capture_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    if a.compare_compile:  # the backend's way: torch.compile of the same step, captured the same way
        compiled = torch.compile(decode_step, dynamic=None if a.dynamic_batch else False, fullgraph=True)
        first = want_tokens[:, :1].contiguous()
        if a.dynamic_batch:
            mark_batch_dynamic(first, cache)
        with torch.no_grad():
            for layer in cache.layers:
                layer.cumulative_length.fill_(a.seq)
            t0 = time.perf_counter()
            compiled(model, first, cache, None)
            sync()
            record["torch_compile_s"] = time.perf_counter() - t0
            # the same steps from the same cache by torch.compile's step: its logits against the loaded step's
            diffs = []
            for layer in cache.layers:
                layer.cumulative_length.fill_(a.seq)
            for i in range(a.steps):
                logits, _ = compiled(model, want_tokens[:, i : i + 1].contiguous(), cache, None)
                diffs.append(float((logits[:, -1].float() - loaded_logits[i]).abs().max()))
        record["logits_max_abs_diff_torch_compile"] = max(diffs)
    if a.compare_compile and cuda:
        record["compile_replay_ms_p50"], record["compile_replay_ms"] = replay_times(
            lambda t: compiled(model, t, cache, None), token, cache, filled, a.replays)

    # in fp16 the fused projections round otherwise than eager's modules: there the step's own compiled form is the
    # reference, where it ran
    close = record.get("logits_max_abs_diff_torch_compile", float("inf")) <= (1e-2 if a.dtype == "fp16" else 1e-5)
    return report(record, a.json, ok=record["cache_equal_eager"] or close)


if __name__ == "__main__":
    sys.exit(main())
