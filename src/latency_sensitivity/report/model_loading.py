"""The report's "Model loading" section: each stage of a cold start, and what it costs per request."""

from __future__ import annotations

import pandas as pd
from typing import Sequence

from latency_sensitivity.report.format import (_clean, _gb_s, _isnan, _shorten, fmt_ms, job_seconds,
                                              markdown_table)
from latency_sensitivity.report.series import FAILED, _col, _text, cell_outcome


READ_CEILING_MARGIN = 0.10  # a read this much faster than its cold-read ceiling is not a cold read


def read_suspect(result: dict) -> str | None:
    """Why a loading read's rate cannot be a cold read: faster than the cold read of the same disk, or part of
    the file still in the page cache. None when it is plausible."""
    read, ceiling = result.get("read_gb_s"), result.get("disk_read_gb_s")
    resident = result.get("read_resident_fraction")
    if resident is not None and not _isnan(resident) and resident > 0:
        return (f"{100 * float(resident):.0f}% of the checkpoint was still in the page cache when the read began, "
                f"so the read rate ({_gb_s(read)}) is not a cold read")
    if read is None or ceiling is None or _isnan(read) or _isnan(ceiling) or ceiling <= 0:
        return None
    if float(read) > float(ceiling) * (1 + READ_CEILING_MARGIN):
        return (f"the read ({_gb_s(read)}) is faster than the cold sequential read of the same disk "
                f"({_gb_s(ceiling)}), so part of the checkpoint was read from the page cache: a page-cache drop "
                f"without writing the file back first leaves a freshly written file's dirty pages cached")
    return None


def loading_amortised(result: dict, cells: pd.DataFrame) -> str | None:
    """A cold start in requests: how many of the run's requests (same model and dtype) it costs, per cell kind.

    Uses each ok cell's request_p50_ms (text in, text out), or e2e_p50_ms where tokenisation was not timed.
    """
    if cells.empty or result.get("status") != "ok":
        return None
    sub = cells[~cell_outcome(cells).isin(FAILED)]
    for key in ("model", "dtype"):
        if key in sub.columns and result.get(key) is not None:
            sub = sub[_text(sub, key) == str(result[key])]
    column = "request_p50_ms" if "request_p50_ms" in sub.columns and _col(sub, "request_p50_ms").notna().any() \
        else "e2e_p50_ms"
    if column not in sub.columns:
        return None
    measured = _col(sub, column) > 0  # False for NaN too
    sub, req = sub[measured], _col(sub, column)[measured]
    if req.empty:
        return None
    total_ms = 1000 * float(result["load_total_s"])

    def where(i):
        row = sub.loc[i]
        backend = f" {row['backend']}" if "backend" in sub.columns else ""
        return f"seq_len {row['seq_len']} × batch {row['batch']}{backend}, {fmt_ms(req[i])} ms"

    lo, hi = req.idxmin(), req.idxmax()
    return (f"{result.get('model')} {result.get('dtype')}: the {total_ms / 1000:.2f} s cold start costs as much as "
            f"{total_ms / req[hi]:.1f}–{total_ms / req[lo]:.0f} requests of this run ({where(hi)} – {where(lo)}, "
            f"p50 per request); spread over 1000 requests it adds {total_ms / 1000:.2f} ms to each")


def _checkpoint_job(r: dict) -> list[str]:
    """What writing the checkpoint cost, where its job said (and the part it waited for a GPU)."""
    if not r.get("checkpoint_job_s"):
        return []
    waited = r.get("checkpoint_gpu_wait_s")
    return [f"its checkpoint written by a job of {r['checkpoint_job_s']:.1f} s"
            + (f", {waited:.1f} s of it waiting for a GPU" if waited and waited >= 0.05 else "")]


def loading_section(results: Sequence[dict], cells: pd.DataFrame | None = None) -> str:
    """Model loading stage by stage, with the read and copy rates beside this machine's measured ceilings,
    and (given the run's cells) the cold start amortised over requests."""
    parts = ["A model's weights loaded the way a server's cold start does (latency_sensitivity.measure.loading): read "
             "from storage (after dropping the file from the page cache), deserialise, instantiate the modules, "
             "copy to the device, then a first and a second (warm) prefill forward. Ceilings: a cold sequential "
             "read of a scratch file of the same size, and pinned / pageable host-to-device copies."]
    rows, failed, notes = [], [], []
    for r in results:
        if r.get("status") != "ok":
            failed.append(f"{r.get('checkpoint')} on {r.get('device')}: {_shorten(_clean(r.get('error', '')))}")
            continue
        stages = ["read_s", "deserialise_s", "instantiate_s", "host_to_device_s", "first_forward_s"]
        largest = max(stages, key=lambda k: r[k]).removesuffix("_s").replace("_", " ")
        h2d_ceiling = " / ".join(_gb_s(r.get(k)) for k in ("h2d_pinned_gb_s", "h2d_pageable_gb_s") if r.get(k))
        suspect = read_suspect(r)
        if suspect:
            notes.append(f"{r.get('model')} {r.get('dtype')} on {r.get('device')}: {suspect}")
        rows.append([
            str(r.get("model", "")), r.get("dtype", ""), r.get("device", ""), f"{r['bytes'] / 2**20:.0f}",
            f"{r['read_s']:.3f} ({_gb_s(r['read_gb_s'])}; ceiling {_gb_s(r.get('disk_read_gb_s'))}"
            f"{'' if r.get('read_cold') else ', page cache not dropped'})",
            f"{r['deserialise_s']:.3f}", f"{r['instantiate_s']:.3f}",
            f"{r['host_to_device_s']:.3f}" + (f" ({_gb_s(r.get('host_to_device_gb_s'))}; ceiling {h2d_ceiling})"
                                             if r.get("host_to_device_gb_s") else ""),
            f"{r['first_forward_s']:.3f} (warm {r['warm_forward_s']:.3f})", f"{r['load_total_s']:.3f}", largest,
        ])
    if rows:
        parts += ["", markdown_table(["model", "dtype", "device", "MiB", "read s", "deserialise s", "instantiate s",
                                      "host-to-device s", "first forward s", "total s", "largest stage"], rows,
                                     [False, False, False, True, True, True, True, True, True, True, False])]
    jobs = [f"{r.get('model')} {r.get('dtype')} on {r.get('device')} "
            + job_seconds(r["job_s"], r.get("gpu_wait_s"), *_checkpoint_job(r)) for r in results if r.get("job_s")]
    if jobs:  # what measuring it cost the machine, once per model, dtype and device (not part of any cell)
        parts += ["", "The loading jobs' wall time (a process each, once per model, dtype and device; the "
                  f"checkpoint is written once before, by a job of its own, once per model and dtype): "
                  f"{', '.join(jobs)}."]
    if notes:
        parts += ["", "Suspect:", ""] + [f"- {n}" for n in notes]
    amortised = [a for a in (loading_amortised(r, cells) for r in results) if a] if cells is not None else []
    if amortised:
        parts += ["", "Amortised (loading is not part of a request; a server pays it once per start):", ""]
        parts += [f"- {a}" for a in amortised]
    if failed:
        parts += ["", "Failed:", ""] + [f"- {f}" for f in failed]
    return "\n".join(parts)
