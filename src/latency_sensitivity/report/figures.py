"""Figures of a merged sweep CSV (see :mod:`latency_sensitivity.columns` for every column).

Two kinds of figure:

* :func:`build_sweep_figure` reproduces the reference study's "combined" figure: six panels (prefill
  ms/token, prefill tokens/s, decode ms/token, decode tokens/s, total tokens/s, memory) against the swept
  axis (``seq_len`` or ``batch``) on a log2 x axis, one line per series. A series is one
  (model, dtype, backend) combination and, when the frame holds several values of the other axis (a 2-D
  grid plotted along one axis), one value of that axis. The p10-p90 spread of the measured reps (prefill)
  or decode steps is drawn as error bars where the percentile columns exist (the legend says so), a collapse
  cell gets a red "X" on the panels whose metric collapsed (the metrics its ``flag_detail`` names), the
  memory panel's axis starts at zero, and OOM/error cells (NaN metrics) are marked at the bottom of every
  panel.
* the heat maps of 2-D grid sweeps (:mod:`latency_sensitivity.report.heatmap`) and the request anatomy
  (:mod:`latency_sensitivity.report.anatomy`) share this module's helpers.

:func:`save_figure` writes a figure atomically; :func:`plot_sweep` builds and saves.

Only ``seq_len``, ``batch``, ``flag`` and the metric columns are assumed. ``status``, ``model``, ``dtype``
and ``backend`` may be absent (absent: one series, every cell measured). A cell counts as failed when its
``status`` is ``oom``/``error`` or, lacking that, when its ``flag`` is ``oom``/``error``; its metrics are
treated as NaN whatever the frame holds.

Artists carry a ``gid`` so that callers and tests can find them: ``"series"`` (one data line per series
and panel), ``"series-secondary"`` (the dashed allocated-memory line), ``"spread"`` (p10-p90 error bars),
``"collapse"`` (collapse markers or, on heat maps, the red cell outlines), ``"oom"`` and ``"error"``
(failed-cell markers).
"""

from __future__ import annotations

import math
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import os
import pandas as pd
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from matplotlib import transforms as mtransforms
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator
from pathlib import Path

from latency_sensitivity.columns import COLUMNS_BY_NAME
from latency_sensitivity.vocabulary import LINE_AXES


matplotlib.use("Agg")


__all__ = [
    "IDENTITY_COLUMNS",
    "build_sweep_figure",
    "plot_sweep",
    "save_figure",
]


IDENTITY_COLUMNS: tuple[str, ...] = ("model", "dtype", "backend")


FAILED_KINDS: tuple[str, str] = ("oom", "error")


# Failed-cell markers: shape per kind, face in the series colour.
_FAILED_STYLE: dict[str, dict[str, object]] = {
    "oom": {"marker": "v", "label": "OOM"},
    "error": {"marker": "s", "label": "error"},
}


_FAILED_Y = 0.035  # axes fraction of the failed-cell markers


_SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "*", "h", "<", ">", "p", "d")


_LOG_Y_RATIO = 50.0  # a panel gets a log y axis when its positive values span at least this ratio


_MISSING_TEXT = "n/a"


@dataclass(frozen=True)
class _Panel:
    column: str
    title: str
    spread: tuple[str, str] | None = None
    spread_per_token: bool = False  # divide the spread columns by batch x seq_len


_PANELS: tuple[_Panel, ...] = (
    _Panel("prefill_ms_per_tok", "Prefill latency per token", ("prefill_p10_ms", "prefill_p90_ms"), True),
    _Panel("prefill_tok_s", "Prefill throughput"),
    _Panel("decode_p50_ms_per_tok", "Decode latency per token", ("decode_p10_ms_per_tok", "decode_p90_ms_per_tok")),
    _Panel("decode_tok_s", "Decode throughput"),
    _Panel("total_tok_s", "End-to-end throughput"),
)


def _unit(column: str) -> str:
    col = COLUMNS_BY_NAME.get(column)
    return col.unit if col is not None else ""


def _axis_label(column: str) -> str:
    unit = _unit(column)
    return f"{column} ({unit})" if unit else column


def _text_column(df: pd.DataFrame, column: str) -> pd.Series:
    """The column as stripped Python strings, "" where absent or missing."""
    if column not in df.columns:
        return pd.Series([""] * len(df), index=df.index, dtype=object)
    return df[column].map(lambda v: "" if _is_missing(v) else str(v).strip()).astype(object)


def _is_missing(value: object) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _numeric(df: pd.DataFrame, column: str) -> np.ndarray:
    """The column as float64 (NaN where absent or not a number)."""
    if column not in df.columns:
        return np.full(len(df), np.nan)
    # a writable copy (pandas' copy-on-write hands out read-only views)
    return np.array(pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan), copy=True)


