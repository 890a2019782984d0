"""Which code paths a backend's steps took: a backend claims paths (rewritten layers, GEMV routing, packed GQA, capture, compile) and checks during its setup that each of them ran."""

from __future__ import annotations

import sys


_probe: dict | None = None  # the armed probe's counts, None while no backend is setting up


class PathNotTaken(RuntimeError):
    """A code path a backend claims did not run (the message names it and the versions)."""


def probe_hit(name: str, n: int = 1) -> None:
    """Count one run of the code path `name` in the armed probe (none armed, or inside a trace: nothing)."""
    import torch

    # compiling first: dynamo folds it to True and leaves the rest out of the traced step
    if not torch.compiler.is_compiling() and _probe is not None:
        _probe[name] = _probe.get(name, 0) + n


class PathProbe:
    """Arms the counts of probe_hit for a `with` block: `counts` holds, per path, how often it ran."""

    def __init__(self):
        self.counts: dict = {}

    def __enter__(self):
        global _probe
        if _probe is not None:
            raise RuntimeError("a path probe is armed already")
        _probe = self.counts
        return self

    def __exit__(self, *exc):
        global _probe
        _probe = None
        return False


def versions_text() -> str:
    return ", ".join(f"{k} {v}" for k, v in versions().items())


def dist_version(name: str) -> str | None:
    """Installed version of distribution `name` without importing it (snakemake is slow to import)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except Exception:  # noqa: BLE001
        return None


def module_version(module: str, dist: str | None = None) -> str | None:
    """Version of an already importable module, else of its installed distribution."""
    mod = sys.modules.get(module)
    v = getattr(mod, "__version__", None) if mod is not None else None
    return str(v) if v else dist_version(dist or module)


def versions() -> dict[str, str | None]:
    """The versions the measured code paths depend on: torch, transformers and triton (None: not installed)."""
    torch = sys.modules.get("torch")
    return {
        "torch": str(torch.__version__) if torch is not None else dist_version("torch"),
        "transformers": module_version("transformers"),
        # triton comes with torch's CUDA builds (pytorch-triton on some); not importing it keeps this cheap
        "triton": module_version("triton") or dist_version("pytorch-triton"),
    }
