"""Merge per-cell result files into one table per sweep (the reference study's columns first)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from latency_sensitivity.columns import REFERENCE_NAMES, order_columns

if TYPE_CHECKING:  # pandas is imported where a table is built or read
    import pandas as pd

IDENTITY = ("model", "dtype", "backend", "device", "device_name", "attn_implementation",
            "gen_tokens", "warmup", "reps", "status", "error")


def cell_row(result: dict) -> dict:
    """One CSV row from a per-cell result (see runner.py for its layout)."""
    cell = result["cell"]
    row = {
        "seq_len": cell["seq_len"],
        "batch": cell["batch"],
        "model": cell["model"],
        "dtype": cell["dtype"],
        "backend": cell["backend"],
        "device": cell.get("device"),
        "device_name": result.get("environment", {}).get("device_name"),
        "attn_implementation": cell.get("attn_implementation"),
        "gen_tokens": cell.get("gen_tokens"),
        "warmup": cell.get("warmup"),
        "reps": cell.get("reps"),
        "status": result["status"],
        "error": (result.get("error") or {}).get("message", "") if result["status"] != "ok" else "",
    }
    for key, value in result.get("metrics", {}).items():
        row.setdefault(key, value)
    return row


def roofline_row(result: dict, ceilings: dict | None) -> dict:
    """Floors, bounds and efficiencies of one ok cell against the measured ceilings of its device and dtype."""
    from latency_sensitivity.analysis import roofline

    if result["status"] != "ok" or not ceilings or "architecture" not in result:
        return {}
    cell, m = result["cell"], result["metrics"]
    try:
        arch = roofline.Architecture.from_config(result["architecture"])
    except ValueError as exc:  # an architecture the roofline model does not cover
        return {"roofline_note": str(exc)}
    row = roofline.cell_roofline(
        arch, cell["dtype"], cell["seq_len"], cell["batch"], cell["gen_tokens"], ceilings,
        prefill_p50_ms=m.get("prefill_p50_ms"), decode_p50_ms_per_tok=m.get("decode_p50_ms_per_tok"),
    )
    row.update(roofline.peak_floors(arch, cell["dtype"], cell["seq_len"], cell["batch"], cell["gen_tokens"],
                                    ceilings.get("peak")))
    for phase in ("prefill", "decode"):
        busy = m.get(f"{phase}_gpu_busy")
        row[f"{phase}_regime"] = roofline.regime(busy, row.get(f"{phase}_bound"))
    beaten = [phase for phase in ("prefill", "decode") if (row.get(f"{phase}_efficiency") or 0) > 1.0]
    if beaten:
        row["roofline_note"] = f"measured faster than the floor in {', '.join(beaten)}: check the ceilings"
    return row


class UnreadableCell(ValueError):
    """A cell's result file that cannot be read as a result; the message names the file and the remedy."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(
            f"{path} is not a readable cell result ({problem}). It was cut short or edited by hand; make it "
            f"again: delete it and rerun `snakemake all` (a replicate file is measured again, a cell file is "
            f"combined again from its replicates; nothing else), or run `snakemake all --forcerun {path}`."
        )


def cell_problem(path: str | Path) -> str | None:
    """Why a cell's result file cannot be read (None when it can); a missing file is not a problem here."""
    try:
        read_cell(path)
    except UnreadableCell as exc:
        return exc.problem
    except FileNotFoundError:
        return None
    return None


def read_cell(path: str | Path) -> dict:
    """One cell's result (runner.py's layout); UnreadableCell when it is not valid JSON or not a result."""
    result = read_result(path, ("cell", "status"))
    if not isinstance(result["cell"], dict):
        raise UnreadableCell(path, "'cell' is not an object")
    return result


def read_result(path: str | Path, keys: Sequence[str] = ("status",)) -> dict:
    """A result file (a cell's, or a loading measurement's) as a JSON object with these keys; UnreadableCell
    naming the file when it is not one. A missing file raises FileNotFoundError."""
    try:
        with open(path, encoding="utf-8") as fh:
            result = json.load(fh)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableCell(path, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(result, dict):
        raise UnreadableCell(path, f"a JSON {type(result).__name__}, not an object")
    missing = [key for key in keys if key not in result]
    if missing:
        raise UnreadableCell(path, f"no {' or '.join(repr(k) for k in missing)} key")
    return result


def load_results(paths: Iterable[str | Path]) -> list[dict]:
    return [read_cell(p) for p in paths]


def merge(results: list[dict], sweep: str | None = None, ceilings: dict | None = None) -> pd.DataFrame:
    """A table of cells sorted along the sweep; `flag` starts as the cell status (collapse.py refines it).

    ceilings: {(device, dtype): {"bandwidth_gb_s", "matmul_tflops", ...}} from the calibration step; cells
    with ceilings get roofline columns.
    """
    import pandas as pd  # here, not at the top: reading cells (a Snakefile, combine jobs) needs no pandas

    ceilings = ceilings or {}
    rows = []
    for r in results:
        row = cell_row(r)
        row.update(roofline_row(r, ceilings.get((r["cell"].get("device"), r["cell"]["dtype"]))))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=REFERENCE_NAMES)
    if sweep is not None:
        frame.insert(0, "sweep", sweep)
    frame["flag"] = frame["status"].where(frame["status"] != "ok", "ok")
    for name in REFERENCE_NAMES:
        if name not in frame.columns:
            frame[name] = math.nan
    frame = frame.sort_values(["model", "dtype", "backend", "batch", "seq_len"], kind="stable")
    return frame[order_columns(list(frame.columns))].reset_index(drop=True)
