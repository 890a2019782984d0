"""A sweep table cut into series (model, dtype, backend) along its axis; shared by tables, findings and figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
from dataclasses import dataclass, field
from typing import Any, Iterable

from latency_sensitivity.report.format import _clean, _isnan, _pct, format_axis_value
from latency_sensitivity.vocabulary import AXES




SERIES_KEYS = ("model", "dtype", "backend")


FAILED = ("oom", "error")


@dataclass
class SweepInput:
    """One sweep to report: its name, axis ("seq_len", "batch" or "grid"), merged frame and figures.

    ``figures`` holds (caption, path) pairs; the path is relative to the report's folder.
    """

    name: str
    axis: str
    frame: pd.DataFrame
    figures: list[tuple[str, str]] = field(default_factory=list)


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, or all NaN when the frame lacks it."""
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce").astype(float)


def _text(frame: pd.DataFrame, name: str) -> pd.Series:
    """A text column with missing values as "", or all "" when the frame lacks it."""
    if name not in frame.columns:
        return pd.Series([""] * len(frame), index=frame.index, dtype=object)
    return frame[name].map(lambda v: "" if _isnan(v) else str(v)).astype(object)


def cell_outcome(frame: pd.DataFrame) -> pd.Series:
    """Per row: "oom" or "error" for a failed cell (status first, then flag), else the flag ("ok", "collapse")."""
    status = _text(frame, "status").str.strip().str.lower()
    flag = _text(frame, "flag").str.strip().str.lower()
    out = flag.where(flag != "", "ok")
    failed_status = status.isin(FAILED)
    out = out.where(~failed_status, status)
    return out.astype(object)


def memory_mib(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Memory per row: vram_reserved_mb where it is nonzero, else peak_rss_mb; and its source ("vram"/"rss"/"")."""
    vram = _col(frame, "vram_reserved_mb")
    rss = _col(frame, "peak_rss_mb")
    use_vram = vram.notna() & (vram > 0)
    use_rss = ~use_vram & rss.notna()
    values = vram.where(use_vram, rss.where(use_rss, vram))
    source = pd.Series("", index=frame.index, dtype=object)
    source[use_vram] = "vram"
    source[use_rss] = "rss"
    source[~use_vram & ~use_rss & vram.notna()] = "vram"
    return values, source


def _memory_label(sources: Iterable[str]) -> str:
    kinds = {s for s in sources if s}
    if kinds == {"rss"}:
        return "peak RSS"
    if kinds == {"vram", "rss"}:
        return "VRAM reserved / peak RSS"
    return "VRAM reserved"


def _series_key_columns(frame: pd.DataFrame) -> list[str]:
    return [k for k in SERIES_KEYS if k in frame.columns]


def _fixed_columns(frame: pd.DataFrame, axis: str) -> list[str]:
    """For a 1-D sweep, the other axis column when it takes several values (each value is its own series)."""
    if axis == "seq_len":
        other = "batch"
    elif axis == "batch":
        other = "seq_len"
    else:
        return []
    if other in frame.columns and frame[other].nunique(dropna=True) > 1:
        return [other]
    return []


def split_series(frame: pd.DataFrame, axis: str) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """(key, rows sorted along the axis) per series: model, dtype, backend (and the fixed axis if it varies)."""
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r}; expected one of {AXES}")
    keys = _series_key_columns(frame) + _fixed_columns(frame, axis)
    sort_cols = ["seq_len", "batch"] if axis == "grid" else [axis]
    sort_cols = [c for c in sort_cols if c in frame.columns]
    if not keys:
        groups: list[tuple[dict[str, Any], pd.DataFrame]] = [({}, frame)]
    else:
        work = frame.copy()
        for k in keys:
            if k in SERIES_KEYS:
                work[k] = _text(work, k)
        groups = []
        for values, sub in work.groupby(keys, sort=True, dropna=False):
            if not isinstance(values, tuple):
                values = (values,)
            groups.append((dict(zip(keys, values)), frame.loc[sub.index]))
    out = []
    for key, sub in groups:
        if sort_cols:
            sub = sub.sort_values(sort_cols, kind="stable")
        out.append((key, sub.reset_index(drop=True)))
    return out


def series_label(key: dict[str, Any]) -> str:
    parts = [str(key[k]) for k in SERIES_KEYS if k in key and str(key[k])]
    label = " · ".join(parts) if parts else "all cells"
    for k in ("batch", "seq_len"):
        if k in key:
            label += f" · {k} = {format_axis_value(key[k])}"
    return label


def _cell_where(row: pd.Series, axis: str, with_name: bool = True) -> str:
    if axis == "grid":
        return f"seq_len {format_axis_value(row.get('seq_len'))}, batch {format_axis_value(row.get('batch'))}"
    v = format_axis_value(row.get(axis))
    return f"{axis} {v}" if with_name else v


def _where(row: pd.Series, phase: str) -> str:
    """The phase's regime (launch-, memory- or compute-bound) where measured, else its roofline bound."""
    regime = row.get(f"{phase}_regime")
    if isinstance(regime, str) and regime:
        busy = row.get(f"{phase}_gpu_busy")
        return f"{regime} (GPU busy {_pct(busy)})" if not _isnan(busy) else regime
    return _clean(row.get(f"{phase}_bound"))


ANATOMY_STAGES = (("tokenise", "tokenize_p50_ms"), ("prefill (TTFT)", "ttft_p50_ms"), ("decode", None),
                  ("detokenise", "detokenize_p50_ms"))


def anatomy_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Per ok cell: the request's stages in ms (decode = e2e - TTFT) and the whole request, text to text."""
    needed = {"tokenize_p50_ms", "detokenize_p50_ms", "ttft_p50_ms", "e2e_p50_ms"}
    if not needed <= set(frame.columns):
        return pd.DataFrame()
    ok = frame[~cell_outcome(frame).isin(FAILED)]
    out = pd.DataFrame({
        "tokenise": _col(ok, "tokenize_p50_ms"),
        "prefill (TTFT)": _col(ok, "ttft_p50_ms"),
        "decode": _col(ok, "e2e_p50_ms") - _col(ok, "ttft_p50_ms"),
        "detokenise": _col(ok, "detokenize_p50_ms"),
    })
    out = out.dropna()
    out["request"] = out.sum(axis=1)
    return out
