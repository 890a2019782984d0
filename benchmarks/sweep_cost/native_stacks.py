"""Where processes spent their time inside a call, native frames included, from the py-spy records of
stack_sampler/sitecustomize.py with NATIVE_SAMPLE_DIR (one `<pid>.raw` and `<pid>.json` per process):

    python3 benchmarks/sweep_cost/native_stacks.py SAMPLE_DIR [--under FUNCTION] [--within FUNCTION ...]
        [--top K] [--depth D] [--rate R] [--entry LIBRARY]

Processes are printed in the order they started. Per process and per `--within` function (default: the
worker's `first_use` and its `handle`, a cell; a method matches by its own name), it counts the main thread's
samples whose stack passes through that function and `--under` (default `scaled_dot_product_attention`), as
seconds at R samples a second (default 200, py-spy's rate in the sampler); then the libraries those samples'
innermost frames were in, and the K most frequent paths below the innermost such frame, each its D innermost
frames. With `--entry LIBRARY` (a part of a library's file name, e.g. `libnvrtc`) it also counts, of those
samples, the ones inside that library by where they entered it: the library's outermost named frame and the
nearest named frame outside it that called in.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

LIBRARY = re.compile(r"\(([^():]+)\)$")  # a native frame without symbols: `0x7f... (libname.so.9)`


def read(path: Path) -> list[tuple[list[str], int]]:
    """(frames outermost first, count) for the main thread's lines of a py-spy raw file."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not frames or "MainThread" not in frames[0]:
            continue
        out.append((frames[1:], int(count)))
    return out


def function(frame: str) -> str:
    return frame.split(" (", 1)[0]


def library(frame: str) -> str:
    """The library a native frame is in, or the file of a Python or symbolized frame."""
    m = LIBRARY.search(frame)
    if m:
        return m.group(1)
    inner = frame.rsplit(" (", 1)[-1].rstrip(")")
    return inner.split(":")[0] if inner != frame else frame


def named(frame: str) -> bool:
    return not frame.startswith("0x")


def entries(hits: list[tuple[list[str], int]], lib: str) -> Counter:
    """Samples inside `lib` by (its outermost named frame, the nearest named caller outside it)."""
    out = Counter()
    for below, count in hits:
        inside = [i for i, x in enumerate(below) if lib in library(x)]
        if not inside:
            continue
        first = inside[0]
        entry = next((function(x) for x in below[first:] if lib in library(x) and named(x)), "?")
        caller = next((function(x) for x in reversed(below[:first]) if named(x)), "?")
        out[(entry, caller)] += count
    return out


def report(sample_dir: Path, under: str, within: list[str], top: int, depth: int, rate: float,
           entry: str | None = None) -> str:
    ms = 1000.0 / rate
    processes = []
    for meta in sample_dir.glob("*.json"):
        info = json.loads(meta.read_text())
        raw = meta.with_suffix(".raw")
        if raw.is_file():
            processes.append((info["start"], info, raw))
    lines = [f"# Native samples under `{under}` ({sample_dir})", ""]
    t_first = min((p[0] for p in processes), default=0.0)
    for start, info, raw in sorted(processes, key=lambda p: p[0]):
        stacks = read(raw)
        total = sum(c for _, c in stacks)
        lines.append(f"## pid {info['pid']}, started at +{start - t_first:.1f} s: {total * ms / 1000:.2f} s of "
                     f"main-thread samples")
        for outer in within:
            selected = [(f, c) for f, c in stacks if any(function(x).rsplit(".", 1)[-1] == outer for x in f)]
            hits = []
            for frames, count in selected:
                inner = [i for i, x in enumerate(frames) if under in function(x)]
                if inner:
                    hits.append((frames[inner[-1] + 1:], count))
            n_in, n_hit = sum(c for _, c in selected), sum(c for _, c in hits)
            lines.append(f"- within `{outer}`: {n_in * ms / 1000:.2f} s; under `{under}`: {n_hit * ms / 1000:.2f} s")
            if not n_hit:
                continue
            libs = Counter()
            paths = Counter()
            for below, count in hits:
                libs[library(below[-1]) if below else "(itself)"] += count
                paths[" < ".join(reversed(below[-depth:])) or "(in that frame itself)"] += count
            lines.append("  - innermost frame's library: " + ", ".join(
                f"{lib} {c * ms / 1000:.2f} s" for lib, c in libs.most_common(top)))
            for path, count in paths.most_common(top):
                lines.append(f"  - {count * ms / 1000:.3f} s: {path}")
            if entry:
                into = entries(hits, entry)
                lines.append(f"  - in {entry}: {sum(into.values()) * ms / 1000:.2f} s, entered by " + (", ".join(
                    f"`{e}` from `{c}` {n * ms / 1000:.2f} s" for (e, c), n in into.most_common(top)) or "none"))
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sample_dir", type=Path)
    p.add_argument("--under", default="scaled_dot_product_attention")
    p.add_argument("--within", nargs="+", default=["first_use", "handle"])
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--entry", help="a library (part of its file name) to count samples inside by where they entered")
    a = p.parse_args(argv)
    print(report(a.sample_dir, a.under, a.within, a.top, a.depth, a.rate, a.entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
