"""Tests of latency_sensitivity.report.figures on synthetic sweep frames (no GPU, no pipeline)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from latency_sensitivity.report import figures as plots
from latency_sensitivity.report import anatomy
from latency_sensitivity.report import heatmap

METRICS = ("prefill_ms_per_tok", "prefill_tok_s", "decode_p50_ms_per_tok", "decode_tok_s", "total_tok_s")
PANEL_PREFILL_MS, PANEL_PREFILL_TOK, PANEL_DECODE_MS, PANEL_DECODE_TOK, PANEL_TOTAL, PANEL_MEMORY = range(6)


def make_row(seq: int, batch: int, model: str = "tiny-qwen2", dtype: str = "fp32", backend: str = "eager", **over):
    pre = 0.5 + seq * batch * 0.002  # prefill_p50_ms
    dec = 5.0 + 0.001 * seq * batch  # decode ms/step
    row = {
        "model": model,
        "dtype": dtype,
        "backend": backend,
        "seq_len": seq,
        "batch": batch,
        "status": "ok",
        "flag": "ok",
        "prefill_p50_ms": pre,
        "prefill_ms_per_tok": pre / (seq * batch),
        "prefill_tok_s": seq * batch * 1000 / pre,
        "prefill_p10_ms": pre * 0.9,
        "prefill_p90_ms": pre * 1.2,
        "decode_p50_ms_per_tok": dec,
        "decode_p10_ms_per_tok": dec * 0.95,
        "decode_p90_ms_per_tok": dec * 1.1,
        "decode_tok_s": batch * 1000 / dec,
        "total_tok_s": batch * (seq + 16) * 1000 / (pre + 15 * dec),
        "vram_reserved_mb": 100 + 0.05 * seq * batch,
        "vram_allocated_mb": 80 + 0.04 * seq * batch,
        "peak_rss_mb": 500.0,
    }
    row.update(over)
    return row


def failed(row: dict, kind: str) -> dict:
    out = dict(row)
    for key in (*METRICS, "prefill_p50_ms", "prefill_p10_ms", "prefill_p90_ms", "decode_p10_ms_per_tok",
                "decode_p90_ms_per_tok", "vram_reserved_mb", "vram_allocated_mb", "peak_rss_mb"):
        out[key] = float("nan")
    out["status"] = kind
    out["flag"] = kind
    return out


def gid_lines(ax: Axes, gid: str):
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def gid_collections(ax: Axes, gid: str):
    return [c for c in ax.collections if c.get_gid() == gid]


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


@pytest.fixture(autouse=True)
def _no_leaks():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


SEQS = (128, 256, 512, 1024, 2048)


# ------------------------------------------------------------------------------------------ sweep figure


def test_sweep_figure_has_six_panels_and_log2_axis_with_exact_ticks():
    df = pd.DataFrame([make_row(s, 1) for s in SEQS])
    fig = plots.build_sweep_figure(df, "seq_len", "seq sweep")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert ax.xaxis.get_transform().base == 2
        assert list(ax.get_xticks()) == list(SEQS)
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(s) for s in SEQS]
        assert len(ax.xaxis.get_minorticklocs()) == 0
        assert ax.get_xlabel().startswith("seq_len")


def test_sweep_panels_plot_the_named_columns_sorted_by_axis():
    rows = [make_row(s, 1) for s in SEQS]
    df = pd.DataFrame(rows[::-1])  # reversed: the figure must sort
    fig = plots.build_sweep_figure(df, "seq_len", "t")
    for panel, column in enumerate(METRICS):
        (line,) = gid_lines(fig.axes[panel], "series")
        np.testing.assert_array_equal(line.get_xdata(), SEQS)
        np.testing.assert_allclose(line.get_ydata(), [r[column] for r in rows])
    # memory: reserved solid, allocated dashed (GPU frame)
    (solid,) = gid_lines(fig.axes[PANEL_MEMORY], "series")
    (dashed,) = gid_lines(fig.axes[PANEL_MEMORY], "series-secondary")
    np.testing.assert_allclose(solid.get_ydata(), [r["vram_reserved_mb"] for r in rows])
    np.testing.assert_allclose(dashed.get_ydata(), [r["vram_allocated_mb"] for r in rows])
    assert solid.get_linestyle() == "-"
    assert dashed.get_linestyle() == "--"


def test_memory_panel_falls_back_to_rss_on_cpu():
    df = pd.DataFrame([make_row(s, 1, vram_reserved_mb=0.0, vram_allocated_mb=0.0, peak_rss_mb=float(s)) for s in SEQS])
    fig = plots.build_sweep_figure(df, "seq_len", "cpu")
    ax = fig.axes[PANEL_MEMORY]
    (line,) = gid_lines(ax, "series")
    np.testing.assert_allclose(line.get_ydata(), SEQS)
    assert gid_lines(ax, "series-secondary") == []
    assert "peak_rss_mb" in ax.get_ylabel()


def test_one_line_per_series_on_decode_panel_with_labels():
    rows = [make_row(s, 1, model=m, dtype=d) for m in ("m-a", "m-b") for d in ("fp16", "bf16") for s in SEQS]
    fig = plots.build_sweep_figure(pd.DataFrame(rows), "seq_len", "t")
    lines = gid_lines(fig.axes[PANEL_DECODE_MS], "series")
    assert len(lines) == 4
    assert sorted(line.get_label() for line in lines) == ["m-a bf16", "m-a fp16", "m-b bf16", "m-b fp16"]
    assert len({line.get_color() for line in lines}) == 4
    texts = legend_texts(fig)
    assert {"m-a bf16", "m-a fp16", "m-b bf16", "m-b fp16"} <= set(texts)
    assert "collapse" not in texts and "OOM" not in texts
    # the constant parts go into the title instead
    assert "eager" in fig.get_suptitle() and "batch=1" in fig.get_suptitle()


def test_grid_along_seq_gives_one_line_per_batch():
    batches = (1, 2, 4, 8)
    rows = [make_row(s, b) for b in batches for s in SEQS]
    fig = plots.build_sweep_figure(pd.DataFrame(rows), "seq_len", "grid")
    lines = gid_lines(fig.axes[PANEL_DECODE_TOK], "series")
    assert [line.get_label() for line in lines] == [f"batch={b}" for b in batches]
    for line, b in zip(lines, batches):
        np.testing.assert_array_equal(line.get_xdata(), SEQS)
        np.testing.assert_allclose(line.get_ydata(), [make_row(s, b)["decode_tok_s"] for s in SEQS])


def test_grid_along_batch_gives_one_line_per_seq_len_and_batch_ticks():
    batches = (1, 2, 4, 8, 16)
    rows = [make_row(s, b) for s in (128, 1024) for b in batches]
    fig = plots.build_sweep_figure(pd.DataFrame(rows), "batch", "grid")
    ax = fig.axes[PANEL_TOTAL]
    assert [line.get_label() for line in gid_lines(ax, "series")] == ["seq_len=128", "seq_len=1024"]
    assert list(ax.get_xticks()) == list(batches)
    assert ax.get_xlabel().startswith("batch")


def test_collapse_marker_only_on_the_panels_whose_metric_collapsed():
    rows = [make_row(s, 1) for s in SEQS]
    rows[3]["flag"] = "collapse"  # seq 1024
    rows[3]["flag_detail"] = ("decode_p50_ms_per_tok 2.10x higher than the best earlier cell (seq_len=128); "
                              "decode_tok_s 2.10x lower than the best earlier cell (seq_len=128)")
    df = pd.DataFrame(rows)
    fig = plots.build_sweep_figure(df, "seq_len", "t")
    marked = {}
    for panel, column in enumerate((*METRICS, "vram_reserved_mb")):
        markers = gid_collections(fig.axes[panel], "collapse")
        marked[column] = bool(markers)
        for marker in markers:
            np.testing.assert_allclose(marker.get_offsets(), [[1024, rows[3][column]]])
            assert marker.get_sizes()[0] >= 100
            np.testing.assert_allclose(marker.get_facecolors()[0][:3], (1.0, 0.0, 0.0))
    assert {c for c, m in marked.items() if m} == {"decode_p50_ms_per_tok", "decode_tok_s"}
    assert legend_texts(fig).count("collapse") == 1
    # a detail that names no metric: every metric panel is marked, never the memory panel
    df = pd.DataFrame([dict(r, flag_detail="") for r in rows])
    fig = plots.build_sweep_figure(df, "seq_len", "t")
    assert [bool(gid_collections(fig.axes[p], "collapse")) for p in range(6)] == [True] * 5 + [False]


def test_memory_axis_starts_at_zero_and_error_bars_are_explained():
    rows = [make_row(s, 1, vram_reserved_mb=5000.0 + s, prefill_p10_ms=1.0, prefill_p90_ms=2.0) for s in SEQS]
    fig = plots.build_sweep_figure(pd.DataFrame(rows), "seq_len", "t")
    assert fig.axes[PANEL_MEMORY].get_ylim()[0] == 0
    assert any(t.startswith("error bars: p10–p90") for t in legend_texts(fig))


def test_oom_row_is_marked_at_the_bottom_not_plotted():
    rows = [make_row(s, 1) for s in SEQS]
    rows[-1] = failed(rows[-1], "oom")
    rows[-2] = failed(rows[-2], "error")
    fig = plots.build_sweep_figure(pd.DataFrame(rows), "seq_len", "t")
    for ax in fig.axes:
        (oom,) = gid_lines(ax, "oom")
        (err,) = gid_lines(ax, "error")
        np.testing.assert_array_equal(oom.get_xdata(), [2048])
        np.testing.assert_array_equal(err.get_xdata(), [1024])
        assert oom.get_marker() != err.get_marker()
        # y is an axes fraction near the bottom, whatever the data scale
        y = float(np.asarray(oom.get_ydata())[0])
        assert 0 < y < 0.1
        x_disp, y_disp = oom.get_transform().transform((2048, y))
        (bottom_y,) = ax.transAxes.transform((0, y))[1:]
        assert math.isclose(y_disp, bottom_y)
        assert math.isclose(x_disp, ax.transData.transform((2048, 1))[0])
    (line,) = gid_lines(fig.axes[PANEL_DECODE_MS], "series")
    assert np.isnan(line.get_ydata()[-2:]).all()
    texts = legend_texts(fig)
    assert "OOM" in texts and "error" in texts
    assert list(fig.axes[0].get_xticks()) == list(SEQS)  # failed cells still get a tick


def test_failed_status_masks_metrics_even_when_present():
    rows = [make_row(s, 1) for s in SEQS]
    rows[0]["status"] = "oom"  # metrics left in place: must not be drawn
    fig = plots.build_sweep_figure(pd.DataFrame(rows), "seq_len", "t")
    (line,) = gid_lines(fig.axes[PANEL_PREFILL_TOK], "series")
    assert np.isnan(line.get_ydata()[0])
    assert np.isfinite(line.get_ydata()[1:]).all()


def test_flag_alone_marks_failure_without_status_column():
    rows = [make_row(s, 1) for s in SEQS]
    rows[2] = failed(rows[2], "oom")
    df = pd.DataFrame(rows).drop(columns=["status"])
    fig = plots.build_sweep_figure(df, "seq_len", "t")
    (oom,) = gid_lines(fig.axes[PANEL_DECODE_MS], "oom")
    np.testing.assert_array_equal(oom.get_xdata(), [512])


def test_series_with_only_failed_rows():
    rows = [make_row(s, 1, model="ok-model") for s in SEQS]
    rows += [failed(make_row(s, 1, model="big-model"), "oom") for s in SEQS]
    fig = plots.build_sweep_figure(pd.DataFrame(rows), "seq_len", "t")
    ax = fig.axes[PANEL_DECODE_MS]
    assert len(gid_lines(ax, "series")) == 2
    (oom,) = gid_lines(ax, "oom")
    np.testing.assert_array_equal(oom.get_xdata(), SEQS)


def test_only_failed_rows_overall():
    df = pd.DataFrame([failed(make_row(s, 1), "oom") for s in SEQS])
    fig = plots.build_sweep_figure(df, "seq_len", "t")
    assert len(fig.axes) == 6
    assert list(fig.axes[0].get_xticks()) == list(SEQS)


def test_spread_error_bars_scaled_per_token():
    rows = [make_row(s, 2) for s in SEQS]
    fig = plots.build_sweep_figure(pd.DataFrame(rows), "seq_len", "t")
    (bars,) = [c for c in gid_collections(fig.axes[PANEL_PREFILL_MS], "spread")]
    segments = bars.get_segments()
    assert len(segments) == len(SEQS)
    for seg, row in zip(segments, rows):
        tokens = row["seq_len"] * row["batch"]
        np.testing.assert_allclose(seg[:, 0], [row["seq_len"]] * 2)
        np.testing.assert_allclose(sorted(seg[:, 1]), [row["prefill_p10_ms"] / tokens, row["prefill_p90_ms"] / tokens])
    (dbars,) = gid_collections(fig.axes[PANEL_DECODE_MS], "spread")
    for seg, row in zip(dbars.get_segments(), rows):
        np.testing.assert_allclose(sorted(seg[:, 1]), [row["decode_p10_ms_per_tok"], row["decode_p90_ms_per_tok"]])
    assert gid_collections(fig.axes[PANEL_DECODE_TOK], "spread") == []


def test_minimal_columns_single_row_and_nans():
    df = pd.DataFrame(
        {
            "seq_len": [512],
            "batch": [4],
            "flag": ["ok"],
            "prefill_ms_per_tok": [0.01],
            "decode_p50_ms_per_tok": [np.nan],
        }
    )
    fig = plots.build_sweep_figure(df, "seq_len", "minimal")
    assert len(fig.axes) == 6
    assert list(fig.axes[0].get_xticks()) == [512]
    lo, hi = fig.axes[0].get_xlim()
    assert lo < 512 < hi
    (line,) = gid_lines(fig.axes[PANEL_PREFILL_MS], "series")
    assert line.get_label() == "measured"
    # absent metric columns get no line, just a note
    assert gid_lines(fig.axes[PANEL_PREFILL_TOK], "series") == []
    assert any("not measured" in t.get_text() for t in fig.axes[PANEL_PREFILL_TOK].texts)
    assert any("not measured" in t.get_text() for t in fig.axes[PANEL_MEMORY].texts)


def test_bad_axis_rejected():
    with pytest.raises(ValueError):
        plots.build_sweep_figure(pd.DataFrame([make_row(128, 1)]), "tokens", "t")


def test_wide_range_gets_log_y():
    rows = [make_row(s, 1, prefill_ms_per_tok=10.0 ** -i) for i, s in enumerate(SEQS)]
    fig = plots.build_sweep_figure(pd.DataFrame(rows), "seq_len", "t")
    assert fig.axes[PANEL_PREFILL_MS].get_yscale() == "log"
    assert fig.axes[PANEL_DECODE_MS].get_yscale() == "linear"


# --------------------------------------------------------------------------------------------- heat map


def _grid_frame(seqs=(128, 512, 2048), batches=(1, 4, 16, 64), models=("tiny-qwen2",)):
    rows = []
    for m in models:
        for s in seqs:
            for b in batches:
                rows.append(make_row(s, b, model=m))
    return rows


def _heat_image(ax: Axes):
    (image,) = ax.get_images()
    return np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)


def test_heatmap_shape_values_and_oom_cells():
    seqs, batches = (128, 512, 2048), (1, 4, 16, 64)
    rows = _grid_frame(seqs, batches)
    rows[-1] = failed(rows[-1], "oom")  # (2048, 64)
    rows[-2] = failed(rows[-2], "error")  # (2048, 16)
    rows[5]["flag"] = "collapse"  # (512, 4)
    rows[5]["flag_detail"] = "prefill_ms_per_tok 2.50x higher than the best earlier cell (batch=1)"
    df = pd.DataFrame(rows[::-1])  # unsorted input
    fig = heatmap.build_heatmap_figure(df, "grid")
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 4
    ax = panels[0]  # prefill_ms_per_tok
    arr = _heat_image(ax)
    assert arr.shape == (len(seqs), len(batches))
    assert np.isnan(arr[2, 3]) and np.isnan(arr[2, 2])
    assert np.isfinite(arr[:2]).all() and np.isfinite(arr[2, :2]).all()
    assert arr[0, 0] == pytest.approx(make_row(128, 1)["prefill_ms_per_tok"])
    assert arr[1, 2] == pytest.approx(make_row(512, 16)["prefill_ms_per_tok"])
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(s) for s in seqs]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(b) for b in batches]
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    assert texts[(3, 2)] == "OOM"
    assert texts[(2, 2)] == "err"
    assert texts[(0, 0)] == plots._format3(make_row(128, 1)["prefill_ms_per_tok"])
    outlines = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_gid() == "collapse"]
    assert len(outlines) == 1
    assert outlines[0].get_xy() == (1 - 0.5, 1 - 0.5)
    assert "collapse" in legend_texts(fig)
    # only the panel of the metric that collapsed is outlined
    assert [len([p for p in a.patches if p.get_gid() == "collapse"]) for a in panels] == [1, 0, 0, 0]


def test_heatmap_one_row_of_panels_per_series_and_custom_metrics():
    rows = _grid_frame(models=("a", "b"))
    fig = heatmap.build_heatmap_figure(pd.DataFrame(rows), "two", metrics=("decode_tok_s", "total_tok_s"))
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 4
    assert "a" in panels[0].get_title().split("\n")[0] and "b" in panels[2].get_title().split("\n")[0]
    np.testing.assert_allclose(_heat_image(panels[0])[1, 1], make_row(512, 4)["decode_tok_s"])


def test_heatmap_missing_metric_and_missing_cells():
    rows = _grid_frame()
    del rows[0]  # (128, 1) never measured
    df = pd.DataFrame(rows).drop(columns=["total_tok_s", "status", "model", "dtype", "backend"])
    fig = heatmap.build_heatmap_figure(df, "partial")
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 3
    arr = _heat_image(panels[0])
    assert arr.shape == (3, 4) and np.isnan(arr[0, 0])
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in panels[0].texts}
    assert texts[(0, 0)] == "n/a"


@pytest.mark.parametrize(
    ("value", "text"),
    [(1234.0, "1230"), (0.0012345, "0.00123"), (13.24, "13.2"), (5.0, "5.00"), (0.0, "0"), (float("nan"), "n/a")],
)
def test_format3(value, text):
    assert plots._format3(value) == text


# ------------------------------------------------------------------------------------------------ saving


def test_save_figure_writes_png_atomically(tmp_path: Path):
    fig = plots.build_sweep_figure(pd.DataFrame([make_row(s, 1) for s in SEQS]), "seq_len", "t")
    out = tmp_path / "nested" / "dir" / "fig.png"
    plots.save_figure(fig, out, dpi=40)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["fig.png"]


def test_save_figure_replaces_existing_and_cleans_up_on_failure(tmp_path: Path):
    out = tmp_path / "fig.png"
    out.write_bytes(b"old")
    plots.save_figure(Figure(), out, dpi=20)
    assert out.read_bytes()[:4] == b"\x89PNG"

    class Broken(Figure):
        def savefig(self, *args, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        plots.save_figure(Broken(), tmp_path / "broken.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]


def test_plot_sweep_and_plot_heatmap_write_files(tmp_path: Path):
    df = pd.DataFrame(_grid_frame())
    plots.plot_sweep(df, "batch", tmp_path / "sweep.png", "sweep")
    heatmap.plot_heatmap(df, tmp_path / "heat.png", "heat")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.png", "sweep.png"]


def test_anatomy_figure(tmp_path):
    from latency_sensitivity.report import figures as plots

    df = pd.DataFrame({"seq_len": [128, 4096], "batch": [1, 1], "backend": ["eager", "eager"], "status": "ok",
                       "flag": "ok", "tokenize_p50_ms": [0.1, 2.0], "ttft_p50_ms": [30.0, 60.0],
                       "e2e_p50_ms": [100.0, 1060.0], "detokenize_p50_ms": [0.1, 0.1]})
    out = tmp_path / "anatomy.png"
    assert anatomy.build_anatomy_figure(df, "seq_sweep").axes[0].get_xlabel() == "cell (s = seq_len, b = batch)"
    anatomy.plot_anatomy(df, out, "seq_sweep")
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 5000
    anatomy.plot_anatomy(df.drop(columns=["tokenize_p50_ms"]), tmp_path / "empty.png", "x")  # says: no data
    assert (tmp_path / "empty.png").exists()
