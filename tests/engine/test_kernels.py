"""The Triton kernels against torch: the gemv kernel against torch's linear, its fused forms, the q/k/v product
with rotation and cache write, and the decode attention against the torch forms of fused_decode; on CUDA
(autotuned), or in Triton's CPU interpreter."""

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
    from latency_sensitivity.engine import kernels

    torch.manual_seed(0)
    x = torch.randn(1, 1, k, device="cuda", dtype=dtype)
    w = torch.randn(n, 2 * k, device="cuda", dtype=dtype)[:, :k]  # rows strided, as a fused weight's slice is not
    b = torch.randn(n, device="cuda", dtype=dtype) if bias else None
    assert kernels.takes_gemv(x, w) and not kernels.takes_gemv(x.expand(1, 2, k), w)
    want = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    if (k, n, bias) == SHAPES[-1] and dtype == torch.float16:
        got = kernels.linear(x, w, b)  # autotuned (every config compiled and timed: once here)
    else:
        got = kernels.gemv(x, w, b, block_n=8, block_k=512)
    assert got.shape == (1, 1, n) and got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2 * k**0.5)
    with pytest.raises(ValueError, match="one input row"):
        kernels.gemv(torch.randn(2, k, device="cuda", dtype=dtype), w)


def check_fused_forms(device, tiling):
    """Every fused form of the gemv kernel and the decode attention against fused_decode's torch forms.

    tiling: {} on CUDA (autotuned); fixed block sizes in the interpreter."""
    from latency_sensitivity.engine import fused_decode as fd
    from latency_sensitivity.engine import forms
    from latency_sensitivity.engine import kernels

    torch.manual_seed(0)
    hidden, n = 96, 80

    def rand(*shape):
        return torch.randn(*shape, device=device).half()

    w, bias, g = rand(n, hidden) * 0.1, rand(n), (torch.rand(hidden, device=device) + 0.5).half()
    for x_mode, x in ((forms.X_ROW, rand(1, 1, hidden)), (forms.X_PAIR, rand(1, 1, 2, hidden)),
                      (forms.X_SILU_MUL, rand(1, 1, 2 * hidden))):
        for norm in (None, g):
            for residual in (None, rand(1, 1, n), rand(1, 1, 2, n)):
                kw = {"x_mode": x_mode, "norm_weight": norm, "eps": 1e-6, "residual": residual}
                want = fd.linear(x.float(), w.float(), bias.float(), **{**kw, "norm_weight": None if norm is None
                                                                             else norm.float()})
                got = kernels.gemv(x, w, bias, **kw, **tiling.get("gemv", {}))
                assert got.shape == want.shape and got.dtype == torch.float16
                torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="does not match"):
        kernels.gemv(rand(1, 1, hidden), w, residual=rand(1, 1, 3, n))
    # one query token on 8 heads over 2 KV heads: one split (a single kernel) and several (partials combined)
    for length, batch in ((40, 1), (700, 1), (300, 2)):
        q, k, v = rand(batch, 8, 1, 32), rand(batch, 2, length, 32), rand(batch, 2, length, 32)
        mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool, device=device)
        mask[..., : length - 7] = True
        mask[-1, ..., :3] = False  # rows may differ
        for m in (None, mask):
            want = fd.attention(q.float(), k.float(), v.float(), m, 0.17)
            for last_merges in (False, True):  # splits merged by a second kernel, or by the last split
                got = kernels.decode_attention(q, k, v, m, 0.17, last_merges=last_merges,
                                               **tiling.get("attention", {}))
                assert got.shape == want.shape == (batch, 1, 8, 32)
                torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)
    assert not any(c.any() for c in kernels._MERGE_COUNTERS.values())  # left at zero for the next call
    # q/k/v with the rotation and the cache write: 4 query heads on 2 KV heads of 32, position 6 of 10
    heads, kv_heads, d, pos = 4, 2, 32, 6
    w, bias = rand((heads + 2 * kv_heads) * d, hidden) * 0.1, rand((heads + 2 * kv_heads) * d)
    cos, sin = rand(1, 1, d), rand(1, 1, d)
    for x_mode, x in ((forms.X_ROW, rand(1, 1, hidden)), (forms.X_PAIR, rand(1, 1, 2, hidden))):
        for b, norm in ((None, None), (bias, g)):
            caches = [(rand(1, kv_heads, 10, d), rand(1, kv_heads, 10, d), torch.zeros((), dtype=torch.long,
                                                                                      device=device))]
            caches.append(tuple(t.clone() for t in caches[0]))
            kw = {"heads": heads, "kv_heads": kv_heads, "position": torch.tensor([[pos]], device=device),
                  "x_mode": x_mode, "norm_weight": norm, "eps": 1e-6}
            results = []
            for (keys, values, length), form in zip(caches, ("torch", "kernel")):
                if form == "torch":  # fp32 arithmetic, then the cache's dtype
                    k32, v32 = keys.float(), values.float()
                    q = fd.qkv_rope(x.float(), w.float(), None if b is None else b.float(), cos=cos.float(),
                                    sin=sin.float(), keys=k32, values=v32, length=length,
                                    **{**kw, "norm_weight": None if norm is None else norm.float()})
                    keys.copy_(k32), values.copy_(v32)
                else:
                    q = kernels.qkv_rope(x, w, b, cos=cos, sin=sin, keys=keys, values=values, length=length, **kw,
                                         **tiling.get("qkv_rope", {}))
                    assert q.dtype == torch.float16
                results.append((q.float(), keys.float(), values.float(), int(length)))
            (q0, k0, v0, n0), (q1, k1, v1, n1) = results
            assert q1.shape == q0.shape == (1, heads, 1, d) and n0 == n1 == pos + 1
            torch.testing.assert_close(q1, q0, rtol=2e-2, atol=2e-2)
            torch.testing.assert_close(k1, k0, rtol=2e-2, atol=2e-2)
            torch.testing.assert_close(v1, v0, rtol=2e-2, atol=2e-2)
            assert torch.equal(k1[:, :, :pos], k0[:, :, :pos]) and torch.equal(v1[:, :, pos + 1:], v0[:, :, pos + 1:])
    with pytest.raises(ValueError, match="multiple of 16"):
        kernels.qkv_rope(rand(1, 1, hidden), w[:-8], None, heads=heads, kv_heads=kv_heads, cos=cos, sin=sin,
                         position=torch.tensor([[pos]], device=device), keys=caches[0][0], values=caches[0][1],
                         length=caches[0][2])
    assert kernels.attention_splits(96, 2) == (1, 3, 32)  # up to 4 blocks: one kernel
    assert kernels.attention_splits(160, 2) == (5, 1, 32)  # the seq 128 cell: 5 splits of 32, then combined
    assert kernels.attention_splits(8224, 2) == (43, 3, 64)  # seq 8192: 129 blocks of 64, 43 x 2 programs
    assert kernels.attention_splits(160, 2, 64, single_split_blocks=1 << 20) == (1, 3, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pdl", [False, True])
def test_fused_forms_match_torch_on_cuda(pdl):
    if pdl and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs compute capability 9.0")
    # fixed tilings (one of each kernel's configs), as autotuning every form would take minutes; the
    # autotuned kernels run in the backends' tests
    check_fused_forms("cuda", {"gemv": {"pdl": pdl, "block_n": 4, "block_k": 512}, "attention": {"pdl": pdl},
                               "qkv_rope": {"pdl": pdl, "pairs": 4, "block_k": 512}})


INTERPRETED = """
import torch
from latency_sensitivity.engine import kernels
from test_kernels import check_fused_forms
torch.manual_seed(0)
for k, n, bias in {shapes}:
    x = torch.randn(1, k).half(); w = torch.randn(n, k).half(); b = torch.randn(n).half() if bias else None
    want = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
    for block_n, block_k in ((2, 256), (8, 512), (4, 128)):
        got = kernels.gemv(x, w, b, block_n=block_n, block_k=block_k)
        torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2 * k ** 0.5)
check_fused_forms("cpu", {{"gemv": {{"block_n": 4, "block_k": 64}}, "attention": {{"block_l": 16}},
                          "qkv_rope": {{"pairs": 4, "block_k": 64}}}})
check_fused_forms("cpu", {{"gemv": {{"block_n": 2, "block_k": 32}}, "attention": {{"block_l": 64}},
                          "qkv_rope": {{"pairs": 2, "block_k": 32}}}})
print("ok")
"""


def test_gemv_matches_linear_in_the_triton_interpreter():
    pytest.importorskip("triton")
    numpy = pytest.importorskip("numpy")
    if tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 3):
        pytest.skip("Triton 3.6's interpreter fails on numpy >= 2.3 (int() of a one-element array)")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    code = INTERPRETED.format(shapes=SHAPES[:3])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
