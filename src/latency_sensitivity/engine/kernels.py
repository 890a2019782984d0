"""Hand-written decode kernels (Triton), for the compiled backend's one-token steps.

``gemv(x, weight, bias=None)``: ``torch.nn.functional.linear`` for an input with one row (a decode step at
batch 1), as a Triton kernel that streams the weight once, BLOCK_N output rows per program, accumulating in
fp32; the tiling is autotuned per weight shape. cuBLAS runs such a product as a GEMM with one useful row, which
streams the weight more slowly (measured per shape with benchmarks/decode_target/gemv_shapes.py; numbers in
benchmarks/decode_target/NOTES.md, "Stage 1"). ``linear`` takes the kernel where it applies (``takes_gemv``)
and ``F.linear`` elsewhere.

The gemv kernel also has the fused forms of fused_decode's rewritten layers (an input row given as a residual
pair or as gate/up for SiLU-and-multiply, RMSNorm of the input, the residual pair as output), and
``qkv_rope`` is the q/k/v product with the rotary embedding and the cache write in its epilogue, and
``decode_attention`` runs a one-token query on a KV cache, the query heads of a KV head as the rows of one
tl.dot, over splits of the cache merged by the split that finishes last (or by a second kernel); measured
against torch's SDPA with benchmarks/decode_target/decode_kernels.py (benchmarks/decode_target/NOTES.md,
"Stage 2").

The kernels are plain Triton functions, which torch.compile traces into its graph; launched by Triton they can
use programmatic dependent launch (``pdl``, Hopper and later: a kernel loads its first weights while the
previous one finishes). Importing this module needs Triton (it comes with CUDA builds of torch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from latency_sensitivity.engine import probe
from latency_sensitivity.engine.forms import X_PAIR, X_ROW, X_SILU_MUL# noqa: F401 - how gemv's input holds its row

# The tilings the autotuner chooses from; the ones it chose per shape are recorded in
# benchmarks/decode_target/NOTES.md ("Stage 1", one-row products)
GEMV_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
                for bn in (2, 4, 8, 16) for bk in (512, 1024) for w in (4, 8) if bn * bk <= 16384]


# What the fused kernel writes (RESIDUAL): the product; the pair [residual row, product]; [residual pair summed,
# product].
OUT_ROW, OUT_PAIR_FROM_ROW, OUT_PAIR_FROM_PAIR = 0, 1, 2


@triton.jit
def _input_tile(x_ptr, g_ptr, offs_k, mask_k, K, dtype, X_MODE: tl.constexpr, NORM: tl.constexpr):
    """A tile of the input row as X_MODE holds it (see gemv_kernel), in fp32 with torch's roundings; returns it,
    and it times the norm weight when NORM (the first for the sum of squares, the second for the product)."""
    x = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    if X_MODE == 1:
        x = (x + tl.load(x_ptr + K + offs_k, mask=mask_k, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    elif X_MODE == 2:
        up = tl.load(x_ptr + K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        x = (x * tl.sigmoid(x)).to(dtype).to(tl.float32)
        x = (x * up).to(dtype).to(tl.float32)
    if NORM:
        return x, x * tl.load(g_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    return x, x


@triton.jit
def _row_products(x_ptr, w_ptr, g_ptr, offs_n, mask_n, K, stride_wn, eps, dtype, X_MODE: tl.constexpr,
                  NORM: tl.constexpr, USE_GDC: tl.constexpr, BLOCK_K: tl.constexpr):
    """sum_k x[k] * w[n, k] for the rows offs_n, in fp32; x as X_MODE holds it, RMS-normalised with NORM.

    USE_GDC (programmatic dependent launch): the first weight tile is loaded before waiting for the previous
    kernel (gdc_wait), as a step never writes the weights; the input, which it does write, is read after.
    """
    offs_k = tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    w_rows = w_ptr + offs_n[:, None] * stride_wn
    w = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0,
                eviction_policy="evict_first")
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()  # the next kernel may start, and load its own first weights
    x, xg = _input_tile(x_ptr, g_ptr, offs_k, mask_k, K, dtype, X_MODE, NORM)
    squares = x * x
    acc = w.to(tl.float32) * xg[None, :]
    for k in range(BLOCK_K, K, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0,
                    eviction_policy="evict_first")
        x, xg = _input_tile(x_ptr, g_ptr, offs_k, mask_k, K, dtype, X_MODE, NORM)
        squares += x * x
        acc += w.to(tl.float32) * xg[None, :]
    y = tl.sum(acc, axis=1)
    if NORM:
        y = y * tl.rsqrt((tl.sum(squares, axis=0) / K + eps).to(tl.float32))  # eps may come as fp64
    return y


@triton.jit
def gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, g_ptr, r_ptr, N, K, stride_wn, eps,
                HAS_BIAS: tl.constexpr, X_MODE: tl.constexpr, NORM: tl.constexpr, RESIDUAL: tl.constexpr,
                USE_GDC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[n] = sum_k x[k] * w[n, k] (+ b[n]) for BLOCK_N rows n per program; fp32 accumulation.

    X_MODE: x is the row (0); the sum of two rows x[0] + x[1], rounded to the input dtype as torch's addition
    is (1, a residual stream kept as a pair); silu(x[:K]) * x[K:], rounded as torch rounds each (2, the gated
    MLP's activation). NORM: x is RMS-normalised first, x * rsqrt(mean(x^2) + eps) * g; the mean is taken in
    the same loop and applied to the sum at the end (normalisation is linear), so it costs no pass of its own.
    RESIDUAL: y alone (0), or the pair [r, y] (1) or [r[0] + r[1], y] (2), each row N long: the residual
    addition after the product, carried into the next kernel's X_MODE 1 instead of a kernel of its own.
    USE_GDC: launched with programmatic dependent launch (see _row_products).
    """
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    dtype = y_ptr.dtype.element_ty
    y = _row_products(x_ptr, w_ptr, g_ptr, offs_n, mask_n, K, stride_wn, eps, dtype, X_MODE, NORM, USE_GDC,
                      BLOCK_K)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if RESIDUAL == 0:
        tl.store(y_ptr + offs_n, y.to(dtype), mask=mask_n)
    else:
        r = tl.load(r_ptr + offs_n, mask=mask_n, other=0.0)
        if RESIDUAL == 2:
            r = (r.to(tl.float32) + tl.load(r_ptr + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)).to(dtype)
        tl.store(y_ptr + offs_n, r, mask=mask_n)
        tl.store(y_ptr + N + offs_n, y.to(dtype), mask=mask_n)


