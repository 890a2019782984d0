"""Whether the compiled backend's decode step could be loaded instead of traced in every measuring process.

torch.compile traces the model's Python again in each process, even where inductor's cache holds the compiled
code (NOTES.md, "Where a warm compile goes"). An AOTInductor package is compiled code that loads without a trace.
This script exports the backend's decode step (`engine/decode_step.py`) with the static KV cache's tensors as
inputs it mutates (each layer's keys, values and filled length), compiles the export once into a package (a
later run with the same `--package` file loads it and skips both), then builds another model with other weights
and a new cache, as the next cell would, binds that model's weights to the loaded package (the package holds
none of its own), runs `--steps` decode steps with it, each fed eager's token, and compares its tokens, logits
and every cache position with eager decoding of the same model (transformers' dynamic cache). `--dynamic-batch`
exports the batch as a dynamic dimension and `--run-batch` runs the loaded step at another batch than the one
exported. With `--fuse-projections` the model's sibling projections are fused first, and with `--pack-gqa` its
attention packs the query heads of a KV group where transformers does not, as the compiled backend changes the
model at batch 2 or more. With `--capture` (CUDA) it also captures the loaded step in a CUDA graph, as the
compiled backend does, and times `--replays` replays; `--compare-compile` does the same with torch.compile of
the same step on the same model and cache, the compiled backend's way. `--weights-in-package` compiles the
exporting model's weights into the package, AOTInductor's default (they are still replaced by the next model's).
It prints when it starts and ends loading the package, and writes the record so far (`--json`, `stage`) before
the load, so that a load that kills the process is seen as one and keeps the export and compile times.

    python3 benchmarks/sweep_cost/aoti_step.py --package DIR/step.pt2 [--batch 8] [--seq 128] [--steps 8]
        [--dynamic-batch [--run-batch 64]] [--fuse-projections] [--pack-gqa] [--capture [--replays N]]
        [--compare-compile] [--weights-in-package] [--json FILE]
    python3 benchmarks/sweep_cost/aoti_step.py --device cpu --dtype fp32 --architecture config/models/tiny-qwen2.json
        --package DIR/tiny.pt2

It prints one JSON record: the seconds of each part (export, compile, load, bind, the first step, the median
step), whether the tokens and the cache matched eager's, and the versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_cell import ARCHITECTURE  # noqa: E402


def cache_tensors(cache) -> list:
    """Each layer's keys, values and filled length, in layer order: the exported step's inputs after the tokens."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values, layer.cumulative_length)]


def step_module(model, cache):
    """The decode step as a module whose inputs are the tokens and cache_tensors(cache), pointed into the cache's
    layers before the step runs, so that the export records the cache updates as mutations of its inputs."""
    import torch

    from latency_sensitivity.engine.decode_step import decode_step

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, tokens, *tensors):
            for i, layer in enumerate(cache.layers):
                layer.keys, layer.values, layer.cumulative_length = tensors[3 * i : 3 * i + 3]
            return decode_step(self.model, tokens, cache, None)

    return Step()


def cell(a, seed: int, batch: int | None = None):
    """(model, cache, prompt, next token) of a cell at `batch` (default --batch): the model built as a measuring
    process builds it, its static cache filled by the prompt's prefill."""
    import torch
    from transformers import StaticCache

    from latency_sensitivity.measure.model import CellSpec, build_model, make_prompt

    batch = batch or a.batch
    spec = CellSpec(model="study", model_kind="architecture", model_location=a.architecture, dtype=a.dtype,
                    backend="compiled", device=a.device, attn_implementation="sdpa", seq_len=a.seq, batch=batch,
                    gen_tokens=a.steps + 1, warmup=0, reps=1, seed=seed, threads=1)
    model = build_model(spec)
    if a.fuse_projections:  # as the compiled backend does before it compiles (engine/surgery.py)
        from latency_sensitivity.engine.surgery import fuse_sibling_projections

        fuse_sibling_projections(model)
    if a.pack_gqa:  # as the compiled backend does where transformers lacks the packing
        from latency_sensitivity.engine.surgery import pack_gqa_decode

        a.pack_gqa_applied = pack_gqa_decode(model)  # False where transformers packs itself
    prompt = make_prompt(spec, model.config.vocab_size)
    # room for eager's steps, the steps here, and the timed replays (each timing starts at the same length)
    cache = StaticCache(config=model.config, max_cache_len=a.seq + 2 * a.steps + 2 * a.replays + 8)
    with torch.no_grad():  # not inference mode: the export updates the cache's tensors in place
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return model, cache, prompt, out.logits[:, -1].argmax(dim=-1, keepdim=True)


