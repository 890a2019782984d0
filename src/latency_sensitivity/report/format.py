"""How the report writes numbers, changes, ranges and noise, and its markdown tables."""

from __future__ import annotations

import math
import pandas as pd
import re
from typing import Any, Sequence

from latency_sensitivity.analysis.collapse import Noise


FLAT_TOLERANCE = 0.05


ERROR_NOTE_CHARS = 300


# Labels of metrics in the findings.
LABELS = {
    "prefill_p50_ms": "prefill p50",
    "prefill_ms_per_tok": "prefill ms/token",
    "prefill_tok_s": "prefill tok/s",
    "decode_p50_ms_per_tok": "decode ms/step",
    "decode_tok_s": "decode tok/s",
    "total_tok_s": "total tok/s",
    "memory": "memory",
}


def job_seconds(job_s: float, gpu_wait_s: float | None = None, *notes: str) -> str:
    """A one-time job's wall time, with the part it waited for a GPU held by another process where it did, and
    any further notes, in one parenthesis."""
    notes = ((f"{gpu_wait_s:.1f} s of it waiting for a GPU",) if gpu_wait_s and gpu_wait_s >= 0.05 else ()) + notes
    return f"{job_s:.1f} s" + (f" ({'; '.join(notes)})" if notes else "")


def _span(lo: float, hi: float, spec: str = ".1f") -> str:
    """`lo–hi` in the given format, or one number where both print the same (a single cell)."""
    a, b = format(lo, spec), format(hi, spec)
    return a if a == b else f"{a}–{b}"


def _isnan(x: Any) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def format_sig(x: Any, digits: int) -> str:
    """``x`` with ``digits`` significant digits, trailing zeros kept; integer digits are never dropped."""
    if _isnan(x):
        return "n/a"
    x = float(x)
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def format_number(x: Any) -> str:
    """A value in a finding: no decimals from 1000 up, one from 100 up, else 3 significant digits."""
    if _isnan(x):
        return "n/a"
    x = float(x)
    if abs(x) >= 1000:
        return f"{x:.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return format_sig(x, 3)


def format_ratio(r: float) -> str:
    """A growth factor: ``26.5x``; from 100 up without decimals (``128x``)."""
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x"


def format_relative(a: Any, b: Any) -> str:
    """The change from ``a`` to ``b``: ``+58%`` below 2x, ``26.5x`` from 2x up, ``3.0x lower`` below 0.5x."""
    if _isnan(a) or _isnan(b):
        return "n/a"
    a, b = float(a), float(b)
    if a == 0:
        return "from 0" if b != 0 else "+0%"
    r = b / a
    if r >= 2:
        return format_ratio(r)
    if 0 < r <= 0.5:
        return f"{format_ratio(1 / r)} lower"
    pct = (b - a) / abs(a) * 100
    text = f"{pct:+.0f}%"
    return "+0%" if text == "-0%" else text


def format_change(a: Any, b: Any, unit: str = "") -> str:
    """``0.272 → 0.429 (+58%)``; with a unit ``5974 → 10716 MiB (+79%)`` (MiB always without decimals)."""
    fmt = _fmt_mib_value if unit == "MiB" else format_number
    u = f" {unit}" if unit else ""
    return f"{fmt(a)} → {fmt(b)}{u} ({format_relative(a, b)})"


def _fmt_mib_value(x: Any) -> str:
    return "n/a" if _isnan(x) else f"{float(x):.0f}"


def direction(a: Any, b: Any, words: Sequence[str] = ("rises", "falls", "stays flat"),
              tol: float = FLAT_TOLERANCE) -> str:
    """``words[0]`` when b exceeds a by more than ``tol`` (relative to a), ``words[1]`` when it is that much
    lower, else ``words[2]``."""
    a, b = float(a), float(b)
    scale = abs(a) if a != 0 else max(abs(b), 1e-300)
    rel = (b - a) / scale
    if rel > tol:
        return words[0]
    if rel < -tol:
        return words[1]
    return words[2]


def format_noise(noise: "Noise", one_decimal_below: float = 1.0) -> str:
    """``±4%``, with one decimal below ``one_decimal_below`` percent (``±0.6%``)."""
    pct = 100 * noise.fraction
    return f"±{pct:.1f}%" if pct < one_decimal_below else f"±{pct:.0f}%"


def _trend_phrase(label: str, a: float, b: float, words: Sequence[str] = ("rises", "falls", "stays flat"),
                  unit: str = "", noise: "Noise | None" = None) -> str:
    """``label rises a → b (+x%)``, or, where the change is not larger than the cells' noise (when known,
    else `FLAT_TOLERANCE`), ``label stays flat, within noise (±x%): a → b (+y%)``."""
    change = format_change(a, b, unit)
    if noise is not None and noise.known:
        lo = min(abs(float(a)), abs(float(b)))
        rel = abs(float(b) - float(a)) / lo if lo else (0.0 if a == b else math.inf)
        word = words[2] if rel <= noise.fraction else direction(a, b, words, tol=0.0)
        if word == words[2]:
            return f"{label} {word}, within noise ({format_noise(noise)}): {change}"
        return f"{label} {word} {change}"
    word = direction(a, b, words)
    if word == words[2]:
        return f"{label} {word} (within ±{FLAT_TOLERANCE:.0%}): {change}"
    return f"{label} {word} {change}"


def format_axis_value(v: Any) -> str:
    if _isnan(v):
        return "n/a"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() else format_number(f)


# table formats: ms 2 decimals, ms/token 4 significant, tok/s 1 decimal, MiB 0 decimals
def fmt_ms(x: Any) -> str:
    return "–" if _isnan(x) else f"{float(x):.2f}"


def fmt_ms_per_tok(x: Any) -> str:
    return "–" if _isnan(x) else format_sig(x, 4)


def fmt_tok_s(x: Any) -> str:
    return "–" if _isnan(x) else f"{float(x):.1f}"


def fmt_mib(x: Any) -> str:
    return "–" if _isnan(x) else f"{float(x):.0f}"


def _clean(text: Any) -> str:
    """Text on one line, missing values as ""."""
    s = "" if _isnan(text) else str(text)
    return re.sub(r"\s+", " ", s).strip()


def _escape(text: Any) -> str:
    """Text safe inside a markdown table cell or list item."""
    return _clean(text).replace("|", "\\|")


def _shorten(text: str, limit: int = ERROR_NOTE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    right = right if right is not None else [False] * len(headers)
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_escape(c) if c != "" else "" for c in row) + " |")
    return "\n".join(lines)


def _fmt_value(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple, set)):
        return ", ".join(_fmt_value(x) for x in v)
    if _isnan(v):
        return "–"
    return str(v)


def _pct(x: Any) -> str:
    return "–" if _isnan(x) else f"{100 * float(x):.1f}%"


def _gb_s(x: Any) -> str:
    return "–" if x is None or _isnan(x) else f"{float(x):.2f} GB/s"
