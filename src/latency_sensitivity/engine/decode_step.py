"""The decode step of the static-cache backends (graph, compiled), its static cache, and its compiled forms.

dynamo keeps its compiled code per code object (here: decode_step's), with guards on what the code depends on. A
later backend whose model has the same architecture, dtype, changes and shapes (with dynamic_batch: any batch of 2
or more) passes them and runs that code without tracing the model again: the code inductor's on-disk cache would
give it in a new process, without the trace that finding it there takes (benchmarks/sweep_cost/NOTES.md).
Another key resets dynamo first, so a process holds one compiled step at a time; so does a key whose last reuse
traced again (its guards did not hold), so a process never piles up recompiles towards dynamo's limit, which
fails a fullgraph compile.

With a folder for saved steps (``compiled_step(saved_dir=...)``; the pipeline's is under results/cache/compile/,
measure/compile_cache.py) the step is compiled ahead of time instead (dynamo's ``aot_compile``) and saved there,
and every later process loads it and runs it without tracing the model at all (``SavedStep``). A saved step keeps
only the guards that travel (the tensors' shapes, dtypes, devices and dispatch keys, dynamo's global state), so its
file name is a hash of everything else the code depends on: the backend's key (architecture, dtype, device, model
changes, shapes, inductor's options), inference mode, this package's engine code, the versions of Python, torch,
transformers and Triton.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

from latency_sensitivity import atomic
from latency_sensitivity.engine.probe import probe_hit, versions


def decode_step(model, tokens, cache, positions):
    """One decode step of `model` on the static cache: (logits, next token); `positions` (transformers 4.x's
    explicit cache positions, None where the model derives them from the cache) advance by one."""
    probe_hit("step")  # the step's Python ran (not when replayed or run as compiled code)
    kw = {"cache_position": positions} if positions is not None else {}
    out = model(input_ids=tokens, past_key_values=cache, use_cache=True, logits_to_keep=1, **kw)
    if positions is not None:
        positions.add_(1)
    return out.logits, out.logits[:, -1].argmax(dim=-1, keepdim=True)


def static_cache(model, batch: int, max_cache_len: int):
    """transformers' StaticCache for `model` at `batch`, `max_cache_len` positions."""
    from transformers import StaticCache

    try:  # transformers >= 4.56: layers allocate lazily on the first update
        return StaticCache(config=model.config, max_cache_len=max_cache_len)
    except TypeError:  # older signature
        param = next(model.parameters())
        return StaticCache(config=model.config, max_batch_size=batch, max_cache_len=max_cache_len,
                           device=param.device, dtype=param.dtype)


def allocate_static_cache(model, cache, batch: int) -> bool:
    """Allocate the static cache's tensors for `batch` sequences now, as its first update would; False where
    transformers cannot say their shapes ahead (``_get_static_cache_init_shape``: layers on several devices, keys
    and values of different widths) or the cache has no ``early_initialization``: the first update allocates
    them then. A cache allocated at construction (older transformers) counts as allocated."""
    if not getattr(cache, "layers", None):
        return True  # older StaticCache: allocated when it was made
    shape = getattr(model, "_get_static_cache_init_shape", lambda: None)()
    if shape is None or not hasattr(cache, "early_initialization"):
        return False
    num_heads, head_dim = shape
    param = next(model.parameters())
    cache.early_initialization(batch_size=batch, num_heads=num_heads, head_dim=head_dim, dtype=param.dtype,
                               device=param.device)
    return True


def cache_tensors(cache, batch: int) -> list:
    """The KV cache's tensors with the batch as their first dimension: each layer's keys and values
    (``cache.layers[i].keys``/``.values``, allocated by allocate_static_cache or the first update)."""
    import torch

    return [v for layer in getattr(cache, "layers", None) or [] for v in vars(layer).values()
            if isinstance(v, torch.Tensor) and v.dim() == 4 and v.shape[0] == batch]


# the process's compiled decode step, kept from one backend to the next (module docstring), with the paths that
# the step's Python took in the backend that made it (kept_step_paths)
_kept = {"key": None, "fn": None, "retraced": False, "paths": None}


