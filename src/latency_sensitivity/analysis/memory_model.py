"""Predicted device memory of one sweep cell: weights + KV cache + kept logits + a transient estimate.

All functions return bytes except ``predicted_memory``, which returns MiB (2**20 bytes) under the column
names of ``columns.py`` (weights_mb, kv_cache_mb, predicted_memory_mb) plus logits_mb and activation_mb.
"""

from __future__ import annotations

from typing import Any

from latency_sensitivity.analysis.roofline import Architecture, dtype_bytes, kv_bytes_per_token, total_params

MIB = 2**20



def materialises_scores(attn_implementation: str) -> bool:
    """True for transformers' eager attention ("eager", "paged|eager"), which builds the full score matrix;
    sdpa, flash_attention_* and flex_attention do not."""
    if not isinstance(attn_implementation, str) or not attn_implementation:
        raise ValueError(f"attn_implementation must be a non-empty string, got {attn_implementation!r}")
    return attn_implementation == "eager" or attn_implementation.endswith("|eager")


def _check_nonneg(**kw: int) -> None:
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{k} must be a non-negative integer, got {v!r}")


def kv_cache_bytes(arch: Architecture, dtype: str, batch: int, tokens: int) -> int:
    """KV cache of ``batch`` sequences of ``tokens`` tokens (GQA formula):
    2 (K and V) × layers × kv_heads × head_dim × dtype bytes × batch × tokens."""
    _check_nonneg(batch=batch, tokens=tokens)
    return kv_bytes_per_token(arch, dtype) * batch * tokens


def weights_bytes(arch: Architecture, dtype: str) -> int:
    """Parameter bytes of the model as built (a tied embedding/LM-head matrix counted once)."""
    return total_params(arch) * dtype_bytes(dtype)


def logits_bytes(arch: Architecture, dtype: str, batch: int, kept: int = 1) -> int:
    """Logits tensor of ``batch`` × ``kept`` positions × vocab in the model dtype (``logits_to_keep=kept``)."""
    _check_nonneg(batch=batch, kept=kept)
    return batch * kept * arch.vocab_size * dtype_bytes(dtype)


def activation_estimate_bytes(arch: Architecture, dtype: str, batch: int, seq: int, attn_implementation: str) -> int:
    """Estimate of the largest transient of one prefill forward over (batch, seq), in bytes.

    Layers run one after another, so only one layer's intermediates are alive at a time; the estimate is the
    larger of
      * the MLP: gate, up and act(gate)·up intermediates, batch × seq × intermediate × 3 × dtype bytes;
      * attention: q and the attention output (heads × head_dim each) and k, v (kv_heads × head_dim each),
        batch × seq × (2·heads + 2·kv_heads) × head_dim × dtype bytes, plus, for ``eager`` only, the
        batch × heads × seq × seq score matrix and its softmax (2 × that in dtype bytes). sdpa and the flash
        kernels never materialise the score matrix.
    Residual stream, norms and allocator slack are not counted.
    """
    _check_nonneg(batch=batch, seq=seq)
    eager = materialises_scores(attn_implementation)
    b = dtype_bytes(dtype)
    tokens = batch * seq
    mlp = tokens * arch.intermediate_size * 3 * b
    attn = tokens * (2 * arch.num_attention_heads + 2 * arch.num_key_value_heads) * arch.head_dim * b
    if eager:
        attn += 2 * batch * arch.num_attention_heads * seq * seq * b
    return max(mlp, attn)


def predicted_memory(
    arch: Architecture, dtype: str, batch: int, seq: int, gen_tokens: int, attn_implementation: str
) -> dict[str, Any]:
    """Predicted peak device memory of a cell, in MiB: weights, KV cache at seq + gen_tokens tokens,
    kept logits (1 position per sequence), the prefill activation estimate, and their sum."""
    _check_nonneg(batch=batch, seq=seq, gen_tokens=gen_tokens)
    parts = {
        "weights_mb": weights_bytes(arch, dtype),
        "kv_cache_mb": kv_cache_bytes(arch, dtype, batch, seq + gen_tokens),
        "logits_mb": logits_bytes(arch, dtype, batch, kept=1),
        "activation_mb": activation_estimate_bytes(arch, dtype, batch, seq, attn_implementation),
    }
    out: dict[str, Any] = {k: v / MIB for k, v in parts.items()}
    out["predicted_memory_mb"] = sum(parts.values()) / MIB
    return out