def eager_reference(model, prompt, steps: int):
    """Tokens, last-position logits and the dynamic cache of eager decoding: the prompt, then `steps` steps."""
    import torch
    from transformers import DynamicCache

    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        tokens, logits = [token], []
        for _ in range(steps):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1].float())
            token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            tokens.append(token)
    return torch.cat(tokens, dim=1), logits, cache


def step_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a study of the decode step loaded in a new cell (this script's and precompiled_step.py's)."""
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--architecture", default=str(ARCHITECTURE))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--dynamic-batch", action="store_true", help="the batch as a dynamic dimension (2 or more)")
    p.add_argument("--run-batch", type=int, help="the loaded step's cell at this batch (default --batch)")
    p.add_argument("--fuse-projections", action="store_true",
                   help="q/k/v and gate/up as one GEMM each, as the compiled backend runs them")
    p.add_argument("--pack-gqa", action="store_true",
                   help="the packed GQA attention where transformers lacks it, as the compiled backend runs it")
    p.add_argument("--capture", action="store_true", help="also capture the loaded step in a CUDA graph")
    p.add_argument("--replays", type=int, default=20, help="timed replays of each captured step")
    p.add_argument("--compare-compile", action="store_true",
                   help="also torch.compile the same step on the same model and cache, capture and replay it")
    p.add_argument("--json", help="also write the record here")


def steps_against_eager(run, model, prompt, token, cache, a, sync):
    """`a.steps` steps of `run` (tokens -> (logits, next token)) on the cell's filled cache, each fed eager's token
    (in fp16 a near tie may pick another token; the inputs stay eager's), against eager decoding of the same model:
    (eager's tokens, the record's fields, each step's last-position logits, the last token)."""
    import torch

    want_tokens, want_logits, want_cache = eager_reference(model, prompt, a.steps)
    tokens, errors, times, logits_by_step = [token], [], [], []
    with torch.no_grad():
        for i in range(a.steps):
            sync()
            t0 = time.perf_counter()
            logits, token = run(want_tokens[:, i : i + 1].contiguous())
            sync()
            times.append(time.perf_counter() - t0)
            errors.append(float((logits[:, -1].float() - want_logits[i]).abs().max()))
            logits_by_step.append(logits[:, -1].float().clone())
            tokens.append(token)
    got = torch.cat(tokens, dim=1)
    filled = a.seq + a.steps
    fields = {"first_step_s": times[0], "step_ms_p50": statistics.median(times[1:] or times) * 1e3,
              "tokens_equal_eager": bool(torch.equal(got, want_tokens)),
              "tokens_as_eager": f"{int((got == want_tokens).sum())} of {want_tokens.numel()}",
              "logits_max_abs_err": max(errors), "cache_length": int(cache.layers[0].cumulative_length),
              "cache_equal_eager": all(
                  torch.allclose(mine[:, :, :filled].float(), theirs.float(), atol=1e-2 if a.dtype == "fp16" else 1e-5)
                  for layer, ref in zip(cache.layers, want_cache.layers)
                  for mine, theirs in ((layer.keys, ref.keys), (layer.values, ref.values)))}
    return want_tokens, fields, logits_by_step, token


def study_record(a) -> dict:
    """A study record's first fields: the device, the versions, and the cells' options (step_arguments)."""
    import torch

    from latency_sensitivity.engine.probe import versions

    return {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", **versions(), "batch": a.batch,
            "run_batch": a.run_batch or a.batch, "dynamic_batch": a.dynamic_batch,
            "fuse_projections": a.fuse_projections, "pack_gqa": a.pack_gqa, "seq": a.seq, "steps": a.steps}


def device_sync(device: str):
    """A function that waits for the device's work (nothing to wait for on the CPU)."""
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--package", required=True, help="the package file: compiled here unless it exists")
    step_arguments(p)
    p.add_argument("--weights-in-package", action="store_true",
                   help="compile the exporting model's weights into the package (still rebound to the next model's)")
    a = p.parse_args(argv)

    import torch

    cuda = a.device == "cuda"
    sync = device_sync(a.device)
    record = {**study_record(a), "weights_in_package": a.weights_in_package, "package": a.package}
    package = Path(a.package)
    if not package.exists():  # export and compile from one cell
        model, cache, _, token = cell(a, seed=0)
        step = step_module(model, cache)
        t0 = time.perf_counter()
        with torch.no_grad():
            tensors = cache_tensors(cache)
            shapes = None
            if a.dynamic_batch:  # the batch of the tokens and of every keys and values tensor, as one dimension
                batch = torch.export.Dim("batch", min=2, max=4096)
                shapes = ({0: batch}, tuple({0: batch} if t.dim() == 4 else None for t in tensors))
            exported = torch.export.export(step, (token, *tensors), dynamic_shapes=shapes,
                                           strict=False).run_decompositions()
        record["export_s"] = time.perf_counter() - t0
        record["input_mutations"] = len(exported.graph_signature.user_inputs_to_mutate)
        t0 = time.perf_counter()
        # the package holds no weights: each cell binds its own model's
        torch._inductor.aoti_compile_and_package(exported, package_path=str(package),
                                                 inductor_configs={"aot_inductor.package_constants_in_so":
                                                                   a.weights_in_package})
        record["compile_s"] = time.perf_counter() - t0
        del model, cache, step, exported
        if cuda:
            torch.cuda.empty_cache()

    # the next cell: other weights, a new cache (at --run-batch); the package loaded and its weights bound to it
    model, cache, prompt, token = cell(a, seed=1, batch=a.run_batch or a.batch)
    tensors = cache_tensors(cache)
    record["pack_gqa_applied"] = getattr(a, "pack_gqa_applied", False)
    # a load that kills the process (a crash in the C++ loader) leaves this record, with what was measured before
    record["stage"] = "loading the package"
    save(record, a.json)
    t0 = time.perf_counter()
    print("loading the package", flush=True)
    runner = torch._inductor.aoti_load_package(str(package))
    record["load_s"] = time.perf_counter() - t0
    record["stage"] = "loaded"
    print(f"loaded in {record['load_s']:.2f} s", flush=True)
    step = step_module(model, cache)
    state = {**dict(step.named_parameters(remove_duplicate=False)), **dict(step.named_buffers(remove_duplicate=False))}
    names = runner.get_constant_fqns()
    record["constants"], record["constants_missing"] = len(names), [n for n in names if n not in state]
    if record["constants_missing"]:  # tensors the export found outside the model's parameters and buffers
        return report(record, a.json, ok=False)
    t0 = time.perf_counter()
    runner.load_constants({n: state[n] for n in names}, check_full_update=True, user_managed=True)
    record["bind_s"] = time.perf_counter() - t0

    want_tokens, fields, _, token = steps_against_eager(lambda t: runner(t, *tensors), model, prompt, token, cache,
                                                        a, sync)
    record.update(fields)

    if a.capture and cuda:
        try:
            record["replay_ms_p50"], record["replay_ms"] = replay_times(lambda t: runner(t, *tensors), token, cache,
                                                                        a.seq + a.steps, a.replays)
        except Exception as exc:  # noqa: BLE001 - the record says what failed
            record["capture_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    if a.compare_compile and cuda:  # the backend's way: torch.compile of the same step, captured the same way
        from latency_sensitivity.engine.decode_step import decode_step

        compiled = torch.compile(decode_step, dynamic=False, fullgraph=True)
        with torch.no_grad():
            for layer in cache.layers:
                layer.cumulative_length.fill_(a.seq + a.steps)
            t0 = time.perf_counter()
            compiled(model, token, cache, None)
            sync()
        record["torch_compile_s"] = time.perf_counter() - t0
        record["compile_replay_ms_p50"], record["compile_replay_ms"] = replay_times(
            lambda t: compiled(model, t, cache, None), token, cache, a.seq + a.steps, a.replays)

    return report(record, a.json, ok=record["cache_equal_eager"])


def replay_times(step, token, cache, filled: int, replays: int):
    """Capture `step` (tokens -> (logits, next token)) in a CUDA graph after a warm-up step on a side stream, as
    the backends do, and time `replays` replays, each from the cache filled to `filled` positions plus the
    replays before it: (median ms, every replay's ms)."""
    import torch

    def rewind():
        for layer in cache.layers:
            layer.cumulative_length.fill_(filled)

    static_in = token.clone()
    with torch.no_grad():
        rewind()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _, static_out = step(static_in)
        rewind()
        times = []
        for _ in range(replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
            static_in.copy_(static_out)
    return statistics.median(times), [round(t, 4) for t in times]


def report(record: dict, path: str | None, ok: bool) -> int:
    """Print the record (and write it to `path`); the exit status: 0 where the loaded step filled the cache as
    eager decoding did."""
    print(json.dumps(record, indent=1))
    save(record, path)
    return 0 if ok else 1


def save(record: dict, path: str | None) -> None:
    """Write the record to `path` (if given) whole or not at all: a new file renamed over the old one."""
    if path:
        from latency_sensitivity.atomic import write_text

        write_text(path, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
