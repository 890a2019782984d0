"""The reference study's claims, tested against our measurements.

The study this project started from (an RTX 5070, Qwen2.5-3B, fp16, transformers eager) drew conclusions
from two sweeps. Each claim below is a rule over the two sweeps' tables (batch 1 x growing seq_len; fixed
seq_len x growing batch): the same rule is applied to the study's published numbers and to each of our
series (one per backend), and the verdict compares what the rule finds in ours with what the study claims.
Nothing here is hard-coded but the claims' wording and the thresholds below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

FLAT = 0.05  # a change within +-5% is "flat"
STABLE_BAND = 0.25  # "largely stable": max/min within 1.25
MONOTONIC = 0.8  # a trend is monotonic enough when Spearman's rank correlation is at least this
SATURATION = 2.0  # a per-step time at least twice the batch-1 one is "saturated"
ENGINE_MATTERS = 1.5  # an execution strategy that changes batch-1 decode by 1.5x or more matters


@dataclass
class Evidence:
    label: str  # "RTX 5070 (study)" or "H100 eager", ...
    value: float  # the rule's number (a ratio)
    text: str  # the numbers behind it
    holds: bool | None  # whether the claimed behaviour is seen in these numbers
    regime: str = ""  # our cells' decode/prefill regime where known


@dataclass
class ClaimResult:
    key: str
    claim: str
    evidence: list[Evidence] = field(default_factory=list)
    verdict: str = ""


def _seq_series(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["batch"] == 1].drop_duplicates("seq_len").sort_values("seq_len")


def _batch_series(frame: pd.DataFrame) -> pd.DataFrame:
    seq = frame.loc[frame["batch"] > 1, "seq_len"]
    fixed = seq.mode().iloc[0] if not seq.empty else 128
    return frame[frame["seq_len"] == fixed].drop_duplicates("batch").sort_values("batch")


def _ends(sub: pd.DataFrame, col: str) -> tuple[float, float]:
    values = pd.to_numeric(sub[col], errors="coerce").dropna()
    return (float(values.iloc[0]), float(values.iloc[-1])) if len(values) >= 2 else (math.nan, math.nan)


def _regimes(sub: pd.DataFrame, phase: str) -> str:
    col = f"{phase}_regime"
    if col not in sub.columns:
        return ""
    seen = [str(r) for r in sub[col].dropna() if str(r)]
    return "/".join(dict.fromkeys(seen))


def _fmt(x: float) -> str:
    from latency_sensitivity.report.format import format_number

    return format_number(x)


def _axis_text(sub: pd.DataFrame, axis: str, col: str, unit: str) -> str:
    a, b = _ends(sub, col)
    lo, hi = sub[axis].iloc[0], sub[axis].iloc[-1]
    return f"{_fmt(a)} → {_fmt(b)} {unit} ({axis} {lo} → {hi}; ×{b / a:.2f})"


def _rank_correlation(sub: pd.DataFrame, axis: str, col: str) -> float:
    """Spearman's rank correlation of col with the axis: 1 = rises at every step, -1 = falls at every step."""
    values = pd.to_numeric(sub[col], errors="coerce")
    keep = values.notna()
    if keep.sum() < 3:
        return math.nan
    return float(sub.loc[keep, axis].rank().corr(values[keep].rank()))


def _rises(sub: pd.DataFrame, axis: str, col: str) -> tuple[float, str, bool]:
    """A claimed rise: the last cell > the first by more than FLAT, and a monotonic trend (rank corr >= 0.8)."""
    a, b = _ends(sub, col)
    rho = _rank_correlation(sub, axis, col)
    holds = b / a > 1 + FLAT and (math.isnan(rho) or rho >= MONOTONIC)
    return b / a, f"rank correlation with {axis} {rho:+.2f}", holds


# ------------------------------------------------------------------------------------------ the rules


def _prefill_per_token_vs_seq(frame):
    sub = _seq_series(frame)
    ratio, trend, holds = _rises(sub, "seq_len", "prefill_ms_per_tok")
    return ratio, _axis_text(sub, "seq_len", "prefill_ms_per_tok", "ms/token") + f", {trend}", holds, _regimes(sub, "prefill")


def _decode_vs_seq(frame):
    sub = _seq_series(frame)
    ratio, trend, holds = _rises(sub, "seq_len", "decode_p50_ms_per_tok")
    return ratio, _axis_text(sub, "seq_len", "decode_p50_ms_per_tok", "ms/step") + f", {trend}", holds, _regimes(sub, "decode")