# the same kernel, its tiling chosen per weight shape (and mode) by timing every config once
# (timings cached on disk, in Triton's cache: a later process, the next cell of a sweep, skips the tuning)
gemv_kernel_autotuned = triton.autotune(configs=GEMV_CONFIGS, key=["N", "K", "X_MODE", "NORM", "RESIDUAL"],
                                        cache_results=True)(gemv_kernel)


def _check_row(name: str, x, K: int, x_mode: int) -> None:
    """That x holds one input row of K values as x_mode says (gemv_kernel's X_MODE), else a ValueError."""
    if x.numel() != (2 * K if x_mode != X_ROW else K) or (x_mode == X_PAIR and x.shape[-2:] != (2, K)):
        raise ValueError(f"{name} takes one input row of {K} (mode {x_mode}); got shape {tuple(x.shape)}")


def pdl_launch(pdl: bool) -> dict:
    """The launch keywords of a kernel taking USE_GDC: with `pdl`, programmatic dependent launch (Hopper and
    later), where a kernel may start while the previous one finishes and waits (gdc_wait) before it reads
    what that one wrote. Triton's own launcher only: torch.compile launches the kernels it traces itself."""
    if pdl and torch.compiler.is_compiling():
        raise ValueError("programmatic dependent launch needs Triton's launcher, not torch.compile's")
    return {"USE_GDC": True, "launch_pdl": True} if pdl else {"USE_GDC": False}


