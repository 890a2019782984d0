"""The cell the sweep-cost studies measure in one process: benchmarks/replicates/'s model and settings (the
Qwen2.5-3B architecture with random fp16 weights, on CUDA, gen 32, warmup 3, reps 7). The scripts beside this
file import it (run as `python3 benchmarks/sweep_cost/<script>.py`, their folder is on the import path)."""

from __future__ import annotations

from pathlib import Path

ARCHITECTURE = Path(__file__).resolve().parents[2] / "src" / "latency_sensitivity" / "data" / "models" / "qwen2.5-3b.json"


def cell_spec(backend: str, batch: int, seq: int = 128):
    """The runner's CellSpec of the study cell."""
    from latency_sensitivity.measure.model import CellSpec

    return CellSpec(model="qwen2.5-3b", model_kind="architecture", model_location=str(ARCHITECTURE), dtype="fp16",
                    backend=backend, device="cuda", attn_implementation="sdpa", seq_len=seq, batch=batch,
                    gen_tokens=32, warmup=3, reps=7, seed=0, threads=1)


def build_backend(spec, clock):
    """(model, prompt, backend) of a spec, built as the runner builds them."""
    from latency_sensitivity.engine import registry
    from latency_sensitivity.measure.model import build_model, make_prompt, model_config

    model = build_model(spec, model_config(spec))
    prompt = make_prompt(spec, model.config.vocab_size)
    return model, prompt, registry.make(spec.backend, model, prompt, spec.gen_tokens, clock)


def each_cell(args, measure) -> list[dict]:
    """Build the cell of each backend and batch of the options in turn (on CUDA, torch's ptxas chosen first, as in
    a measuring process), call measure(spec, prompt, backend, clock) on it and collect the rows it returns. Each
    cell's backend is closed and its model dropped, and the freed memory handed back to the driver, before the
    next is built: where a model lands in device memory changes its speed (NOTES.md)."""
    import torch

    from latency_sensitivity.engine.base import Clock
    from latency_sensitivity.measure import compile_cache

    compile_cache.configure(None, "cuda")
    clock = Clock(True)
    rows: list[dict] = []
    for backend_name in args.backends.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            spec = cell_spec(backend_name, batch, args.seq)
            model, prompt, backend = build_backend(spec, clock)
            rows += measure(spec, prompt, backend, clock)
            backend.close()
            del backend, model
            torch.cuda.empty_cache()
    return rows


def by_way(rows: list[dict], ways) -> list[tuple[tuple, list[dict]]]:
    """The rows grouped by (backend, batch, way), in backend, batch and `ways` order."""
    order = list(ways)
    keys = sorted({(r["backend"], r["batch"], r["way"]) for r in rows}, key=lambda k: (k[0], k[1], order.index(k[2])))
    return [(key, [r for r in rows if (r["backend"], r["batch"], r["way"]) == key]) for key in keys]


def print_way_table(rows: list[dict], ways, columns) -> None:
    """A markdown table of the rows, one line per (backend, batch, way) (by_way). columns: (header, cell) pairs,
    cell(rows of the line, col) giving the text, where col(name, fmt) is the span of that field."""
    print("| backend | batch | way | " + " | ".join(header for header, _ in columns) + " |")
    print("|---|---:|---|" + "---|" * len(columns))
    for key, sel in by_way(rows, ways):
        def col(name, fmt, sel=sel):
            return span([r.get(name) for r in sel], fmt)

        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cell(sel, col) for _, cell in columns) + " |")


def span(values, fmt: str) -> str:
    """median (min-max) of the values that are numbers, or '-'."""
    import math
    import statistics

    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    return f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


def add_cell_arguments(parser) -> None:
    """The one-process studies' common options: which cells, how many rounds, where to write every round."""
    parser.add_argument("--backends", default="graph,eager")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every round here")

