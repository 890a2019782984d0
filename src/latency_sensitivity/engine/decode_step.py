"""The decode step of the static-cache backends (graph, compiled), and the process's compiled form of it.

dynamo keeps its compiled code per code object (here: decode_step's), with guards on what the code depends on. A
later backend whose model has the same architecture, dtype, changes and shapes (with dynamic_batch: any batch of 2
or more) passes them and runs that code without tracing the model again: the code inductor's on-disk cache would
give it in a new process, without the trace that finding it there takes (benchmarks/sweep_cost/NOTES.md).
Another key resets dynamo first, so a process holds one compiled step at a time; so does a key whose last reuse
traced again (its guards did not hold), so a process never piles up recompiles towards dynamo's limit, which
fails a fullgraph compile.
"""

from __future__ import annotations

from latency_sensitivity.engine.probe import probe_hit


def decode_step(model, tokens, cache, positions):
    """One decode step of `model` on the static cache: (logits, next token); `positions` (transformers 4.x's
    explicit cache positions, None where the model derives them from the cache) advance by one."""
    probe_hit("step")  # the step's Python ran (not when replayed or run as compiled code)
    kw = {"cache_position": positions} if positions is not None else {}
    out = model(input_ids=tokens, past_key_values=cache, use_cache=True, logits_to_keep=1, **kw)
    if positions is not None:
        positions.add_(1)
    return out.logits, out.logits[:, -1].argmax(dim=-1, keepdim=True)


# the process's compiled decode step, kept from one backend to the next (module docstring)
_kept = {"key": None, "fn": None, "retraced": False}


def compiled_step(key: tuple, dynamic_batch: bool, options: dict):
    """torch.compile of decode_step for `key`; (the compiled function, whether it was kept from an earlier
    backend of this process)."""
    import torch

    if _kept["key"] == key and not _kept["retraced"]:
        return _kept["fn"], True
    torch._dynamo.reset()
    # inductor without its own CUDA graphs: the backend captures the compiled step itself
    # fullgraph: one compiled graph for the whole step, or an error (a graph break would leave parts of the step
    # to run eagerly, each recompiled per layer until dynamo's limit, and say nothing)
    # dynamic: only the dimensions the backend marks (graph.GraphBackend._mark_dynamic_batch); the rest stay static
    fn = torch.compile(decode_step, dynamic=None if dynamic_batch else False, fullgraph=True,
                       options=options or None)
    _kept.update(key=key, fn=fn, retraced=False)
    return fn, False


def forget_compiled_step() -> None:
    """Drop the process's kept compiled step and dynamo's compiled code: the next compiled backend traces anew."""
    import torch

    _kept.update(key=None, fn=None, retraced=False)
    torch._dynamo.reset()


def compiled_step_key() -> tuple | None:
    """The key of the process's kept compiled step (None: none kept)."""
    return _kept["key"]


def mark_retraced() -> None:
    """The kept step's guards did not hold for a backend (it traced again): the next backend starts afresh."""
    _kept["retraced"] = True


def compile_counts() -> dict:
    """dynamo's and inductor's counters that a compile's statistics are differences of: graphs dynamo made,
    inductor's FX graph cache hits and misses, and the kernels compiled code calls outside inductor's own
    (matmuls, attention; none are counted on a cache hit)."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"graphs": counters["stats"]["unique_graphs"], "fxgraph_cache_hit": inductor["fxgraph_cache_hit"],
            "fxgraph_cache_miss": inductor["fxgraph_cache_miss"], "extern_calls": inductor["extern_calls"]}
