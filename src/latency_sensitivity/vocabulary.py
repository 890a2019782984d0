"""The names every layer shares, defined once: backends, dtypes, sweep axes, and the cell with the paths of its result files."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


DTYPES = ("fp32", "fp16", "bf16")

# The architecture keys that describe a model in the report's settings.
ARCHITECTURE_SUMMARY = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
                        "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings")

# A sweep varies seq_len (at fixed batch sizes), batch (at fixed sequence lengths), or both (a grid).
LINE_AXES = ("seq_len", "batch")
AXES = LINE_AXES + ("grid",)
# Along one axis of a sweep, the other is held fixed.
OTHER_AXIS = {"seq_len": "batch", "batch": "seq_len"}


class Cell(NamedTuple):
    """One measurement job: everything that identifies a result file. (A named tuple, not a dataclass: a cell job
    handed to a worker imports this module, and the dataclasses module's imports would be most of its start.)"""

    model: str
    dtype: str
    backend: str
    seq: int
    batch: int

    @property
    def path(self) -> str:
        return cell_path(self.model, self.dtype, self.backend, self.seq, self.batch)

    def replicate_paths(self, replicates: int) -> list[str]:
        """The result files of the cell's replicates 1..replicates (each measured in a process of its own)."""
        return [replicate_path(self.model, self.dtype, self.backend, self.seq, self.batch, k)
                for k in range(1, replicates + 1)]


def cell_path(model: str, dtype: str, backend: str, seq: int | str, batch: int | str) -> str:
    return f"results/cells/{model}/{dtype}/{backend}/seq{seq}_batch{batch}.json"


def replicate_path(model: str, dtype: str, backend: str, seq: int | str, batch: int | str,
                   replicate: int | str) -> str:
    return f"results/cells/{model}/{dtype}/{backend}/seq{seq}_batch{batch}/r{replicate}.json"


def profile_stem(cell: Cell) -> str:
    """The part of a profile artifact's path that names its cell."""
    return f"{cell.model}/{cell.dtype}/{cell.backend}/seq{cell.seq}_batch{cell.batch}"


BACKENDS = ("eager", "graph", "compiled")

# How cells share processes: each in its own (process), or served by a worker per model, dtype, backend,
# device and replicate that has paid the start-up once (shared; measure/worker.py), the workers started as fresh
# interpreters (shared) or forked from a server that has made their imports once (forked; measure/fork_server.py).
ISOLATIONS = ("process", "shared", "forked")
# The isolations whose cells a measurement worker measures.
WORKER_ISOLATIONS = ("shared", "forked")

# How the compiled backend compiles its decode step at batch 2 and more: for each batch size's own shapes
# (static), or once with the batch as a dynamic dimension that every batch size shares (dynamic_batch).
COMPILE_SHAPES = ("static", "dynamic_batch")
# Where a measuring process gets the compiled decode step: compiled ahead of time once per step and saved under
# the compile cache, then loaded without tracing the model (saved; engine/decode_step.SavedStep), or traced by
# torch.compile in each process, inductor's cache serving the kernels (traced).
COMPILED_STEPS = ("saved", "traced")
# Where a cell's model and cache land in device memory: as a fresh process allocates them, the same every time
# (fixed), or moved by a buffer held while they are allocated whose size depends on the replicate (by_replicate;
# measure/placement.py), so that replicates sample placement.
PLACEMENTS = ("fixed", "by_replicate")
# The backends that compile their decode step, and so the cells measure.compile_shapes and compiled_step apply to.
COMPILING_BACKENDS = ("compiled",)
# Those settings, with the value every other cell runs with: the runner's default, and what a cell recorded before
# the setting existed did.
COMPILING_SETTINGS = {"compile_shapes": "static", "compiled_step": "traced"}
# What profiles a cell's process: nothing but its own kernel-time sessions (off, a measurement), nsys or ncu
# wrapping it (external), or torch.profiler around its measured reps (torch; measure/probes.py).
PROFILE_MODES = ("off", "external", "torch")
# The version of a cell's result file layout (measure/runner.py).
CELL_SCHEMA_VERSION = 1


# One line per backend, for help texts and the column documentation.
DESCRIPTIONS = {
    "eager": "transformers with its dynamic KV cache, one Python-launched forward per decode step",
    "graph": "static KV cache; the decode step replayed as a CUDA graph, on the CPU run uncaptured",
    "compiled": "graph, with q/k/v and gate/up each one GEMM; at batch 1 the decoder layers rewritten around "
                "Triton kernels (GEMV, q/k/v with rotation and cache write, decode attention), elsewhere the step "
                "compiled by torch.compile before capture",
}


def describe(markdown: bool = False) -> str:
    """The backends and what each is, in one sentence part (`markdown`: names as code)."""
    return "; ".join(f"`{name}` ({text})" if markdown else f"{name}: {text}" for name, text in DESCRIPTIONS.items())


def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json a configured tokenizer path means: the file itself, or the one in a folder."""
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path
