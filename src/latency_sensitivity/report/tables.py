"""The report's per-series tables: prefill, decode, grid, roofline and request anatomy, with their notes."""

from __future__ import annotations

import pandas as pd
from typing import Any, Iterable, Sequence

from latency_sensitivity.report.format import _clean, _escape, _isnan, _pct, _shorten, _span, fmt_mib, fmt_ms, fmt_ms_per_tok, fmt_tok_s, format_axis_value, format_number, format_sig, markdown_table
from latency_sensitivity.report.series import ANATOMY_STAGES, FAILED, _cell_where, _col, _memory_label, _where, anatomy_rows, cell_outcome, memory_mib


class _Notes:
    """Numbered notes under a table: error text of failed cells, detail of collapse cells.

    Cells with the same note text share one number: ``1. batch 128, 256: OOM: CUDA out of memory ...``.
    """

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.wheres: list[list[str]] = []

    @property
    def items(self) -> list[str]:
        return [f"{self._where(w)}: {b}" for b, w in zip(self.bodies, self.wheres)]

    @staticmethod
    def _where(wheres: list[str]) -> str:
        heads = {w.split(" ", 1)[0] for w in wheres}
        if len(heads) == 1 and all(" " in w and "," not in w for w in wheres):
            return f"{heads.pop()} " + ", ".join(w.split(" ", 1)[1] for w in wheres)
        return "; ".join(wheres)

    def add(self, body: str, where: str) -> str:
        if body in self.bodies:
            i = self.bodies.index(body)
            if where not in self.wheres[i]:
                self.wheres[i].append(where)
        else:
            self.bodies.append(body)
            self.wheres.append([where])
            i = len(self.bodies) - 1
        return f"[{i + 1}]"

    def render(self) -> str:
        return "\n".join(f"{i}. {_escape(t)}" for i, t in enumerate(self.items, 1))


def _failure_label(outcome: str) -> str:
    return "OOM" if outcome == "oom" else "error"


def _note_for(row: pd.Series, outcome: str) -> str | None:
    """The note text of a failed or collapsed cell (without the cell's position)."""
    if outcome in FAILED:
        err = _clean(row.get("error", ""))
        if not err:
            err = "out of memory (no error text recorded)" if outcome == "oom" else "no error text recorded"
        return f"{_failure_label(outcome)}: {_shorten(err)}"
    if outcome == "collapse":
        detail = _clean(row.get("flag_detail", "")) or "no flag_detail recorded"
        return f"collapse: {detail}"
    return None


def _metric_cells(row: pd.Series, outcome: str, specs: Sequence[tuple[Any, Any]], notes: _Notes,
                  where: str) -> list[str]:
    """Formatted metric cells; a failed cell shows OOM/error in each, with a note marker on the first."""
    if outcome in FAILED:
        label = _failure_label(outcome)
        note = _note_for(row, outcome)
        marker = notes.add(note, where) if note else ""
        return [f"{label} {marker}".strip()] + [label] * (len(specs) - 1)
    return [fmt(val) for val, fmt in specs]


def _flag_cell(row: pd.Series, outcome: str, notes: _Notes, where: str) -> str:
    note = _note_for(row, outcome)
    if note is None:
        return outcome
    return f"{outcome} {notes.add(note, where)}"


def _memory_header(sources: Iterable[str]) -> str:
    return f"{_memory_label(sources)} (MiB)"


def prefill_table(frame: pd.DataFrame, axis: str, notes: _Notes | None = None) -> str:
    """The "Prefill + memory" table of one 1-D series."""
    frame = frame.reset_index(drop=True)
    notes = notes if notes is not None else _Notes()
    out = cell_outcome(frame)
    mem, source = memory_mib(frame)
    has_ttft = "ttft_p50_ms" in frame.columns
    headers = [axis, "prefill p50 (ms)", "prefill (ms/token)", "prefill (tok/s)",
               _memory_header(source[~out.isin(FAILED)])]
    if has_ttft:
        headers.append("TTFT p50 (ms)")
    pf, pmt, pts, ttft = (_col(frame, c) for c in ("prefill_p50_ms", "prefill_ms_per_tok", "prefill_tok_s",
                                                   "ttft_p50_ms"))
    rows = []
    for idx, row in frame.iterrows():
        where = _cell_where(row, axis)
        specs = [(pf[idx], fmt_ms), (pmt[idx], fmt_ms_per_tok), (pts[idx], fmt_tok_s), (mem[idx], fmt_mib)]
        if has_ttft:
            specs.append((ttft[idx], fmt_ms))
        rows.append([format_axis_value(row.get(axis))] + _metric_cells(row, out[idx], specs, notes, where))
    return markdown_table(headers, rows, [True] * len(headers))


def decode_table(frame: pd.DataFrame, axis: str, notes: _Notes | None = None) -> str:
    """The "Decode + throughput" table of one 1-D series."""
    frame = frame.reset_index(drop=True)
    notes = notes if notes is not None else _Notes()
    out = cell_outcome(frame)
    has_tpot = "tpot_p50_ms" in frame.columns
    headers = [axis, "decode p50 (ms/step)", "decode (tok/s)", "total (tok/s)"]
    if has_tpot:
        headers.append("TPOT p50 (ms)")
    headers.append("flag")
    dms, dts, tts, tpot = (_col(frame, c) for c in ("decode_p50_ms_per_tok", "decode_tok_s", "total_tok_s",
                                                    "tpot_p50_ms"))
    rows = []
    for idx, row in frame.iterrows():
        where = _cell_where(row, axis)
        specs = [(dms[idx], fmt_ms_per_tok), (dts[idx], fmt_tok_s), (tts[idx], fmt_tok_s)]
        if has_tpot:
            specs.append((tpot[idx], fmt_ms))
        cells = _metric_cells(row, out[idx], specs, notes, where)
        rows.append([format_axis_value(row.get(axis))] + cells + [_flag_cell(row, out[idx], notes, where)])
    return markdown_table(headers, rows, [True] * (len(headers) - 1) + [False])


