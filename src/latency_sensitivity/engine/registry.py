"""Backends by name, set up for one cell; a backend whose setup fails is closed, leaving the model as it was."""

from __future__ import annotations

import time

from latency_sensitivity.engine.base import Backend
from latency_sensitivity.engine.eager import EagerBackend
from latency_sensitivity.engine.graph import CompiledBackend, GraphBackend
from latency_sensitivity.vocabulary import BACKENDS


def make(name: str, model, prompt, gen_tokens: int, clock, **options) -> Backend:
    """The backend `name` for this cell, set up (its `setup_s` timed here, device work included).

    options: the graph and compiled backends' keyword options (capture, fuse_norms, pack_gqa, ...)."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        if name == "eager":
            if options:
                raise ValueError(f"the eager backend takes no options (given: {', '.join(options)})")
            backend: Backend = EagerBackend(model)
        elif name in ("graph", "compiled"):
            cls = {"graph": GraphBackend, "compiled": CompiledBackend}[name]
            backend = cls(model, batch=prompt.shape[0], seq_len=prompt.shape[1], gen_tokens=gen_tokens, **options)
            try:
                backend.setup(prompt)
            except BaseException:
                backend.close()  # leave the model as it was (projections, attention, compiled code)
                raise
        else:
            raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    clock.sync()
    backend.setup_s = time.perf_counter() - t0
    return backend