def gemv(x, weight, bias=None, *, x_mode: int = X_ROW, norm_weight=None, eps: float = 0.0, residual=None,
         block_n: int | None = None, block_k: int = 256, pdl: bool = False):
    """x @ weight.T (+ bias) for one input row; weight (N, K) with contiguous rows.

    x_mode (X_ROW, X_PAIR, X_SILU_MUL: see gemv_kernel) says how x, of shape (..., K), (..., 2, K) or
    (..., 2K), holds the row; norm_weight: RMS-normalise it first (with eps); residual: return the pair
    (..., 2, N) [residual, product], where residual is a row (..., N) or a pair (..., 2, N) summed.
    block_n, block_k: a fixed tiling instead of the autotuned one (Triton's CPU interpreter cannot autotune).
    pdl: launched with programmatic dependent launch (pdl_launch).
    """
    N, K = weight.shape
    lead = x.shape[:-2] if x_mode == X_PAIR else x.shape[:-1]
    _check_row("gemv", x, K, x_mode)
    probe.probe_hit("gemv_kernel")  # a backend's claimed paths, counted (probe.PathProbe)
    if weight.stride(1) != 1:
        raise ValueError("gemv needs the weight's rows contiguous")
    x = x.contiguous()
    out_mode = OUT_ROW
    if residual is not None:
        if residual.numel() not in (N, 2 * N):
            raise ValueError(f"residual of shape {tuple(residual.shape)} does not match {N} outputs")
        out_mode = OUT_PAIR_FROM_PAIR if residual.numel() == 2 * N else OUT_PAIR_FROM_ROW
        residual = residual.contiguous()
    y = torch.empty((*lead, 2, N) if residual is not None else (*lead, N), dtype=x.dtype, device=x.device)
    b = bias if bias is not None else weight  # not read without a bias
    g = norm_weight if norm_weight is not None else weight  # not read without a norm
    r = residual if residual is not None else weight  # not read without a residual
    args = (x, weight, b, y, g, r, N, K, weight.stride(0), float(eps))
    modes = {"HAS_BIAS": bias is not None, "X_MODE": x_mode, "NORM": norm_weight is not None,
             "RESIDUAL": out_mode, **pdl_launch(pdl)}
    if block_n is None:
        gemv_kernel_autotuned[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](*args, **modes)
    else:
        gemv_kernel[(triton.cdiv(N, block_n),)](*args, **modes, BLOCK_N=block_n, BLOCK_K=block_k)
    return y


