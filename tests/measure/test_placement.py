import json

import pytest
import torch

from conftest import cell_spec
from latency_sensitivity.config import MODELS_DIR
from latency_sensitivity.measure import cell, placement, runner
from latency_sensitivity.measure.placement import Pad, pad_mib

TINY = str(MODELS_DIR / "tiny-qwen2.json")


def runner_argv(out):
    return ["--model", "tiny", "--model-kind", "architecture", "--model-location", TINY, "--dtype", "fp32",
            "--device", "cpu", "--seq", "8", "--batch", "1", "--gen-tokens", "3", "--warmup", "0", "--reps", "1",
            "--out", str(out)]


def test_replicate_one_and_fixed_hold_nothing():
    assert pad_mib("by_replicate", 1, free_mib=80_000) == 0
    for replicate in range(1, 6):
        assert pad_mib("fixed", replicate, free_mib=80_000) == 0


def test_later_replicates_hold_different_even_sizes_within_the_span():
    pads = [pad_mib("by_replicate", r, free_mib=1_000_000) for r in range(2, 12)]
    assert len(set(pads)) == len(pads)
    assert all(0 <= p < placement.SPAN_MIB and p % 2 == 0 for p in pads)
    assert min(pads) < placement.SPAN_MIB / 4 and max(pads) > placement.SPAN_MIB * 3 / 4  # spread over the span
    assert pad_mib("by_replicate", 2, free_mib=1_000_000) == pad_mib("by_replicate", 2, free_mib=1_000_000)


def test_pad_never_takes_more_than_its_share_of_free_memory():
    free = 10_000
    for r in range(2, 12):
        assert pad_mib("by_replicate", r, free_mib=free) <= placement.SHARE_OF_FREE * free
    assert pad_mib("by_replicate", 2, free_mib=0) == 0


def test_unknown_placement_is_an_error():
    with pytest.raises(ValueError, match="placement"):
        pad_mib("random", 2, free_mib=1000)


def test_pad_off_cuda_holds_nothing():
    pad = Pad("by_replicate", 3, cuda=False).hold()
    assert pad.mib == 0
    pad.release()


def test_runner_takes_placement_and_records_the_pad(tmp_path):
    out = tmp_path / "cell.json"
    argv = runner_argv(out) + ["--placement", "by_replicate", "--replicate", "2"]
    spec = runner.parse_args(argv)[0]
    assert spec.placement == "by_replicate" and spec.replicate == 2
    assert runner.parse_args(runner_argv(out))[0].placement == "fixed"
    with pytest.raises(SystemExit):
        runner.parse_args(runner_argv(out) + ["--placement", "random"])
    assert runner.main(argv) == 0
    r = json.loads(out.read_text())
    assert r["status"] == "ok", r["error"]
    assert r["cell"]["placement"] == "by_replicate"
    assert r["metrics"]["placement_pad_mb"] == 0 and r["placement_pad_mb"] == 0  # nothing is moved on the CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_replicate_holds_its_pad_while_building_and_frees_it_before_measuring():
    free_mib = torch.cuda.mem_get_info()[0] / 2**20
    r = cell.measure(cell_spec(device="cuda", dtype="fp16", seq_len=64, batch=2, gen_tokens=4, reps=2,
                            placement="by_replicate", replicate=2))
    assert r["status"] == "ok", r["error"]
    m = r["metrics"]
    assert m["placement_pad_mb"] == pad_mib("by_replicate", 2, free_mib) > 0
    assert m["vram_reserved_mb"] < m["placement_pad_mb"]  # freed and returned before the measured reps
    first = cell.measure(cell_spec(device="cuda", dtype="fp16", seq_len=64, batch=2, gen_tokens=4, reps=2,
                                placement="by_replicate", replicate=1))
    assert first["metrics"]["placement_pad_mb"] == 0


def test_a_cell_that_fails_after_holding_its_pad_still_releases_it(monkeypatch):
    """The pad is released on every path: a cell whose model build fails is an error row, and its pad is not kept
    into the next cell of a shared worker."""
    events = []

    class RecordingPad:
        def __init__(self, placement, replicate, cuda):
            self.mib = 0

        def hold(self):
            events.append("hold")
            return self

        def release(self):
            events.append("release")

    def failing_build(spec, cfg):
        raise RuntimeError("build failed")

    monkeypatch.setattr(cell, "Pad", RecordingPad)
    monkeypatch.setattr(cell, "build_model", failing_build)
    r = cell.measure(cell_spec(placement="by_replicate", replicate=2))
    assert r["status"] == "error" and "build failed" in r["error"]["message"]
    assert events == ["hold", "release"]
