"""The end of a run: how many cells are ok, ran out of memory or failed, and each failure with its message.

Printed by the workflow's `all` rule after every run (also when nothing had to be measured), by its error
handler when a job failed, and by `latency-sensitivity sweep`. An out-of-memory cell is a measurement; a cell
with status `error`, a result file that cannot be read, or a failed model-loading measurement makes the run
fail unless errors are allowed (config `allow_errors`).

    python -m latency_sensitivity.analysis.run_summary [--allow-errors] RESULT.json ...
    python -m latency_sensitivity.analysis.run_summary --results results       # every cell and loading file there
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from latency_sensitivity.analysis.merge import UnreadableCell, read_result

STATUSES = ("ok", "oom", "error")


@dataclass
class RunSummary:
    """Result files by outcome; failures as (path, first line of the message)."""

    cells: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: {s: [] for s in STATUSES})
    loading: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: {s: [] for s in STATUSES})
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[tuple[str, str]]:
        """Everything that makes a run fail: error cells, failed loading measurements, unreadable files."""
        return [*self.cells["error"], *self.loading["error"], *self.unreadable]

    def lines(self, allow_errors: bool = False) -> list[str]:
        c = self.cells
        out = [f"cells: {len(c['ok'])} ok, {len(c['oom'])} oom, {len(c['error'])} error"]
        if any(self.loading.values()):
            out.append(f"model loading: {len(self.loading['ok'])} ok, {len(self.loading['error'])} error")
        for label, items in (("error", c["error"]), ("oom", c["oom"]), ("error", self.loading["error"]),
                             ("unreadable", self.unreadable)):
            out.extend(f"  {label:<10} {path}: {message}" for path, message in items)
        if self.missing:
            out.append(f"  not measured: {len(self.missing)} cell{'s' if len(self.missing) != 1 else ''} "
                       f"(no result file yet), e.g. {self.missing[0]}")
        if self.errors:
            n = len(self.errors)
            if allow_errors:
                out.append(f"{n} failed, allowed by the config (allow_errors: true)")
            else:
                out.append(f"{n} failed: the run exits non-zero (its sweeps, plots and report are written).")
                out.append("  measure them again: snakemake --cores 1 all --forcerun $(latency-sensitivity "
                           "failed-cells); accept them: allow_errors: true")
        return out

    def text(self, allow_errors: bool = False) -> str:
        return "\n".join(self.lines(allow_errors)) + "\n"


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else "(no message)"


def _message(result: dict) -> str:
    error = result.get("error")
    if isinstance(error, dict):
        return _first_line(error.get("message") or error.get("type") or "")
    return _first_line(error or "")


def read_results(paths: Iterable[str | Path]) -> RunSummary:
    """Read cell and loading result files; one that is missing, unreadable or without a known status is named."""
    summary = RunSummary()
    for path in map(Path, paths):
        if not path.exists():
            summary.missing.append(str(path))
            continue
        # results/loading/<model>/<dtype>/<device>.json; anything else counts as a cell
        loading = len(path.parts) >= 4 and path.parts[-4] == "loading"
        try:
            result = read_result(path)  # the summary needs the status alone
        except UnreadableCell as exc:
            summary.unreadable.append((str(path), _first_line(exc.problem)))
            continue
        status = result["status"]
        if status not in STATUSES:
            summary.unreadable.append((str(path), f"unknown status {status!r}"))
            continue
        group = summary.loading if loading else summary.cells
        group[status].append((str(path), "" if status == "ok" else _message(result)))
    return summary


def result_files(results: str | Path) -> list[Path]:
    """The cell and model-loading result files under a results folder."""
    results = Path(results)
    return sorted(results.glob("cells/**/*.json")) + sorted(results.glob("loading/**/*.json"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latency_sensitivity.analysis.run_summary", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help="cell and loading result files")
    p.add_argument("--results", help="a results folder: every cell and loading file in it")
    p.add_argument("--allow-errors", action="store_true", help="exit 0 even when cells failed")
    a = p.parse_args(argv)
    files = [*a.files, *(result_files(a.results) if a.results else [])]
    summary = read_results(files)
    print(summary.text(a.allow_errors), end="")
    return 1 if summary.errors and not a.allow_errors else 0


if __name__ == "__main__":
    sys.exit(main())
