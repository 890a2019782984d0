"""The between-replicate spread of one sweep, per backend and cell, as a markdown table.

    python3 benchmarks/replicates/spread.py results/batch_sweep/sweep.csv
"""

import sys

import pandas as pd

COLUMNS = ["backend", "seq_len", "batch", "replicates", "prefill_p50_ms", "prefill_replicate_spread_pct",
           "prefill_regime", "decode_p50_ms_per_tok", "decode_replicate_min_ms", "decode_replicate_max_ms",
           "decode_replicate_spread_pct", "decode_p50_ci_low_ms", "decode_p50_ci_high_ms", "decode_regime"]


def main(path: str) -> None:
    frame = pd.read_csv(path)
    frame = frame[[c for c in COLUMNS if c in frame.columns]].sort_values(["backend", "batch", "seq_len"])
    print("| " + " | ".join(frame.columns) + " |")
    print("|" + "---|" * len(frame.columns))
    for _, row in frame.iterrows():
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row) + " |")
    print()
    for backend, sub in frame.groupby("backend", sort=False):
        d, p = sub["decode_replicate_spread_pct"], sub["prefill_replicate_spread_pct"]
        print(f"- {backend}: decode spread {d.min():.1f}-{d.max():.1f}% (median {d.median():.1f}%), "
              f"prefill spread {p.min():.1f}-{p.max():.1f}% (median {p.median():.1f}%)")


if __name__ == "__main__":
    main(sys.argv[1])