@triton.jit
def qkv_rope_kernel(x_ptr, w_ptr, b_ptr, g_ptr, q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, pos_ptr, len_ptr,
                    K, stride_wn, eps, stride_kh, stride_kl, stride_vh, stride_vl,
                    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, HAS_BIAS: tl.constexpr,
                    X_MODE: tl.constexpr, NORM: tl.constexpr, USE_GDC: tl.constexpr, PAIRS: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """A decode step's fused q/k/v product (one token, batch 1) with the rotary embedding and the cache write
    in its epilogue: q rotated into q_ptr, k rotated and v as it is into the caches at position pos_ptr[0],
    and the cache's length set to that position + 1 (what transformers' static cache layer does on update).

    Program p takes PAIRS pairs of rows (d, d + D/2) of one head, as the rotation mixes the two halves of a
    head; the rows are read interleaved, so the products split into the halves (tl.split). The rotation is
    transformers' rotate-half form, q * cos + rotate_half(q) * sin, each product and the sum rounded to the
    dtype as torch rounds them. The input is read as gemv_kernel's X_MODE and NORM say.
    """
    HALF: tl.constexpr = D // 2
    PER_HEAD: tl.constexpr = HALF // PAIRS
    pid = tl.program_id(0)
    head = pid // PER_HEAD
    d = (pid % PER_HEAD) * PAIRS + tl.arange(0, PAIRS)
    j = tl.arange(0, 2 * PAIRS)
    rows = head * D + (pid % PER_HEAD) * PAIRS + j // 2 + (j % 2) * HALF  # d0, d0 + D/2, d1, d1 + D/2, ...
    mask_n = rows < (H + 2 * HKV) * D
    dtype = q_ptr.dtype.element_ty
    y = _row_products(x_ptr, w_ptr, g_ptr, rows, mask_n, K, stride_wn, eps, dtype, X_MODE, NORM, USE_GDC,
                      BLOCK_K)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows).to(tl.float32)
    y1, y2 = tl.split(tl.reshape(y.to(dtype).to(tl.float32), (PAIRS, 2)))  # the two halves, rounded as F.linear
    pos = tl.load(pos_ptr)
    if pid == 0:
        tl.store(len_ptr, pos + 1)
    if head < H + HKV:  # q and k rotate
        c1 = tl.load(cos_ptr + d).to(tl.float32)
        c2 = tl.load(cos_ptr + d + HALF).to(tl.float32)
        s1 = tl.load(sin_ptr + d).to(tl.float32)
        s2 = tl.load(sin_ptr + d + HALF).to(tl.float32)
        o1 = ((y1 * c1).to(dtype).to(tl.float32) + (-y2 * s1).to(dtype).to(tl.float32)).to(dtype)
        o2 = ((y2 * c2).to(dtype).to(tl.float32) + (y1 * s2).to(dtype).to(tl.float32)).to(dtype)
        if head < H:
            tl.store(q_ptr + head * D + d, o1)
            tl.store(q_ptr + head * D + d + HALF, o2)
        else:
            at = k_ptr + (head - H) * stride_kh + pos * stride_kl + d
            tl.store(at, o1)
            tl.store(at + HALF, o2)
    else:
        at = v_ptr + (head - H - HKV) * stride_vh + pos * stride_vl + d
        tl.store(at, y1.to(dtype))
        tl.store(at + HALF, y2.to(dtype))


QKV_ROPE_CONFIGS = [triton.Config({"PAIRS": p, "BLOCK_K": bk}, num_warps=w)
                    for p in (1, 2, 4, 8) for bk in (512, 1024) for w in (4, 8)]
# autotuning runs each config several times: harmless, as the kernel writes the same values each time
qkv_rope_kernel_autotuned = triton.autotune(configs=QKV_ROPE_CONFIGS, key=["K", "H", "HKV", "D", "X_MODE", "NORM"],
                                            cache_results=True)(qkv_rope_kernel)