def grid_table(frame: pd.DataFrame, notes: _Notes | None = None) -> str:
    """One compact table of a grid series, seq_len and batch both as columns."""
    frame = frame.reset_index(drop=True)
    notes = notes if notes is not None else _Notes()
    out = cell_outcome(frame)
    mem, source = memory_mib(frame)
    headers = ["seq_len", "batch", "prefill p50 (ms)", "prefill (ms/token)", "decode p50 (ms/step)",
               "decode (tok/s)", "total (tok/s)", _memory_header(source[~out.isin(FAILED)]), "flag"]
    cols = {c: _col(frame, c) for c in ("prefill_p50_ms", "prefill_ms_per_tok", "decode_p50_ms_per_tok",
                                        "decode_tok_s", "total_tok_s")}
    rows = []
    for idx, row in frame.iterrows():
        where = _cell_where(row, "grid")
        specs = [(cols["prefill_p50_ms"][idx], fmt_ms), (cols["prefill_ms_per_tok"][idx], fmt_ms_per_tok),
                 (cols["decode_p50_ms_per_tok"][idx], fmt_ms_per_tok), (cols["decode_tok_s"][idx], fmt_tok_s),
                 (cols["total_tok_s"][idx], fmt_tok_s), (mem[idx], fmt_mib)]
        cells = _metric_cells(row, out[idx], specs, notes, where)
        rows.append([format_axis_value(row.get("seq_len")), format_axis_value(row.get("batch"))] + cells
                    + [_flag_cell(row, out[idx], notes, where)])
    return markdown_table(headers, rows, [True] * (len(headers) - 1) + [False])


def roofline_table(frame: pd.DataFrame, axis: str) -> str | None:
    """Per cell: each phase's floor (from the calibrated ceilings), efficiency = floor / measured, and bound."""
    if "decode_floor_ms" not in frame.columns:
        return None
    frame = frame.reset_index(drop=True)
    keys = ["seq_len", "batch"] if axis == "grid" else [axis]
    peak = [c for c in ("prefill_floor_peak_ms", "decode_floor_peak_ms") if _col(frame, c).notna().any()]
    headers = keys + ["prefill floor (ms)", "prefill eff.", "prefill regime",
                      "decode floor (ms/step)", "decode eff.", "decode regime"]
    headers += [{"prefill_floor_peak_ms": "prefill peak floor (ms)",
                 "decode_floor_peak_ms": "decode peak floor (ms/step)"}[c] for c in peak]
    extra = [(c, h) for c, h in (("sm_clock_p50_mhz", "SM clock p50 (MHz)"), ("gpu_util_p50_pct", "GPU util p50 (%)"))
             if c in frame.columns and _col(frame, c).notna().any()]
    headers += [h for _, h in extra]
    rows = []
    for _, row in frame.iterrows():
        if _isnan(row.get("decode_floor_ms")):
            continue
        cells = [format_axis_value(row.get(k)) for k in keys]
        cells += [fmt_ms(row.get("prefill_floor_ms")), _pct(row.get("prefill_efficiency")), _where(row, "prefill"),
                  format_sig(row.get("decode_floor_ms"), 4), _pct(row.get("decode_efficiency")),
                  _where(row, "decode")]
        cells += [format_sig(row.get(c), 4) for c in peak]
        cells += [format_number(row.get(c)) for c, _ in extra]
        rows.append(cells)
    if not rows:
        return None
    return markdown_table(headers, rows, [True] * len(keys) + [True, True, False, True, True, False]
                          + [True] * (len(peak) + len(extra)))


def anatomy_table(frame: pd.DataFrame, axis: str) -> tuple[str, str] | None:
    """The request anatomy of a series (markdown table) and its finding; None without tokenisation timings."""
    rows = anatomy_rows(frame)
    if rows.empty:
        return None
    keys = ["seq_len", "batch"] if axis == "grid" else [axis]
    stages = [name for name, _ in ANATOMY_STAGES]
    table = []
    for idx, r in rows.iterrows():
        largest = max(stages, key=lambda st: r[st])
        table.append([format_axis_value(frame.loc[idx, k]) for k in keys]
                     + [fmt_ms(r[st]) for st in stages] + [fmt_ms(r["request"]), largest])
    text = markdown_table(keys + [f"{st} ms" for st in stages] + ["request ms", "largest stage"], table,
                          [True] * (len(keys) + len(stages) + 1) + [False])
    host = (rows["tokenise"] + rows["detokenise"]) / rows["request"]
    largest = {max(stages, key=lambda st: r[st]) for _, r in rows.iterrows()}
    finding = (f"tokenising and detokenising take {_span(100 * host.min(), 100 * host.max(), '.2f')}% of a request "
               f"(text in, text out, p50 stages); the largest stage is {' / '.join(sorted(largest))}")
    return text, finding
