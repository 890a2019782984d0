"""The fused decode kernels of latency_sensitivity.engine.kernels at the Qwen2.5-3B shapes, fp16 (run on a CUDA GPU).

1. Attention of one query token on a layer's KV cache (16 query heads on 2 KV heads, head dim 128) at several
   cache lengths: torch's SDPA on the packed query (what the compiled backend ran before; cuDNN on the H100)
   against kernels.decode_attention over tilings (positions per block, how many blocks still run unsplit).
2. The one-row products with their fused prologues and epilogues (the residual pair, RMSNorm, SiLU-and-mul)
   against the plain product of the same shape, to see what folding them in costs.

Every call cycles through 36 copies of its operands (one per layer, as a step reads them) inside a CUDA
graph; per call: median over 20 replays, in us.
    python3 benchmarks/decode_target/decode_kernels.py OUT.json        (from the repository root)
"""
import json
import sys

import torch
from graph_timing import time_calls

from latency_sensitivity.engine import kernels

ARCH = json.load(open("config/models/qwen2.5-3b.json"))
HIDDEN, INTER, LAYERS = (ARCH[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
HEADS, KV_HEADS = ARCH["num_attention_heads"], ARCH["num_key_value_heads"]
HEAD = HIDDEN // HEADS
dev, dt = "cuda", torch.float16
torch.manual_seed(0)


def sdpa(q, k, v, mask, scale):
    b, h, _, d = q.shape
    out = torch.nn.functional.scaled_dot_product_attention(q.reshape(b, k.shape[1], h // k.shape[1], d), k, v,
                                                           attn_mask=mask, scale=scale)
    return out.reshape(b, h, 1, d).transpose(1, 2)


out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "attention": {}, "products": {}}
scale = HEAD ** -0.5
for length in (160, 544, 2080, 4128, 8224):
    q = [torch.randn(1, HEADS, 1, HEAD, device=dev, dtype=dt) for _ in range(LAYERS)]
    k = [torch.randn(1, KV_HEADS, length, HEAD, device=dev, dtype=dt) for _ in range(LAYERS)]
    v = [torch.randn(1, KV_HEADS, length, HEAD, device=dev, dtype=dt) for _ in range(LAYERS)]
    mask = torch.zeros(1, 1, 1, length, dtype=torch.bool, device=dev)
    mask[..., : length - 31] = True  # a cache sized seq + gen, 31 positions not yet written
    ref = sdpa(q[0].float(), k[0].float(), v[0].float(), mask, scale)
    row = {"sdpa_us": time_calls([lambda i=i: sdpa(q[i], k[i], v[i], mask, scale) for i in range(LAYERS)])}
    for block_l in (32, 64, 128):
        for single in (1, 4, 1 << 20):
            err = (kernels.decode_attention(q[0], k[0], v[0], mask, scale, block_l=block_l,
                                            single_split_blocks=single).float() - ref).abs().max().item()
            us = time_calls([lambda i=i: kernels.decode_attention(q[i], k[i], v[i], mask, scale, block_l=block_l,
                                                                  single_split_blocks=single)
                             for i in range(LAYERS)])
            splits = kernels.attention_splits(length, KV_HEADS, block_l, single_split_blocks=single)[0]
            row[f"kernel_l{block_l}_single{min(single, 999)}"] = {"us": us, "splits": splits, "max_abs_err": err}
    out["attention"][length] = row
    best = min((r["us"], name) for name, r in row.items() if name != "sdpa_us")
    print("attention", length, "sdpa", round(row["sdpa_us"], 2), "best kernel", round(best[0], 2), best[1], flush=True)
    del q, k, v

Q, KV = HIDDEN, KV_HEADS * HEAD
PRODUCTS = {  # name: (N, K, bias, fused form: x_mode, norm, residual kind)
    "qkv": (Q + 2 * KV, HIDDEN, True, (kernels.X_PAIR, True, None)),
    "o": (HIDDEN, Q, False, (kernels.X_ROW, False, "pair")),
    "gate_up": (2 * INTER, HIDDEN, False, (kernels.X_PAIR, True, None)),
    "down": (HIDDEN, INTER, False, (kernels.X_SILU_MUL, False, "pair")),
}
for name, (n, kk, bias, (x_mode, norm, residual)) in PRODUCTS.items():
    w = [torch.randn(n, kk, device=dev, dtype=dt) / kk ** 0.5 for _ in range(LAYERS)]
    b = torch.randn(n, device=dev, dtype=dt) if bias else None
    x = torch.randn(1, 1, kk, device=dev, dtype=dt)
    fused_x = {kernels.X_ROW: x, kernels.X_PAIR: torch.randn(1, 1, 2, kk, device=dev, dtype=dt),
               kernels.X_SILU_MUL: torch.randn(1, 1, 2 * kk, device=dev, dtype=dt)}[x_mode]
    g = torch.rand(kk, device=dev, dtype=dt) + 0.5 if norm else None
    r = torch.randn(1, 1, 2, n, device=dev, dtype=dt) if residual else None
    plain = time_calls([lambda i=i: kernels.gemv(x, w[i], b) for i in range(LAYERS)])
    fused = time_calls([lambda i=i: kernels.gemv(fused_x, w[i], b, x_mode=x_mode, norm_weight=g, eps=1e-6,
                                                 residual=r) for i in range(LAYERS)])
    out["products"][name] = {"N": n, "K": kk, "plain_us": plain, "fused_us": fused,
                             "fused": {"x_mode": x_mode, "norm": norm, "residual": residual}}
    print("product", name, "plain", round(plain, 2), "fused", round(fused, 2), flush=True)
    del w
json.dump(out, open(sys.argv[1], "w"), indent=1)
