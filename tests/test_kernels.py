"""The Triton gemv kernel against torch's linear: on CUDA (autotuned), or in Triton's CPU interpreter."""

import os
import subprocess
import sys

import pytest
import torch

SHAPES = [(64, 48, False), (300, 37, True), (1024, 8, True), (2048, 2560, True)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("k, n, bias", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv_matches_linear_on_cuda(k, n, bias, dtype):
    from latency_sensitivity import kernels

    torch.manual_seed(0)
    x = torch.randn(1, 1, k, device="cuda", dtype=dtype)
    w = torch.randn(n, 2 * k, device="cuda", dtype=dtype)[:, :k]  # rows strided, as a fused weight's slice is not
    b = torch.randn(n, device="cuda", dtype=dtype) if bias else None
    assert kernels.takes_gemv(x, w) and not kernels.takes_gemv(x.expand(1, 2, k), w)
    want = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    got = kernels.linear(x, w, b)
    assert got.shape == (1, 1, n) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2 * k**0.5)
    with pytest.raises(ValueError, match="one input row"):
        kernels.gemv(torch.randn(2, k, device="cuda", dtype=dtype), w)


INTERPRETED = """
import torch
from latency_sensitivity import kernels
torch.manual_seed(0)
for k, n, bias in {shapes}:
    x = torch.randn(1, k).half(); w = torch.randn(n, k).half(); b = torch.randn(n).half() if bias else None
    want = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    for block_n, block_k in ((2, 256), (8, 512)):
        got = kernels.gemv(x, w, b, block_n=block_n, block_k=block_k)
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2 * k ** 0.5)
print("ok")
"""


def test_gemv_matches_linear_in_the_triton_interpreter():
    pytest.importorskip("triton")
    numpy = pytest.importorskip("numpy")
    if tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 3):
        pytest.skip("Triton 3.6's interpreter fails on numpy >= 2.3 (int() of a one-element array)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = INTERPRETED.format(shapes=SHAPES[:3])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
