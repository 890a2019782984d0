"""Where a measuring worker's main thread was during its first use of the GPU stack and its first cells, from the
samples of stack_sampler/sitecustomize.py (one file per process):

    python3 benchmarks/sweep_cost/stack_windows.py SAMPLE_DIR [--cells N] [--top K] [--depth D]

A worker is a sample file whose stacks pass through the worker's `first_use` (CUDA only) or its `handle`; its
windows are the samples inside `first_use` and inside each of its first N `Worker.handle` calls (a cell). Per
window it prints the wall time from its first to its last sample, the samples' count, the longest gap between
samples (the main thread holding the interpreter in C code, so that the sampler could not run) and the K places
the samples were in most often, each as its D innermost frames. Workers are printed in the order they started.
Where the sampler recorded the main thread's counters (STACK_SAMPLE_SCHED), each window also says how long that
thread was on a CPU (user and system) and waiting for one, and its page faults, from its first sample to its last.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def read(path: Path) -> list[tuple[float, list[str], list[int] | None]]:
    """The samples of one process: (time, stack, counters), the counters where the sampler recorded them
    (STACK_SAMPLE_SCHED): ns on a CPU, ns waiting for one, minor faults, major faults, user ticks, system ticks."""
    samples = []
    for line in path.read_text().splitlines():
        t, stack, *counters = line.split("\t")
        samples.append((float(t), stack.split(" < "), [int(v) for v in counters[0].split()] if counters else None))
    return samples


TICK_S = 0.01  # Linux's clock tick for /proc's stat times (USER_HZ)


def counters_line(samples) -> str | None:
    """The main thread's counters over a window (its first sample to its last), where they were recorded."""
    first, last = samples[0][2], samples[-1][2]
    if first is None or last is None:
        return None
    d = [b - a for a, b in zip(first, last)]
    return (f"main thread: {d[0] / 1e9:.2f} s on a CPU ({d[4] * TICK_S:.2f} s user, {d[5] * TICK_S:.2f} s "
            f"system), {d[1] / 1e9:.3f} s waiting for a CPU, {d[2]} minor and {d[3]} major page faults")


def inside(stack: list[str], function: str) -> bool:
    return any(frame.split(":")[-2] == function for frame in stack)


def windows(samples, cells: int) -> list[tuple[str, list]]:
    out = [("first use", [s for s in samples if inside(s[1], "first_use")])]
    handled = [s for s in samples if inside(s[1], "handle") and inside(s[1], "measure_to_file")]
    groups: list[list] = []
    for s in handled:
        if groups and s[0] - groups[-1][-1][0] < 0.5:
            groups[-1].append(s)
        else:
            groups.append([s])
    out += [(f"cell {i + 1}", g) for i, g in enumerate(groups[:cells])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample_dir")
    ap.add_argument("--cells", type=int, default=2)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    a = ap.parse_args()
    workers = []
    for path in Path(a.sample_dir).glob("*.txt"):
        samples = read(path)
        ws = windows(samples, a.cells)
        starts = [samples[0][0] for _, samples in ws if samples]
        if starts:
            workers.append((min(starts), path.stem, ws))
    for _, pid, ws in sorted(workers):
        print(f"\n## worker pid {pid}\n")
        for name, samples in ws:
            if not samples:
                continue
            times = [s[0] for s in samples]
            gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
            print(f"### {name}: {times[-1] - times[0]:.2f} s, {len(samples)} samples, "
                  f"longest gap {gap * 1000:.0f} ms\n")
            counted = counters_line(samples)
            if counted:
                print(f"- {counted}")
            places = Counter(" < ".join(s[1][-a.depth:]) for s in samples)
            for place, n in places.most_common(a.top):
                print(f"- {n:5d}  {place}")
            print()


if __name__ == "__main__":
    main()
