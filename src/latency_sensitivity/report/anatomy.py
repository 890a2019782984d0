"""The request anatomy figure: one stacked bar per measured cell, a request's p50 stages from text in to text out."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from latency_sensitivity.report.figures import _no_data, save_figure  # noqa: E402


ANATOMY_COLORS = {"tokenise": "#8c564b", "prefill (TTFT)": "#1f77b4", "decode": "#ff7f0e", "detokenise": "#2ca02c"}


def build_anatomy_figure(df: pd.DataFrame, title: str) -> Figure:
    """Stacked bars, one per measured cell (and backend): a request's p50 stages, text in to text out."""
    from latency_sensitivity.report.series import anatomy_rows

    rows = anatomy_rows(df)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * max(len(rows), 1) + 2.5), 4.6), layout="constrained")
    if rows.empty:
        _no_data(ax, "no tokenisation timings in this sweep")
        fig.suptitle(title)
        return fig
    labels = []
    for idx in rows.index:
        r = df.loc[idx]
        label = f"s{int(r['seq_len'])}×b{int(r['batch'])}"
        if "backend" in df.columns and df["backend"].nunique() > 1:
            label += f"\n{r['backend']}"
        labels.append(label)
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for stage, color in ANATOMY_COLORS.items():
        values = rows[stage].to_numpy(dtype=float)
        ax.bar(x, values, bottom=bottom, color=color, label=stage, width=0.7)
        bottom += values
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("cell (s = seq_len, b = batch)")
    ax.set_ylabel("ms per request (p50 stages)")
    ax.set_yscale("log" if bottom.max() / max(bottom.min(), 1e-9) > 50 else "linear")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title}: request anatomy (model loading not included)")
    return fig


def plot_anatomy(df: pd.DataFrame, out_png: str | os.PathLike[str], title: str) -> None:
    save_figure(build_anatomy_figure(df, title), out_png)
