"""NVTX ranges (and torch.profiler record_function ranges) around a request's phases, for nsys and ncu."""

from __future__ import annotations

import contextlib
from typing import Any


NVTX_DOMAIN = "latency_sensitivity"


# Set by the runner while torch.profiler records: phase ranges then also become record_function ranges.
RECORD_FUNCTION_RANGES = False


def nvtx_range(name: str) -> Any:
    """A context manager marking `name` as an NVTX range in domain ``latency_sensitivity``.

    Uses ``nvtx.annotate`` when the `nvtx` package can be imported, else does nothing, so CPU machines
    without it work unchanged. While ``RECORD_FUNCTION_RANGES`` is set the same range is also a
    ``torch.profiler.record_function``, so a torch trace carries the phases too.
    Usage: ``with nvtx_range("rep0.prefill"): ...``.
    """
    try:
        import nvtx  # type: ignore[import-not-found]

        annotation = nvtx.annotate(name, domain=NVTX_DOMAIN)
    except Exception:  # ImportError, a blocked import, or a broken nvtx build
        annotation = contextlib.nullcontext()
    if not RECORD_FUNCTION_RANGES:
        return annotation
    from torch.profiler import record_function

    stack = contextlib.ExitStack()
    stack.enter_context(annotation)
    stack.enter_context(record_function(name))
    return stack
