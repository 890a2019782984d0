"""Heat maps of a 2-D (seq_len x batch) grid sweep: one panel per metric, one row of panels per (model, dtype, backend)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from latency_sensitivity.columns import LATENCY_METRICS
from latency_sensitivity.report.figures import IDENTITY_COLUMNS, _LOG_Y_RATIO, _MISSING_TEXT, _axis_label, _collapse_mask, _format3, _format_tick, _identity_parts, _no_data, _prepare, _unit, _values, save_figure


DEFAULT_HEATMAP_METRICS: tuple[str, ...] = (
    "prefill_ms_per_tok",
    "decode_p50_ms_per_tok",
    "decode_tok_s",
    "total_tok_s",
)


def _grid(
    frame: pd.DataFrame, metric: str, seqs: np.ndarray, batches: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, cell state, collapse) arrays of shape (n_seq, n_batch); state is "", "oom", "error", "missing"."""
    values = np.full((seqs.size, batches.size), np.nan)
    state = np.full((seqs.size, batches.size), "missing", dtype=object)
    collapse = np.zeros((seqs.size, batches.size), dtype=bool)
    seq_index = {v: i for i, v in enumerate(seqs)}
    batch_index = {v: j for j, v in enumerate(batches)}
    metric_values = _values(frame, metric)
    for k, (seq, batch, fail, col) in enumerate(
        zip(frame["seq_len"], frame["batch"], frame["_fail"], _collapse_mask(frame, metric))
    ):
        i, j = seq_index.get(seq), batch_index.get(batch)
        if i is None or j is None:
            continue
        # the last row of a cell wins
        values[i, j] = metric_values[k]
        state[i, j] = fail if fail else ("" if math.isfinite(metric_values[k]) else "missing")
        collapse[i, j] = bool(col)
    return values, state, collapse


def _heat_norm(values: np.ndarray) -> mcolors.Normalize:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return mcolors.Normalize(vmin=0.0, vmax=1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if lo > 0 and hi / lo >= _LOG_Y_RATIO:
        return mcolors.LogNorm(vmin=lo, vmax=hi)
    if lo == hi:
        pad = abs(lo) * 0.05 or 1.0
        return mcolors.Normalize(vmin=lo - pad, vmax=hi + pad)
    return mcolors.Normalize(vmin=lo, vmax=hi)


def _text_color(rgba: tuple[float, float, float, float]) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _draw_heat_panel(
    fig: Figure, ax: Axes, frame: pd.DataFrame, metric: str, seqs: np.ndarray, batches: np.ndarray
) -> bool:
    """One heat map; returns whether a collapse cell was outlined."""
    ax.set_xticks(range(batches.size), [_format_tick(v) for v in batches])
    ax.set_yticks(range(seqs.size), [_format_tick(v) for v in seqs])
    ax.set_xlabel(_axis_label("batch"))
    ax.set_ylabel(_axis_label("seq_len"))
    if metric not in frame.columns:
        ax.set_xlim(-0.5, batches.size - 0.5)
        ax.set_ylim(seqs.size - 0.5, -0.5)
        _no_data(ax, f"{metric}: not measured")
        return False
    values, state, collapse = _grid(frame, metric, seqs, batches)
    cmap = matplotlib.colormaps["viridis_r" if metric in LATENCY_METRICS else "viridis"].with_extremes(bad="0.78")
    norm = _heat_norm(values)
    image = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest", origin="upper")
    unit = _unit(metric)
    fig.colorbar(image, ax=ax, label=unit or None, shrink=0.9)
    n_cells = max(seqs.size, batches.size)
    fontsize = 8 if n_cells <= 8 else (6.5 if n_cells <= 12 else 5)
    for i in range(seqs.size):
        for j in range(batches.size):
            cell = state[i, j]
            if cell == "":
                value = values[i, j]
                text, color = _format3(value), _text_color(cmap(norm(value)))
            else:
                text = {"oom": "OOM", "error": "err"}.get(cell, _MISSING_TEXT)
                color = "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
            if collapse[i, j]:
                ax.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5,
                              zorder=5, gid="collapse")
                )
    return bool(collapse.any())


def build_heatmap_figure(
    df: pd.DataFrame,
    title: str,
    metrics: Sequence[str] = DEFAULT_HEATMAP_METRICS,
) -> Figure:
    """Heat maps of a 2-D grid sweep: rows seq_len (ascending), columns batch (ascending).

    One panel per metric; one row of panels per (model, dtype, backend) series. All panels share the
    grid of every seq_len and batch value in ``df``, so cells that a series lacks show as "n/a".
    """
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one column")
    data = _prepare(df)
    data = data[np.isfinite(data["seq_len"].to_numpy(dtype=float)) & np.isfinite(data["batch"].to_numpy(dtype=float))]
    seqs = np.unique(data["seq_len"].to_numpy(dtype=float))
    batches = np.unique(data["batch"].to_numpy(dtype=float))

    varying, constant = _identity_parts(data)
    keys = [f"_id_{c}" for c in IDENTITY_COLUMNS if c in data.columns]
    groups = [g for _, g in data.groupby(keys, sort=True)] if keys and len(data) else [data]
    n_rows, n_cols = len(groups), len(metrics)

    panel_w = 1.6 + 0.62 * max(batches.size, 1)
    panel_h = 1.3 + 0.38 * max(seqs.size, 1)
    fig = Figure(figsize=(max(panel_w * n_cols, 6.0), panel_h * n_rows + 1.2), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    any_collapse = False
    for r, group in enumerate(groups):
        first = group.iloc[0] if len(group) else None
        label = (
            " ".join(str(first[f"_id_{c}"]) for c in varying if first[f"_id_{c}"] != "")
            if first is not None and n_rows > 1
            else ""
        )
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            unit = _unit(metric)
            name = f"{metric} ({unit})" if unit else metric
            ax.set_title(f"{label}\n{name}" if label else name, fontsize=10)
            if seqs.size == 0 or batches.size == 0:
                _no_data(ax, "no data")
                continue
            any_collapse |= _draw_heat_panel(fig, ax, group, metric, seqs, batches)

    if any_collapse:
        fig.legend(
            handles=[Patch(facecolor="none", edgecolor="red", linewidth=2.5, label="collapse")],
            loc="outside lower center", frameon=False, fontsize=9,
        )
    subtitle = " ".join(str(data[f"_id_{c}"].iloc[0]) for c in constant) if len(data) else ""
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=12)
    return fig


def plot_heatmap(df: pd.DataFrame, out_png: str | os.PathLike[str], title: str) -> None:
    """Build the heat-map figure of a 2-D grid sweep and save it to ``out_png``."""
    save_figure(build_heatmap_figure(df, title), out_png)