def _batch_throughput(frame):
    sub = _batch_series(frame)
    a, b = _ends(sub, "decode_tok_s")
    growth = sub["batch"].iloc[-1] / sub["batch"].iloc[0]
    text = _axis_text(sub, "batch", "decode_tok_s", "decode tok/s") + f", {100 * (b / a) / growth:.0f}% of linear"
    return b / a, text, b / a > 1 + FLAT, _regimes(sub, "decode")


def _batch_saturation(frame):
    sub = _batch_series(frame)
    a, b = _ends(sub, "decode_p50_ms_per_tok")
    return b / a, _axis_text(sub, "batch", "decode_p50_ms_per_tok", "ms/step"), b / a >= SATURATION, _regimes(sub, "decode")


def _prefill_per_token_vs_batch(frame):
    sub = _batch_series(frame)
    sub = sub[sub["batch"] > 1]  # the study's band (0.16-0.19 ms/token) is over batch 2-64
    values = pd.to_numeric(sub["prefill_ms_per_tok"], errors="coerce").dropna()
    spread = float(values.max() / values.min()) if len(values) else math.nan
    text = (f"{_fmt(values.min())}–{_fmt(values.max())} ms/token over batch {sub['batch'].iloc[0]}–{sub['batch'].iloc[-1]} "
            f"(max/min ×{spread:.2f})")
    return spread, text, spread <= 1 + STABLE_BAND, _regimes(sub, "prefill")


def _memory_vs_seq(frame):
    sub = _seq_series(frame)
    a, b = _ends(sub, "vram_reserved_mb")
    ta, tb = _ends(sub, "total_tok_s")
    peak_at = int(sub.loc[pd.to_numeric(sub["total_tok_s"], errors="coerce").idxmax(), "seq_len"])
    declines = peak_at != int(sub["seq_len"].iloc[-1])
    text = (f"VRAM reserved {a:.0f} → {b:.0f} MiB (×{b / a:.2f}); total tok/s peaks at seq_len {peak_at}"
            + (" and declines after it" if declines else ", the last cell"))
    return b / a, text, (b / a > 1.5) and declines, ""


CLAIMS: tuple[tuple[str, str, Callable], ...] = (
    ("prefill_per_token_vs_seq",
     "Per-token prefill efficiency degrades monotonically as sequence length grows (batch 1).",
     _prefill_per_token_vs_seq),
    ("decode_vs_seq", "Decode slows with context: per-step latency rises with sequence length (batch 1).",
     _decode_vs_seq),
    ("batch_throughput", "Batching scales decode throughput strongly (fixed sequence length).", _batch_throughput),
    ("batch_saturation",
     "Beyond batch 32 decode latency per step rises sharply: the GPU saturates within batch 1–64.",
     _batch_saturation),
    ("prefill_per_token_vs_batch", "Under batching, per-token prefill efficiency stays largely stable.",
     _prefill_per_token_vs_batch),
    ("memory_vs_seq",
     "Memory grows steadily with sequence length, and the growing memory pressure flattens and then lowers "
     "total throughput at long context.", _memory_vs_seq),
)


def _engine_claim(ours: dict[str, pd.DataFrame]) -> ClaimResult | None:
    """'No framework can compensate for low concurrency': batch-1 decode across our execution backends."""
    result = ClaimResult("low_concurrency_framework",
                         "In low-concurrency regimes the choice of inference engine has limited impact: no framework "
                         "can compensate for the absence of independent work.")
    cells = {}
    for label, frame in ours.items():
        sub = frame[(frame["batch"] == 1)].sort_values("seq_len")
        if sub.empty:
            continue
        row = sub.iloc[0]
        cells[label] = (float(row["decode_p50_ms_per_tok"]), int(row["seq_len"]), str(row.get("decode_regime", "")))
    if len(cells) < 2:
        return None
    slow = max(cells, key=lambda k: cells[k][0])
    fast = min(cells, key=lambda k: cells[k][0])
    ratio = cells[slow][0] / cells[fast][0]
    for label, (ms, seq, regime) in cells.items():
        result.evidence.append(Evidence(label, ms, f"{_fmt(ms)} ms/step at seq_len {seq}, batch 1", None, regime))
    holds = ratio < ENGINE_MATTERS
    result.verdict = (
        ("supported" if holds else "not supported")
        + f": at batch 1 the execution strategy alone changes decode per step {ratio:.1f}x "
        f"({slow} {_fmt(cells[slow][0])} ms vs {fast} {_fmt(cells[fast][0])} ms)"
        + ("" if holds else "; at low concurrency the host-side overhead an engine removes is most of the step")
    )
    return result


