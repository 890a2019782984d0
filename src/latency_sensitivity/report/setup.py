"""The report's setup: environment, settings (from the cells themselves) and how to read the report."""

from __future__ import annotations

from typing import Any, Sequence

from latency_sensitivity.columns import COLUMNS_BY_NAME, LATENCY_METRICS, THROUGHPUT_METRICS
from latency_sensitivity.vocabulary import ARCHITECTURE_SUMMARY, COMPILING_BACKENDS, COMPILING_SETTINGS
from latency_sensitivity.report.findings import NOISE_THRESHOLD
from latency_sensitivity.report.format import FLAT_TOLERANCE, _fmt_value, markdown_table


ENVIRONMENT_KEYS = (
    "hostname",
    "platform",
    "python",
    "torch",
    "transformers",
    "cuda_runtime",
    "driver",
    "device_name",
    "gpu_count",
    "cpu_model",
    "cpu_count",
)


SETTINGS_KEYS = (
    "models",
    "dtypes",
    "backends",
    "device",
    "attn_implementation",
    "gen_tokens",
    "warmup",
    "reps",
    "seed",
    "threads",
    "isolation",
    "compile_shapes",
    "compiled_step",
    "placement",
    "collapse_factor",
)


# The settings each cell records (runner.py's `cell`): {report setting: the cell's key}. A list setting (dtypes,
# backends) lists the values; a scalar one shows its value, or each value with its count where cells differ.
CELL_SETTINGS = {"dtypes": "dtype", "backends": "backend", "device": "device",
                 "attn_implementation": "attn_implementation", "gen_tokens": "gen_tokens", "warmup": "warmup",
                 "reps": "reps", "seed": "seed", "threads": "threads", "isolation": "isolation",
                 "compile_shapes": "compile_shapes", "compiled_step": "compiled_step", "placement": "placement"}
# Settings that only some backends' cells have: {setting: the backends whose cells show it}.
CELL_SETTINGS_OF = {name: COMPILING_BACKENDS for name in COMPILING_SETTINGS}
# What a cell recorded before the setting existed did: {cell key: that value} (not the config's value, which may
# have changed since).
CELL_SETTINGS_BEFORE = COMPILING_SETTINGS


CELL_LIST_SETTINGS = ("dtypes", "backends")


def environment_section(environments: list[dict]) -> str:
    """Key/value table of the cells' environments: one value column per distinct environment."""
    envs = []
    for e in environments or []:
        if e not in envs:
            envs.append(e)
    if not envs:
        return "No environment was recorded."
    keys = [k for k in ENVIRONMENT_KEYS if any(k in e for e in envs)]
    keys += sorted({k for e in envs for k in e} - set(ENVIRONMENT_KEYS))
    headers = ["key"] + (["value"] if len(envs) == 1 else [f"environment {i}" for i in range(1, len(envs) + 1)])
    rows = [[f"`{k}`"] + [_fmt_value(e.get(k)) for e in envs] for k in keys]
    text = markdown_table(headers, rows)
    if len(envs) > 1:
        text = f"The cells ran in {len(envs)} distinct environments.\n\n" + text
    return text


def _models_table(models: Any) -> str | None:
    """Models with their architecture summary, when ``models`` carries one (dict or list of dicts)."""
    entries: list[tuple[str, Any]] = []
    if isinstance(models, dict):
        entries = list(models.items())
    elif isinstance(models, (list, tuple)) and models and all(isinstance(m, dict) for m in models):
        entries = [(str(m.get("name", m.get("model", f"model {i + 1}"))),
                    {k: v for k, v in m.items() if k not in ("name", "model")}) for i, m in enumerate(models)]
    if not entries:
        return None
    if all(isinstance(v, dict) for _, v in entries):
        keys: list[str] = []
        for _, v in entries:
            keys += [k for k in v if k not in keys]
        rows = [[f"`{name}`"] + [_fmt_value(v.get(k)) for k in keys] for name, v in entries]
        return markdown_table(["model"] + keys, rows)
    rows = [[f"`{name}`", _fmt_value(v)] for name, v in entries]
    return markdown_table(["model", "architecture"], rows)


def _counted(values: list) -> Any:
    """One value when all agree, else "v1 (n1 cells), v2 (n2 cells)" in first-seen order."""
    counts: dict[str, int] = {}
    for v in values:
        counts[_fmt_value(v)] = counts.get(_fmt_value(v), 0) + 1
    if len(counts) == 1:
        return values[0]
    return ", ".join(f"{v} ({n} cell{'s' if n != 1 else ''})" for v, n in counts.items())


