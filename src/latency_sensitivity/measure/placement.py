"""Where a cell's weights and cache land in device memory (``measure.placement``).

A fresh process allocates the same tensors in the same order every time, so a cell measured in processes of its
own lands at the same device addresses in every replicate, and a GPU-bound cell's speed can depend on where it
lands (benchmarks/sweep_cost/NOTES.md, "Where the model lands"). With ``by_replicate`` each replicate after the
first holds a buffer while the model and the backend are allocated, of a size set by its number, so the
replicates land at different places and their spread includes it. (In a worker the model is built once, by its
first cell, with the buffer held; its later cells hold it while their backends are allocated.)
"""

from __future__ import annotations

from latency_sensitivity.vocabulary import PLACEMENTS

SPAN_MIB = 4096  # pads are spread over [0, SPAN_MIB)
SHARE_OF_FREE = 0.05  # and never take more than this share of the device's free memory
_GOLDEN = 0.6180339887498949  # successive replicates' pads spread evenly over the span (Weyl sequence)


def pad_mib(placement: str, replicate: int, free_mib: float) -> int:
    """MiB to hold while a replicate's model and backend are allocated: 0 for replicate 1 and with placement
    fixed; else a size set by the replicate's number, capped by SHARE_OF_FREE of the free memory, in 2 MiB steps
    (the allocator's large-block granularity)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
    if placement == "fixed" or replicate <= 1:
        return 0
    want = ((replicate - 1) * _GOLDEN) % 1.0 * SPAN_MIB
    return int(min(want, SHARE_OF_FREE * free_mib)) // 2 * 2


class Pad:
    """A device buffer held from hold() until release(); release frees it and returns it to the driver, so the
    cell's memory counters do not include it."""

    def __init__(self, placement: str, replicate: int, cuda: bool):
        self.placement, self.replicate, self.cuda = placement, replicate, cuda
        self.mib = 0
        self._buffer = None

    def hold(self) -> "Pad":
        if not self.cuda:
            return self
        import torch

        free, _ = torch.cuda.mem_get_info()
        self.mib = pad_mib(self.placement, self.replicate, free / 2**20)
        if self.mib:
            self._buffer = torch.empty(self.mib * 2**20, dtype=torch.uint8, device="cuda")
        return self

    def release(self) -> None:
        if self._buffer is None:
            return
        import torch

        self._buffer = None
        torch.cuda.empty_cache()
