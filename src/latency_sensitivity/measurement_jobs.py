"""How the workflow turns a validated config into measurement jobs: the settings each job's numbers depend on
(its rerun trigger) and the order the jobs run in (their Snakemake priority)."""

from __future__ import annotations

import functools
from pathlib import Path

from latency_sensitivity.config import SCHEMA_PATH, load_schema
from latency_sensitivity.vocabulary import COMPILING_BACKENDS, COMPILING_SETTINGS, Cell


# Marks in the descriptions of the schema's measure.* keys, read by measurement_settings.
NOT_A_MEASUREMENT = "Does not change a cell's numbers"
COMPILED_ONLY = "Changes the compiled backend's cells only"
CUDA_ONLY = "Changes cells measured on CUDA only"
# measure.* keys that name the cells (the wildcards), and replicates, which names the replicate files (r1..rK).
CELL_NAMING_KEYS = frozenset({"models", "dtypes", "backends", "replicates"})


def measurement_settings(measure: dict, backend: str, schema_path: Path | str = SCHEMA_PATH) -> dict:
    """The measure.* settings a cell of `backend` depends on besides its wildcards (the rerun trigger of a
    measurement job): all but the keys that name the cells, those whose schema description says they do not
    change a cell's numbers (NOT_A_MEASUREMENT), for a backend that does not compile, those that change the
    compiled backend's cells only (COMPILED_ONLY), and off CUDA, those that change CUDA cells only (CUDA_ONLY)."""
    described = _measure_descriptions(str(schema_path))
    return {key: value for key, value in measure.items()
            if key not in CELL_NAMING_KEYS and NOT_A_MEASUREMENT not in described.get(key, "")
            and (backend in COMPILING_BACKENDS or COMPILED_ONLY not in described.get(key, ""))
            and (measure.get("device") == "cuda" or CUDA_ONLY not in described.get(key, ""))}


def compiling_setting(measure: dict, backend: str, name: str) -> str:
    """The runner's option `name` (a key of COMPILING_SETTINGS: compile_shapes, compiled_step) for a cell:
    measure's value where the backend compiles, else the value every other cell runs with."""
    return measure[name] if backend in COMPILING_BACKENDS else COMPILING_SETTINGS[name]


def placement(measure: dict) -> str:
    """The runner's --placement for a cell: measure.placement on CUDA, else fixed (nothing is moved on the CPU)."""
    return measure["placement"] if measure.get("device") == "cuda" else "fixed"


@functools.lru_cache(maxsize=None)
def _measure_descriptions(schema_path: str) -> dict[str, str]:
    """{measure key: its schema description}, read once per schema (the rerun trigger is asked for every job)."""
    return {key: sub.get("description", "")
            for key, sub in load_schema(schema_path)["properties"]["measure"]["properties"].items()}


def measurement_order(cells: list[Cell], replicates: int) -> dict[tuple[Cell, int], int]:
    """The Snakemake priority of each (cell, replicate) job: higher runs first.

    Every cell's first replicate runs before any cell's second (slow drift of the machine spreads over all
    cells); within a replicate, the cells of one model, dtype and backend run one after another (one shared
    worker serves them without restarting); and the cells of a worker run in the configured order in odd
    replicates and in reverse order in even ones, so that a cell is measured early in one process and late in
    another, and its replicate spread includes any effect of the cells measured before it.
    """
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.dtype, cell.backend), []).append(cell)
    n = len(cells)
    order = {}
    for r in range(1, replicates + 1):
        rank = 0
        for members in groups.values():
            for cell in (members if r % 2 else list(reversed(members))):
                order[(cell, r)] = (replicates - r + 1) * (n + 1) - rank
                rank += 1
    return order