def _format_tick(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _format3(value: float) -> str:
    """Three significant digits, without an exponent for everyday magnitudes (1234 -> "1230")."""
    if not math.isfinite(value):
        return _MISSING_TEXT
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 6 or magnitude < -3:
        return f"{value:.2e}"
    digits = 2 - magnitude
    rounded = round(value, digits)
    return f"{rounded:.{max(digits, 0)}f}"


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    """A private copy with normalised helper columns: ``_fail`` ("", "oom", "error"), ``_collapse``, ids."""
    out = df.copy()
    out["seq_len"] = _numeric(out, "seq_len")
    out["batch"] = _numeric(out, "batch")
    status = _text_column(out, "status").str.lower()
    flag = _text_column(out, "flag").str.lower()
    fail = pd.Series([""] * len(out), index=out.index, dtype=object)
    fail = fail.where(~flag.isin(FAILED_KINDS), flag)
    fail = fail.where(~status.isin(FAILED_KINDS), status)  # status wins over flag
    out["_fail"] = fail
    out["_collapse"] = (flag == "collapse") & (fail == "")
    for col in IDENTITY_COLUMNS:
        out[f"_id_{col}"] = _text_column(out, col)
    return out


def _identity_parts(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(identity columns that vary across the frame, identity columns that are constant and non-empty)."""
    varying: list[str] = []
    constant: list[str] = []
    for col in IDENTITY_COLUMNS:
        if col not in df.columns:
            continue
        values = df[f"_id_{col}"].unique()
        if len(values) > 1:
            varying.append(col)
        elif len(values) == 1 and values[0] != "":
            constant.append(col)
    return varying, constant


def _series_colors(n: int) -> list[tuple[float, float, float, float]]:
    if n <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = matplotlib.colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / (n - 1)) for i in range(n)]


def _maybe_log_y(ax: Axes, values: Sequence[np.ndarray]) -> None:
    """Log y axis when every finite value is positive and they span at least ``_LOG_Y_RATIO``."""
    finite = np.concatenate([np.asarray(v, dtype=float).ravel() for v in values]) if values else np.array([])
    finite = finite[np.isfinite(finite)]
    if finite.size < 2 or np.any(finite <= 0):
        return
    if finite.max() / finite.min() >= _LOG_Y_RATIO:
        ax.set_yscale("log")


def _set_log2_xaxis(ax: Axes, ticks: np.ndarray, axis: str) -> None:
    ax.set_xscale("log", base=2)
    if ticks.size:
        ax.set_xticks(ticks)
        labels = [_format_tick(v) for v in ticks]
        crowded = len(labels) > 6 or sum(len(s) for s in labels) > 28
        ax.set_xticklabels(labels, rotation=45 if crowded else 0, ha="right" if crowded else "center")
        ax.set_xlim(ticks.min() / 2**0.4, ticks.max() * 2**0.4)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(_axis_label(axis))


@dataclass
class _Series:
    label: str
    frame: pd.DataFrame  # sorted by the swept axis
    color: tuple[float, float, float, float]
    marker: str


def _split_series(df: pd.DataFrame, axis: str) -> tuple[list[_Series], str]:
    """The series of a prepared frame, and a subtitle naming what all of them share."""
    other = "batch" if axis == "seq_len" else "seq_len"
    varying, constant = _identity_parts(df)
    other_values = df[other].dropna().unique()
    split_other = len(other_values) > 1

    keys = [f"_id_{c}" for c in IDENTITY_COLUMNS if c in df.columns]
    if split_other:
        keys.append(other)
    if keys:
        groups = [g for _, g in df.groupby(keys, sort=True, dropna=False)]
    else:
        groups = [df]

    shared = [str(df[f"_id_{c}"].iloc[0]) for c in constant] if len(df) else []
    if not split_other and len(other_values) == 1:
        shared.append(f"{other}={_format_tick(float(other_values[0]))}")
    subtitle = " ".join(shared)

    colors = _series_colors(len(groups))
    series: list[_Series] = []
    for i, group in enumerate(groups):
        first = group.iloc[0]
        parts = " ".join(str(first[f"_id_{c}"]) for c in varying if first[f"_id_{c}"] != "")
        if split_other:
            value = first[other]
            other_text = f"{other}={_format_tick(float(value))}" if not _is_missing(value) else f"{other}=?"
            label = f"{parts}, {other_text}" if parts else other_text
        else:
            label = parts
        if not label:
            label = " ".join(str(first[f"_id_{c}"]) for c in constant) or "measured"
        series.append(
            _Series(
                label=label,
                frame=group.sort_values(axis, kind="stable"),
                color=colors[i],
                marker=_SERIES_MARKERS[i % len(_SERIES_MARKERS)],
            )
        )
    return series, subtitle


def _values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Metric values with failed cells forced to NaN."""
    values = _numeric(frame, column)
    values[(frame["_fail"] != "").to_numpy()] = np.nan
    return values


def _draw_spread(ax: Axes, s: _Series, axis: str, panel: _Panel, y: np.ndarray) -> list[np.ndarray]:
    if panel.spread is None or not all(c in s.frame.columns for c in panel.spread):
        return []
    lo = _values(s.frame, panel.spread[0])
    hi = _values(s.frame, panel.spread[1])
    if panel.spread_per_token:
        tokens = _numeric(s.frame, "batch") * _numeric(s.frame, "seq_len")
        with np.errstate(divide="ignore", invalid="ignore"):
            lo = lo / tokens
            hi = hi / tokens
    x = _numeric(s.frame, axis)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return []
    below = np.clip(y[ok] - lo[ok], 0, None)
    above = np.clip(hi[ok] - y[ok], 0, None)
    container = ax.errorbar(
        x[ok], y[ok], yerr=np.vstack([below, above]), fmt="none", ecolor=s.color,
        elinewidth=1.0, capsize=2.5, alpha=0.7, zorder=2,
    )
    for artist in (*container.lines[1], *container.lines[2]):
        artist.set_gid("spread")
    return [lo[ok], hi[ok]]


def _draw_failed(ax: Axes, s: _Series, axis: str, seen: set[str]) -> None:
    transform = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for kind in FAILED_KINDS:
        x = _numeric(s.frame[s.frame["_fail"] == kind], axis)
        x = x[np.isfinite(x) & (x > 0)]
        if not x.size:
            continue
        style = _FAILED_STYLE[kind]
        ax.plot(
            x, np.full(x.size, _FAILED_Y), transform=transform, linestyle="none",
            marker=style["marker"], markersize=9, markerfacecolor=s.color, markeredgecolor="black",
            markeredgewidth=1.0, clip_on=False, zorder=9, gid=kind,
        )
        seen.add(kind)


def collapsed_metrics(detail: object) -> set[str]:
    """The metrics a ``flag_detail`` says collapsed (each "; "-separated reason starts with one)."""
    if _is_missing(detail):
        return set()
    return {part.strip().split(" ", 1)[0] for part in str(detail).split(";") if part.strip()}


def _collapse_mask(frame: pd.DataFrame, column: str | None) -> np.ndarray:
    """Collapse cells whose detail names ``column`` (all collapse cells where the detail names no metric)."""
    flagged = frame["_collapse"].to_numpy(dtype=bool)
    if column is None:
        return np.zeros(len(frame), dtype=bool)
    if "flag_detail" not in frame.columns:
        return flagged
    named = [column in collapsed_metrics(d) or not collapsed_metrics(d) for d in frame["flag_detail"]]
    return flagged & np.asarray(named, dtype=bool)


def _draw_collapse(ax: Axes, s: _Series, axis: str, y: np.ndarray, column: str | None) -> bool:
    mask = _collapse_mask(s.frame, column) & np.isfinite(y)
    x = _numeric(s.frame, axis)
    mask &= np.isfinite(x)
    if not mask.any():
        return False
    ax.scatter(
        x[mask], y[mask], marker="X", s=120, c="red", edgecolors="black", linewidths=0.8,
        zorder=10, gid="collapse",
    )
    return True


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.45", fontsize=10)


def _memory_columns(df: pd.DataFrame) -> tuple[str | None, str | None]:
    """(solid column, dashed column) of the memory panel."""
    reserved = _numeric(df, "vram_reserved_mb")
    if "vram_reserved_mb" in df.columns and np.any(np.nan_to_num(reserved) > 0):
        return "vram_reserved_mb", ("vram_allocated_mb" if "vram_allocated_mb" in df.columns else None)
    if "peak_rss_mb" in df.columns:
        return "peak_rss_mb", None
    if "vram_reserved_mb" in df.columns:  # all zero / NaN and no RSS: still show what there is
        return "vram_reserved_mb", None
    return None, None


def build_sweep_figure(df: pd.DataFrame, axis: str, title: str) -> Figure:
    """The six-panel "combined" figure of a sweep along ``axis`` ("seq_len" or "batch")."""
    if axis not in LINE_AXES:
        raise ValueError(f"axis must be one of {LINE_AXES}, got {axis!r}")
    data = _prepare(df)
    x_all = data[axis].to_numpy(dtype=float)
    data = data[np.isfinite(x_all) & (x_all > 0)]
    ticks = np.unique(data[axis].to_numpy(dtype=float))
    series, subtitle = _split_series(data, axis) if len(data) else ([], "")

    legend_cols = min(max(len(series), 1) + 3, 5)
    legend_rows = math.ceil((len(series) + 3) / legend_cols)
    fig = Figure(figsize=(16, 8.8 + 0.28 * legend_rows), layout="constrained")
    axes = fig.subplots(2, 3)
    flat: list[Axes] = list(axes.ravel())

    memory_solid, memory_dashed = _memory_columns(data)
    panels: list[_Panel | None] = [*_PANELS, None]
    seen_failed: set[str] = set()
    any_collapse = False

    for ax, panel in zip(flat, panels):
        column = panel.column if panel is not None else memory_solid
        if panel is not None:
            ax.set_title(f"{panel.title} ({_unit(panel.column)})")
        else:
            ax.set_title("Peak memory (MiB)")
        ax.grid(True, which="major", alpha=0.3)
        plotted: list[np.ndarray] = []
        if column is None or column not in data.columns:
            _no_data(ax, f"{panel.column if panel else 'memory'}: not measured")
        else:
            ax.set_ylabel(f"{column} ({_unit(column)})" if _unit(column) else column)
            for s in series:
                x = _numeric(s.frame, axis)
                y = _values(s.frame, column)
                ax.plot(
                    x, y, color=s.color, marker=s.marker, markersize=5, linewidth=1.6,
                    linestyle="-", label=s.label, zorder=3, gid="series",
                )
                plotted.append(y)
                if panel is not None:
                    plotted.extend(_draw_spread(ax, s, axis, panel, y))
                elif memory_dashed is not None:
                    y2 = _values(s.frame, memory_dashed)
                    ax.plot(
                        x, y2, color=s.color, marker=s.marker, markersize=4, linewidth=1.3,
                        linestyle="--", markerfacecolor="none", zorder=3, gid="series-secondary",
                    )
                    plotted.append(y2)
                if panel is not None:
                    any_collapse |= _draw_collapse(ax, s, axis, y, panel.column)
            if not any(np.isfinite(v).any() for v in plotted):
                _no_data(ax, "no successful cells")
            if panel is not None:
                _maybe_log_y(ax, plotted)
            else:
                # memory from zero: a small rise on top of the weights looks small; 8% headroom above the top
                top = max((np.nanmax(v) for v in plotted if np.isfinite(v).any()), default=0.0)
                ax.set_ylim(0, top * 1.08 if top > 0 else None)
            if panel is None and memory_dashed is not None:
                ax.legend(
                    handles=[
                        Line2D([], [], color="0.3", linestyle="-", label="reserved"),
                        Line2D([], [], color="0.3", linestyle="--", label="allocated"),
                    ],
                    loc="upper left", fontsize=8, framealpha=0.8,
                )
        before = len(ax.get_lines())
        for s in series:
            _draw_failed(ax, s, axis, seen_failed)
        if len(ax.get_lines()) > before:
            ax.set_ymargin(0.12)  # room for the failed-cell markers below the lowest point
        _set_log2_xaxis(ax, ticks, axis)

    handles: list[Line2D] = [
        Line2D([], [], color=s.color, marker=s.marker, markersize=6, linewidth=1.6, label=s.label) for s in series
    ]
    if any(a.get_gid() == "spread" for ax in flat for a in ax.get_children()):
        handles.append(
            Line2D([], [], color="0.3", linestyle="none", marker="|", markersize=12, markeredgewidth=1.2,
                   label="error bars: p10–p90 of the measured reps (prefill) or decode steps")
        )
    if any_collapse:
        handles.append(
            Line2D([], [], linestyle="none", marker="X", markersize=11, markerfacecolor="red",
                   markeredgecolor="black", label="collapse")
        )
    for kind in FAILED_KINDS:
        if kind in seen_failed:
            style = _FAILED_STYLE[kind]
            handles.append(
                Line2D([], [], linestyle="none", marker=style["marker"], markersize=9, markerfacecolor="0.7",
                       markeredgecolor="black", label=str(style["label"]))
            )
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=9,
                   frameon=False)
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=13)
    return fig


def save_figure(fig: Figure, out_png: str | os.PathLike[str], dpi: int = 120) -> None:
    """Write ``fig`` atomically (temporary file in the same directory, then ``os.replace``) and close it.

    Parent directories are created. The format follows the file suffix (PNG when there is none).
    """
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = out.suffix.lstrip(".").lower() or "png"
    # open(..., "xb") rather than mkstemp: the file gets the usual 0666 & ~umask permissions.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as handle:
            fig.savefig(handle, dpi=dpi, format=fmt)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def plot_sweep(df: pd.DataFrame, axis: str, out_png: str | os.PathLike[str], title: str) -> None:
    """Build the six-panel sweep figure and save it to ``out_png``."""
    save_figure(build_sweep_figure(df, axis, title), out_png)