def cell_settings(results: Sequence[dict], settings: dict | None = None) -> dict:
    """The report's settings as the cells recorded them (each cell's `cell` spec and `architecture`), over the
    config's `settings` (which keeps what cells do not record, e.g. collapse_factor, and the architecture of a
    model none of whose cells got as far as loading it). Where cells differ, each value is shown with its count."""
    out = dict(settings or {})
    specs = [r["cell"] for r in results]
    if not specs:
        return out
    for name, key in CELL_SETTINGS.items():
        backends = CELL_SETTINGS_OF.get(name)
        values = [spec.get(key, CELL_SETTINGS_BEFORE.get(key)) for spec in specs
                  if (key in spec or key in CELL_SETTINGS_BEFORE) and (backends is None or spec.get("backend") in backends)]
        if not values:
            continue
        out[name] = list(dict.fromkeys(values)) if name in CELL_LIST_SETTINGS else _counted(values)
    models: dict[str, dict] = {}
    configured = out.get("models") if isinstance(out.get("models"), dict) else {}
    for name in dict.fromkeys(spec["model"] for spec in specs):
        mine = [r for r in results if r["cell"]["model"] == name]
        archs = [r["architecture"] for r in mine if isinstance(r.get("architecture"), dict)]
        if archs:
            summary = {k: _counted([a.get(k) for a in archs]) for k in ARCHITECTURE_SUMMARY
                       if any(k in a for a in archs)}
        else:
            summary = {k: v for k, v in dict(configured.get(name) or {}).items() if k != "weights"}
        summary["weights"] = _counted([
            "random (from architecture)" if r["cell"].get("model_kind") == "architecture"
            else f"local: {r['cell'].get('model_location')}" for r in mine])
        models[name] = summary
    out["models"] = models
    return out


def settings_section(settings: dict) -> str:
    settings = settings or {}
    if not settings:
        return "No run settings were recorded."
    keys = [k for k in SETTINGS_KEYS if k in settings] + [k for k in settings if k not in SETTINGS_KEYS]
    models_table = _models_table(settings.get("models"))
    rows = []
    for k in keys:
        v = settings[k]
        if k == "models" and models_table is not None:
            names = list(v.keys()) if isinstance(v, dict) else [
                str(m.get("name", m.get("model", ""))) for m in v]
            rows.append([f"`{k}`", ", ".join(names) + " (below)"])
        else:
            rows.append([f"`{k}`", _fmt_value(v)])
    text = markdown_table(["setting", "value"], rows)
    if models_table is not None:
        text += "\n\nModels:\n\n" + models_table
    return text


def _definition(name: str) -> str:
    c = COLUMNS_BY_NAME.get(name)
    if c is None:
        return f"`{name}`"
    unit = f" ({c.unit})" if c.unit else ""
    return f"`{c.name}`{unit}: {c.description}"


def how_to_read_section(settings: dict) -> str:
    prefill = ["prefill_p50_ms", "prefill_ms_per_tok", "prefill_tok_s", "vram_reserved_mb", "peak_rss_mb",
               "ttft_p50_ms"]
    decode = ["decode_p50_ms_per_tok", "decode_tok_s", "total_tok_s", "tpot_p50_ms", "flag"]
    lines = ["Prefill + memory tables (the memory column is `vram_reserved_mb` where it is nonzero, "
             "else `peak_rss_mb`):", ""]
    lines += [f"- {_definition(n)}" for n in prefill]
    lines += ["", "Decode + throughput tables:", ""]
    lines += [f"- {_definition(n)}" for n in decode]
    cf = (settings or {}).get("collapse_factor")
    cf_text = f" `collapse_factor` = {cf}." if cf is not None else ""
    latency = ", ".join(f"`{m}`" for m in LATENCY_METRICS)
    throughput = ", ".join(f"`{m}`" for m in THROUGHPUT_METRICS)
    lines += [
        "",
        "Findings are computed from the table values: a timing *rises* or *falls* only when the change is "
        "larger than the noise of the cells compared (the spread of a cell's replicates where it was measured "
        "in several processes, else half its within-run bootstrap 95% interval, summed over the two cells); "
        "otherwise it stays flat *within noise (±x%)*. Launch-bound cells are labelled host-noise-dominated. "
        f"Without a recorded noise (and for memory) the threshold is {FLAT_TOLERANCE:.0%}. Changes below 2x "
        "are given in percent, larger ones as a factor. A cell is *noisy* when the bootstrap 95% interval of "
        f"its median is wider than {NOISE_THRESHOLD:.0%} of the median.",
        "",
        f"Collapse detection compares each cell along a sweep's axis with the best earlier cell, for the "
        f"latencies {latency} (lower is better) and the throughputs {throughput} (higher is better); along "
        "batch the step time is not compared (a larger batch takes a longer step), throughput is. A change must "
        "also exceed the two cells' noise. A batch series *saturates* where a doubling of the batch no longer "
        f"raises throughput by more than the noise, at that batch or any larger one. {_definition('flag_detail')}{cf_text}",
    ]
    if "compiled" in ((settings or {}).get("backends") or []):
        lines += [
            "",
            "Compiled cells autotune their Triton kernels and compile their step once per machine, and every "
            "replicate reuses that choice from results/cache/compile/: their replicate spread leaves it out, and the "
            "same compiled cell can measure further apart on two machines of one kind than its replicates do "
            "(benchmarks/sweep_cost/NOTES.md).",
        ]
    placement = str((settings or {}).get("placement") or "")
    if (settings or {}).get("device") == "cuda" and "by_replicate" in placement:
        lines += [
            "",
            "Each replicate after the first built its model and cache at another place in device memory "
            "(placement by_replicate; the MiB it held meanwhile is each cell's `placement_pad_mb`), so the replicate "
            "spread includes how much a cell depends on where it lands: a GPU-bound cell can take one of a few "
            "levels, and with few "
            "replicates its median can fall on either.",
        ]
    if (settings or {}).get("device") == "cuda" and "fixed" in placement:
        lines += [
            "",
            "Replicates with placement fixed built their model and cache in the same order in a fresh process, so "
            "they landed at the same place in device memory: their spread leaves out how much a cell depends on "
            "where it lands (benchmarks/sweep_cost/NOTES.md).",
        ]
    return "\n".join(lines)
