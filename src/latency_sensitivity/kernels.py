"""Hand-written decode kernels (Triton), for the compiled backend's one-token steps.

``gemv(x, weight, bias=None)``: ``torch.nn.functional.linear`` for an input with one row (a decode step at
batch 1), as a Triton kernel that streams the weight once, BLOCK_N output rows per program, accumulating in
fp32; the tiling is autotuned per weight shape. cuBLAS runs such a product as a GEMM with one useful row. On
the H100, for the Qwen2.5-3B shapes in fp16 (benchmarks/device/gemv_shapes.py, weights cycled past the L2),
cuBLAS streamed the weights at 1.3-2.8 TB/s and this kernel at 1.7-3.1 TB/s; a step's products took 2.77 ms
through cuBLAS and 2.48 ms through the kernel (benchmarks/README.md, "compiled"). ``linear`` takes the kernel
where it applies (``takes_gemv``) and ``F.linear`` elsewhere.

The kernels are plain Triton functions, which torch.compile traces into its graph. Importing this module needs
Triton (it comes with CUDA builds of torch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# On the H100 the Qwen2.5-3B shapes chose BLOCK_K 512 or 1024 of (256, 512, 1024) and BLOCK_N 2 to 16
GEMV_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
                for bn in (2, 4, 8, 16) for bk in (512, 1024) for w in (4, 8) if bn * bk <= 16384]


@triton.jit
def gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_wn,
                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[n] = sum_k x[k] * w[n, k] (+ b[n]) for BLOCK_N rows n per program; fp32 accumulation."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0, eviction_policy="evict_first")
        x = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0)
        acc += w.to(tl.float32) * x[None, :].to(tl.float32)
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


# the same kernel, its tiling chosen per weight shape by timing every config once
gemv_kernel_autotuned = triton.autotune(configs=GEMV_CONFIGS, key=["N", "K"])(gemv_kernel)


def gemv(x, weight, bias=None, *, block_n: int | None = None, block_k: int = 256):
    """x @ weight.T (+ bias) for x of shape (..., K) holding one row in all; weight (N, K), contiguous rows.

    block_n, block_k: a fixed tiling instead of the autotuned one (Triton's CPU interpreter cannot autotune).
    """
    K = x.shape[-1]
    N = weight.shape[0]
    if x.numel() != K:
        raise ValueError(f"gemv takes one input row; got shape {tuple(x.shape)}")
    if weight.stride(1) != 1:
        raise ValueError("gemv needs the weight's rows contiguous")
    x = x.contiguous()
    y = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    b = bias if bias is not None else weight  # not read without a bias
    if block_n is None:
        gemv_kernel_autotuned[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](
            x, weight, b, y, N, K, weight.stride(0), HAS_BIAS=bias is not None)
    else:
        gemv_kernel[(triton.cdiv(N, block_n),)](
            x, weight, b, y, N, K, weight.stride(0), HAS_BIAS=bias is not None, BLOCK_N=block_n, BLOCK_K=block_k)
    return y


def takes_gemv(x, weight) -> bool:
    """Whether `linear` runs this product as the gemv kernel: one input row, fp16/bf16 on CUDA."""
    return (x.is_cuda and x.numel() == x.shape[-1] and weight.stride(-1) == 1
            and x.dtype in (torch.float16, torch.bfloat16) and weight.dtype == x.dtype)


def linear(x, weight, bias=None):
    """torch.nn.functional.linear, through the gemv kernel where `takes_gemv`."""
    if takes_gemv(x, weight):
        return gemv(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)