def qkv_rope(x, weight, bias, *, heads: int, kv_heads: int, cos, sin, position, keys, values, length,
             x_mode: int = X_ROW, norm_weight=None, eps: float = 0.0, pairs: int | None = None,
             block_k: int = 256, pdl: bool = False):
    """The fused q/k/v product of one decode token at batch 1 (weight: q, k, v rows stacked), rotated and
    written to the cache (qkv_rope_kernel); returns q as (1, heads, 1, D).

    cos, sin: the rotary tables at the token's position (D values each); position: a one-element integer tensor
    (the position ids); keys, values: the layer's static cache (1, kv_heads, max_len, D) with contiguous rows;
    length: its one-element length counter, set to position + 1 (not the position itself: programs read that
    while the first writes this). x_mode, norm_weight, eps: as gemv's. pairs, block_k: a fixed tiling instead
    of the autotuned one. pdl: as gemv's.
    """
    N, K = weight.shape
    D = N // (heads + 2 * kv_heads)
    if D * (heads + 2 * kv_heads) != N or D % 16 or weight.stride(1) != 1:
        raise ValueError(f"qkv_rope takes q/k/v rows of {heads} + 2 x {kv_heads} heads of a multiple of 16 "
                         f"values, rows contiguous; got a weight of shape {tuple(weight.shape)}")
    probe.probe_hit("qkv_rope_kernel")
    _check_row("qkv_rope", x, K, x_mode)
    if cos.numel() != D or sin.numel() != D or position.numel() != 1:
        raise ValueError("qkv_rope takes one token at batch 1: one position's rotary tables and position")
    if not torch.compiler.is_compiling() and position.data_ptr() == length.data_ptr():  # (traced: no data)
        raise ValueError("qkv_rope's position must not be the cache's length counter, which it writes")
    if (keys.shape != values.shape or keys.shape[:2] != (1, kv_heads) or keys.shape[-1] != D
            or keys.stride(-1) != 1 or values.stride(-1) != 1):
        raise ValueError(f"qkv_rope takes a cache of shape (1, {kv_heads}, length, {D}) with contiguous rows")
    q = torch.empty((1, heads, 1, D), dtype=x.dtype, device=x.device)
    b = bias if bias is not None else weight  # not read without a bias
    g = norm_weight if norm_weight is not None else weight  # not read without a norm
    args = (x.contiguous(), weight, b, g, q, keys, values, cos.contiguous(), sin.contiguous(), position, length,
            K, weight.stride(0), float(eps), keys.stride(1), keys.stride(2), values.stride(1), values.stride(2))
    modes = {"H": heads, "HKV": kv_heads, "D": D, "HAS_BIAS": bias is not None, "X_MODE": x_mode,
             "NORM": norm_weight is not None, **pdl_launch(pdl)}
    if pairs is None:
        qkv_rope_kernel_autotuned[lambda meta: ((heads + 2 * kv_heads) * (D // 2 // meta["PAIRS"]),)](*args,
                                                                                                      **modes)
    else:
        qkv_rope_kernel[((heads + 2 * kv_heads) * (D // 2 // pairs),)](*args, **modes, PAIRS=pairs,
                                                                        BLOCK_K=block_k)
    return q


@triton.jit
def decode_attention_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, part_ptr, stats_ptr, count_ptr, L, scale,
                            stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl, stride_mb,
                            H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr,
                            BLOCK_L: tl.constexpr, BLOCKS_PER_SPLIT: tl.constexpr, SPLITS: tl.constexpr,
                            HAS_MASK: tl.constexpr, LAST_MERGES: tl.constexpr, USE_GDC: tl.constexpr):
    """One query token's attention for the query heads of one KV head, over one split of the cached positions.

    Program (b * HKV + kv head, split): the G = H / HKV query heads sharing the KV head are the rows of one
    tl.dot (padded to BLOCK_G), so every key and value is read once; online softmax over BLOCK_L positions at a
    time. With one split the program writes the normalised output; with several it writes its unnormalised
    sum and (max, sum of exponentials), which decode_attention_combine merges, or with LAST_MERGES the split
    that finishes last for its KV head (a counter per KV head, count_ptr, left at zero again). USE_GDC: launched with
    programmatic dependent launch, it waits for the previous kernel before reading anything (all of it is the
    step's own: the query, the cache row just written, the mask).
    """
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    G: tl.constexpr = H // HKV
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // HKV
    kvh = bh % HKV
    offs_g = tl.arange(0, BLOCK_G)
    mask_g = offs_g < G
    offs_d = tl.arange(0, D)
    heads = b * H + kvh * G + offs_g
    q = tl.load(q_ptr + heads[:, None] * D + offs_d[None, :], mask=mask_g[:, None], other=0.0)
    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, D), dtype=tl.float32)
    for i in range(BLOCKS_PER_SPLIT):
        offs_l = (split * BLOCKS_PER_SPLIT + i) * BLOCK_L + tl.arange(0, BLOCK_L)
        in_range = offs_l < L
        valid = in_range
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + b * stride_mb + offs_l, mask=in_range, other=0) != 0)
        k = tl.load(k_ptr + b * stride_kb + kvh * stride_kh + offs_l[:, None] * stride_kl + offs_d[None, :],
                    mask=in_range[:, None], other=0.0)
        scores = (tl.dot(q, tl.trans(k)) * scale).to(tl.float32)  # scale may come as fp64 (inductor's launch)
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing valid yet adds nothing
        p = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + b * stride_vb + kvh * stride_vh + offs_l[:, None] * stride_vl + offs_d[None, :],
                    mask=in_range[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    if SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(o_ptr + heads[:, None] * D + offs_d[None, :], out.to(o_ptr.dtype.element_ty), mask=mask_g[:, None])
    else:
        rows = heads * SPLITS + split
        tl.store(part_ptr + rows[:, None] * D + offs_d[None, :], acc, mask=mask_g[:, None])
        tl.store(stats_ptr + rows * 2, m_i, mask=mask_g)
        tl.store(stats_ptr + rows * 2 + 1, l_i, mask=mask_g)
        if LAST_MERGES:
            tl.debug_barrier()  # every thread's partials stored before the count is released
            if tl.atomic_add(count_ptr + bh, 1, sem="acq_rel") == SPLITS - 1:
                _merge_splits(part_ptr, stats_ptr, o_ptr, heads, mask_g, offs_d, SPLITS, BLOCK_G, D)
                tl.store(count_ptr + bh, 0)  # ready for the next call


@triton.jit
def _merge_splits(part_ptr, stats_ptr, o_ptr, heads, mask_g, offs_d, SPLITS: tl.constexpr, BLOCK_G: tl.constexpr,
                  D: tl.constexpr):
    """Merge the split partial sums of the query heads `heads` (decode_attention_kernel's layout) into their
    outputs: sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s. Read from L2 (.cg): other programs wrote them."""
    m_all = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_all = tl.zeros((BLOCK_G,), dtype=tl.float32)
    out = tl.zeros((BLOCK_G, D), dtype=tl.float32)
    for s in range(SPLITS):
        rows = heads * SPLITS + s
        m_s = tl.load(stats_ptr + rows * 2, mask=mask_g, other=float("-inf"), cache_modifier=".cg")
        l_s = tl.load(stats_ptr + rows * 2 + 1, mask=mask_g, other=0.0, cache_modifier=".cg")
        part = tl.load(part_ptr + rows[:, None] * D + offs_d[None, :], mask=mask_g[:, None], other=0.0,
                       cache_modifier=".cg")
        m_new = tl.maximum(m_all, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha, beta = tl.exp(m_all - m_safe), tl.exp(m_s - m_safe)
        l_all = l_all * alpha + l_s * beta
        out = out * alpha[:, None] + part * beta[:, None]
        m_all = m_new
    out = out / l_all[:, None]
    tl.store(o_ptr + heads[:, None] * D + offs_d[None, :], out.to(o_ptr.dtype.element_ty), mask=mask_g[:, None])


@triton.jit
def decode_attention_combine(part_ptr, stats_ptr, o_ptr, H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                             BLOCK_G: tl.constexpr, SPLITS: tl.constexpr, USE_GDC: tl.constexpr):
    """Merge the splits of the query heads of one KV head (program b * HKV + kv head), as _merge_splits."""
    if USE_GDC:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    G: tl.constexpr = H // HKV
    bh = tl.program_id(0)
    offs_g = tl.arange(0, BLOCK_G)
    heads = (bh // HKV) * H + (bh % HKV) * G + offs_g
    _merge_splits(part_ptr, stats_ptr, o_ptr, heads, offs_g < G, tl.arange(0, D), SPLITS, BLOCK_G, D)


def _cdiv(a: int, b: int) -> int:  # plain Python, as torch.compile traces it (not triton.cdiv)
    return -(-a // b)


def attention_splits(length: int, programs: int, block_l: int | None = None, target: int = 128,
                     single_split_blocks: int = 4) -> tuple[int, int, int]:
    """(splits, blocks per split, positions per block) for `length` cached positions and `programs` (batch x
    KV heads) programs.

    Blocks of 32 positions up to 1024 positions, of 64 beyond (block_l: fixed). Short caches (up to
    `single_split_blocks` blocks) run as one split, so one kernel; longer ones split until about `target`
    programs run, each at least one block, so a long context at batch 1 still streams from every SM. Measured
    split counts and times: benchmarks/decode_target/NOTES.md ("Stage 2").
    """
    if block_l is None:
        block_l = 32 if length <= 1024 else 64
    blocks = _cdiv(length, block_l)
    if blocks <= single_split_blocks:
        return 1, blocks, block_l
    per_split = _cdiv(blocks, max(1, min(blocks, target // max(programs, 1))))
    return _cdiv(blocks, per_split), per_split, block_l


# Per device: a counter per (sequence, KV head) for decode_attention_kernel's LAST_MERGES, each left at zero.
# Shared by every call on the device, so calls must not run concurrently on two streams (the backends use one).
_MERGE_COUNTERS: dict = {}


def _merge_counters(device, n: int):
    counters = _MERGE_COUNTERS.get(device)
    if counters is None or counters.numel() < n:
        counters = _MERGE_COUNTERS[device] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    return counters


def decode_attention(query, key, value, mask=None, scale: float | None = None, *, block_l: int | None = None,
                     single_split_blocks: int = 4, last_merges: bool | None = None, pdl: bool = False):
    """Attention of a one-token query on a KV cache, grouped-query heads read once per KV head.

    query (B, H, 1, D); key, value (B, HKV, L, D) with contiguous rows; mask: None (every position) or a
    boolean (B or 1, 1, 1, L), True where a position is attended. Returns (B, 1, H, D), as transformers'
    attention functions do. D must be a power of two, at least 16 (tl.dot). last_merges: the splits merged by
    the one finishing last, in the same kernel (None: so, except under torch.compile, which would trace the
    module's counters as a constant); else by decode_attention_combine. pdl: the kernels launched with
    programmatic dependent launch (pdl_launch).
    """
    B, H, q_len, D = query.shape
    HKV, L = key.shape[1], key.shape[2]
    if q_len != 1 or H % HKV or key.stride(-1) != 1 or value.stride(-1) != 1:
        raise ValueError("decode_attention takes one query token, H a multiple of the KV heads, contiguous rows")
    groups = H // HKV
    block_g = max(16, 1 << (groups - 1).bit_length())
    query = query.contiguous()
    out = torch.empty((B, 1, H, D), dtype=query.dtype, device=query.device)
    splits, per_split, block_l = attention_splits(L, B * HKV, block_l, single_split_blocks=single_split_blocks)
    if splits > 1:
        part = torch.empty((B * H * splits, D), dtype=torch.float32, device=query.device)
        stats = torch.empty((B * H * splits, 2), dtype=torch.float32, device=query.device)
    else:
        part = stats = out  # not written with one split
    has_mask = mask is not None
    if has_mask:
        if mask.dtype != torch.bool or mask.shape[-1] != L or mask.stride(-1) != 1:
            raise ValueError("decode_attention takes a boolean mask over the cache's positions")
        stride_mb = mask.stride(0) if mask.shape[0] > 1 else 0
    else:
        mask, stride_mb = out, 0  # not read
    scale = D ** -0.5 if scale is None else scale
    if last_merges is None:
        last_merges = not torch.compiler.is_compiling()
    counters = _merge_counters(query.device, B * HKV) if last_merges and splits > 1 else out  # else not read
    decode_attention_kernel[(B * HKV, splits)](
        query, key, value, mask, out, part, stats, counters, L, float(scale),
        key.stride(0), key.stride(1), key.stride(2), value.stride(0), value.stride(1), value.stride(2), stride_mb,
        H=H, HKV=HKV, D=D, BLOCK_G=block_g, BLOCK_L=block_l, BLOCKS_PER_SPLIT=per_split, SPLITS=splits,
        HAS_MASK=has_mask, LAST_MERGES=last_merges, **pdl_launch(pdl))
    if splits > 1 and not last_merges:
        decode_attention_combine[(B * HKV,)](part, stats, out, H=H, HKV=HKV, D=D, BLOCK_G=block_g, SPLITS=splits,
                                             **pdl_launch(pdl))
    return out


def takes_gemv(x, weight) -> bool:
    """Whether `linear` runs this product as the gemv kernel: one input row, fp16/bf16 on CUDA."""
    return (x.is_cuda and x.numel() == x.shape[-1] and weight.stride(-1) == 1
            and x.dtype in (torch.float16, torch.bfloat16) and weight.dtype == x.dtype)


def linear(x, weight, bias=None):
    """torch.nn.functional.linear, through the gemv kernel where `takes_gemv`."""
    if takes_gemv(x, weight):
        return gemv(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)