def evaluate(reference: pd.DataFrame, reference_label: str, ours: dict[str, pd.DataFrame]) -> list[ClaimResult]:
    """Every claim on the study's numbers and on each of our series ({label: frame with both sweeps' cells})."""
    results = []
    for key, claim, rule in CLAIMS:
        r = ClaimResult(key, claim)
        try:
            value, text, holds, _ = rule(reference)
            r.evidence.append(Evidence(reference_label, value, text, holds))
        except (KeyError, IndexError, ValueError, ZeroDivisionError):
            pass
        for label, frame in ours.items():
            try:
                value, text, holds, regime = rule(frame)
            except (KeyError, IndexError, ValueError, ZeroDivisionError):
                continue
            if math.isnan(value):
                continue
            r.evidence.append(Evidence(label, value, text, holds, regime))
        mine = [e for e in r.evidence if e.label != reference_label and e.holds is not None]
        if not mine:
            r.verdict = "not testable: our sweeps lack the cells"
        elif all(e.holds for e in mine):
            r.verdict = "supported by every backend measured"
        elif not any(e.holds for e in mine):
            r.verdict = "not supported by any backend measured"
        else:
            r.verdict = "supported by " + ", ".join(e.label for e in mine if e.holds) + "; not by " + ", ".join(
                e.label for e in mine if not e.holds)
        results.append(r)
    engine = _engine_claim(ours)
    if engine is not None:
        results.append(engine)
    return results


def load_reference(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = {"seq_len", "batch", "prefill_ms_per_tok", "decode_p50_ms_per_tok", "decode_tok_s", "total_tok_s",
               "vram_reserved_mb"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: the reference study's CSV lacks columns {sorted(missing)}")
    return frame


def device_label(name: str, kind: str = "cuda") -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100', 'NVIDIA GeForce RTX 5070' -> 'RTX 5070', 'NVIDIA A100-SXM4-80GB' -> 'A100'."""
    if kind == "cpu":
        return "CPU"
    words = str(name).replace("NVIDIA", "").replace("GeForce", "").split()
    if not words:
        return kind.upper()
    if words[0] in ("RTX", "GTX") and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return words[0].split("-")[0]


def our_series(frame: pd.DataFrame, model: str, dtype: str) -> dict[str, pd.DataFrame]:
    """{'<device> <backend>': the measured (ok) cells of every sweep} for one model and dtype."""
    if frame.empty or "backend" not in frame.columns:
        return {}
    sub = frame[(frame["model"].astype(str) == model) & (frame["dtype"].astype(str) == dtype)]
    if "status" in sub.columns:
        sub = sub[sub["status"].astype(str) == "ok"]
    out = {}
    names = sub["device_name"].astype(str) if "device_name" in sub.columns else pd.Series("", index=sub.index)
    kinds = sub["device"].astype(str) if "device" in sub.columns else pd.Series("cuda", index=sub.index)
    for (name, kind, backend), group in sub.groupby([names, kinds, sub["backend"].astype(str)], sort=True):
        out[f"{device_label(name, kind)} {backend}"] = group.drop_duplicates(["seq_len", "batch"])
    return out


def claims_section(results: list[ClaimResult], heading_level: int = 3) -> str:
    """Markdown: one block per claim with the numbers side by side and the verdict."""
    from latency_sensitivity.report.format import markdown_table

    h = "#" * heading_level
    parts = ["Each claim is a rule applied alike to the study's published tables and to each of our series; "
             "✓ = the claimed behaviour is seen in those numbers, ✗ = it is not. Regimes are our cells' "
             "(launch-bound: GPU idle most of the phase; memory-/compute-bound: the roofline's bound with the GPU busy)."]
    for r in results:
        parts += ["", f"{h} {r.claim}", ""]
        rows = [[e.label, e.text, "" if e.holds is None else ("✓" if e.holds else "✗"), e.regime or "–"]
                for e in r.evidence]
        parts += [markdown_table(["data", "numbers", "claim holds", "regime"], rows), "", f"Verdict: {r.verdict}."]
    return "\n".join(parts)