def compiled_step(key: tuple, dynamic_batch: bool, options: dict, saved_dir: str | None = None):
    """The compiled decode_step for `key`: (the function, whether it was kept from an earlier backend of this
    process). saved_dir None: torch.compile, traced at its first call; a folder: a SavedStep there."""
    import torch

    # inference mode too: the tensors' dispatch keys differ with it, and the saved guards check them
    step_key = (*key, dynamic_batch, torch.is_inference_mode_enabled())
    key = (step_key, saved_dir)  # the kept step's: a saved and a traced step of one key are two
    if _kept["key"] == key and not _kept["retraced"]:
        return _kept["fn"], True
    torch._dynamo.reset()
    if saved_dir is not None:
        fn = SavedStep(Path(saved_dir) / saved_step_name(step_key), dynamic_batch, options)
        _kept.update(key=key, fn=fn, retraced=False, paths=None)
        return fn, False
    # inductor without its own CUDA graphs: the backend captures the compiled step itself
    # fullgraph: one compiled graph for the whole step, or an error (a graph break would leave parts of the step
    # to run eagerly, each recompiled per layer until dynamo's limit, and say nothing)
    # dynamic: only the dimensions the backend marks (graph.GraphBackend._mark_dynamic_batch); the rest stay static
    fn = torch.compile(decode_step, dynamic=None if dynamic_batch else False, fullgraph=True,
                       options=options or None)
    _kept.update(key=key, fn=fn, retraced=False, paths=None)
    return fn, False


def import_compiler() -> None:
    """Import torch's compiler and the runtime a compiled or loaded step runs on (dynamo, inductor, their code
    cache): what a process pays once, at its first compiled step (on CUDA already at dynamo's first reset, which
    imports inductor's CUDA graph trees). A measuring process of a compiling backend pays it in its start-up."""
    import torch._inductor.compile_fx  # noqa: F401 - most of what a compile or a load imports


def engine_source_hash() -> str:
    """A hash of this package's engine code (every module of engine/): what a compiled step traces besides
    transformers' model code."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def saved_step_name(key: tuple) -> str:
    """The saved step's file name: a hash of the step's key (compiled_step), the engine code and the versions."""
    raw = repr((key, engine_source_hash(), platform.python_version(), sorted(versions().items())))
    return f"step-{hashlib.sha256(raw.encode()).hexdigest()[:24]}.bin"


class SavedStep:
    """decode_step compiled ahead of time by dynamo (``aot_compile``, fullgraph) and saved to `path`, or loaded
    from it; a loaded step runs without tracing the model. Either happens at the first call, which takes the step's
    real arguments (the compile needs them as its example). `source` says which: "loaded", "compiled and saved",
    or "compiled and saved again" where the file did not load (`load_error` says why; the new file replaces it).
    A loaded step whose guards do not hold for the arguments raises at the call (its key missed something).
    before_compile: called just before a compile (the backend marks the dynamic batch there: a loaded step's
    guards fail on marked tensors, and a compiled one's accept them unmarked)."""

    def __init__(self, path: Path, dynamic_batch: bool, options: dict):
        self.path, self.dynamic_batch, self.options = Path(path), dynamic_batch, dict(options or {})
        self.fn = None
        self.source: str | None = None
        self.load_error: str | None = None
        self.before_compile = None

    def __call__(self, *args):
        if self.fn is None:
            self._load_or_compile(args)
        return self.fn(*args)

    def _load_or_compile(self, args) -> None:
        import torch

        if self.path.exists():
            try:
                with open(self.path, "rb") as f:
                    self.fn = torch.compiler.load_compiled_function(f)
                self.source = "loaded"
                return
            except Exception as exc:  # noqa: BLE001 - a file that does not load is compiled again, and named
                self.load_error = f"{type(exc).__name__}: {exc}"[:500]
        if self.before_compile is not None:
            self.before_compile()
        torch._dynamo.config.enable_aot_compile = True  # off by default before torch 2.13
        # the guards that can be saved: the rest of what the code depends on is in the file's name
        options = {**self.options, "guard_filter_fn": torch.compiler.keep_portable_guards_unsafe}
        compiled = torch.compile(decode_step, dynamic=None if self.dynamic_batch else False, fullgraph=True,
                                 options=options)
        self.fn = compiled.aot_compile((args, {}))
        with atomic.replacing(self.path) as tmp:  # whole or not at all; a concurrent writer's file is the same step
            self.fn.save_compiled_function(str(tmp))
        self.source = "compiled and saved again" if self.load_error else "compiled and saved"


def forget_compiled_step() -> None:
    """Drop the process's kept compiled step and dynamo's compiled code: the next compiled backend traces anew."""
    import torch

    _kept.update(key=None, fn=None, retraced=False, paths=None)
    torch._dynamo.reset()


def compiled_step_key() -> tuple | None:
    """The key of the process's kept compiled step (None: none kept)."""
    return _kept["key"]


def keep_step_paths(paths: dict) -> None:
    """Keep, with the process's compiled step, the paths its Python took on one step as Python runs it (a backend's
    PathProbe counts), for the later backends that run the kept step."""
    _kept["paths"] = dict(paths)


def kept_step_paths() -> dict | None:
    """The paths kept with the process's compiled step (keep_step_paths; None: none kept). A backend whose key is
    the kept step's has the same model class, architecture, changes and options, so its step's Python takes the
    same paths; the compiled code it runs was made from that Python."""
    return None if _kept["paths"] is None else dict(_kept["paths"])


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
