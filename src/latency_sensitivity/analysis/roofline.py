"""Roofline floors for the prefill and decode phases of a decoder-only transformer.

From the architecture (a HF ``config.json`` dict) this module counts parameters, FLOPs and the fewest bytes
that must cross the memory bus for one forward pass, and turns them into a lower bound on its time given two
measured ceilings of the device (copy bandwidth and dense matmul throughput, see ``calibrate``).

Conventions
-----------
* FLOPs count multiply-adds of matrix products as 2 FLOPs: the linear layers (q, k, v, o, gate, up, down), the
  LM head, and the two attention products QK^T and PV. Norms, RoPE, activations, softmax, residual adds and
  bias adds are ignored (they are O(tokens × hidden), negligible next to the matmuls).
* Attention is counted as dense causal attention (what sdpa/eager compute); sliding windows and the
  savings of block-skipping kernels are not modelled.
* Prefill uses ``logits_to_keep=1``: the LM head runs only for the last position of each sequence.
* Bytes are the fewest a perfect implementation must move: every weight read once per forward (a tied
  embedding/LM-head matrix once, as the LM head), plus the ``batch × new tokens`` embedding rows looked up,
  the K and V of the new tokens written to the cache, in decode the K and V of the ``L`` cached tokens read,
  and the kept logits written. Other activations are assumed to stay on chip.
* GB and GFLOP are decimal (1e9); times are in ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("qwen2", "llama", "mistral", "qwen3")

_REQUIRED_KEYS: tuple[str, ...] = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
)


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype string ("fp32", "fp16", "bf16")."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder-only transformer, as far as parameter, FLOP and byte counts need it."""

    model_type: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool  # bias on q_proj, k_proj, v_proj
    o_bias: bool  # bias on o_proj
    mlp_bias: bool  # bias on gate_proj, up_proj, down_proj
    qk_norm: bool  # per-head RMSNorm of q and k (weight of head_dim each), as in Qwen3

    @classmethod
    def from_config(cls, d: Mapping[str, Any]) -> "Architecture":
        """Build from a HF ``config.json`` dict (model_type qwen2, llama, mistral or qwen3).

        Defaults follow transformers: ``num_key_value_heads`` absent/None means multi-head attention
        (= num_attention_heads); ``head_dim`` absent/None means hidden_size // num_attention_heads, except that
        Qwen3Config's default head_dim is 128 when the key is absent; ``tie_word_embeddings`` defaults to False.
        Qwen2 has bias on q/k/v but not o_proj; Llama honours ``attention_bias`` (q/k/v/o) and ``mlp_bias``;
        Mistral has no biases; Qwen3 honours ``attention_bias`` (default False) and has q_norm/k_norm.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"architecture config must be a dict, got {type(d).__name__}")
        missing = [k for k in _REQUIRED_KEYS if d.get(k) is None]
        if missing:
            raise ValueError(f"architecture config is missing required key(s): {', '.join(missing)}")
        model_type = str(d["model_type"])
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )

        def pos_int(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"architecture config key {key!r} must be a positive integer, got {value!r}")
            return value

        layers = pos_int("num_hidden_layers", d["num_hidden_layers"])
        hidden = pos_int("hidden_size", d["hidden_size"])
        heads = pos_int("num_attention_heads", d["num_attention_heads"])
        inter = pos_int("intermediate_size", d["intermediate_size"])
        vocab = pos_int("vocab_size", d["vocab_size"])
        kv = d.get("num_key_value_heads")
        kv = heads if kv is None else pos_int("num_key_value_heads", kv)
        if heads % kv:
            raise ValueError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})")
        if "head_dim" in d and d["head_dim"] is not None:
            head_dim = pos_int("head_dim", d["head_dim"])
        elif model_type == "qwen3" and "head_dim" not in d:
            head_dim = 128  # Qwen3Config's default
        else:
            head_dim = hidden // heads

        attention_bias = bool(d.get("attention_bias", False))
        if model_type == "qwen2":
            qkv_bias, o_bias, mlp_bias, qk_norm = True, False, False, False
        elif model_type == "llama":
            qkv_bias, o_bias, mlp_bias, qk_norm = attention_bias, attention_bias, bool(d.get("mlp_bias", False)), False
        elif model_type == "mistral":
            qkv_bias, o_bias, mlp_bias, qk_norm = False, False, False, False
        else:  # qwen3
            qkv_bias, o_bias, mlp_bias, qk_norm = attention_bias, attention_bias, False, True
        return cls(
            model_type=model_type,
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=head_dim,
            intermediate_size=inter,
            vocab_size=vocab,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            qk_norm=qk_norm,
        )

    # ---- derived sizes -------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim


# ---- parameter counts ----------------------------------------------------------------------------------
def embedding_params(arch: Architecture) -> int:
    """Elements of the token embedding matrix (vocab × hidden)."""
    return arch.vocab_size * arch.hidden_size


def lm_head_params(arch: Architecture) -> int:
    """Elements of the LM-head weight (vocab × hidden); shared with the embedding when tied."""
    return arch.vocab_size * arch.hidden_size


def linear_params_per_layer(arch: Architecture) -> int:
    """Weight elements of one decoder layer's linear layers (q, k, v, o, gate, up, down), biases excluded."""
    h, i = arch.hidden_size, arch.intermediate_size
    attn = h * arch.q_dim + 2 * h * arch.kv_dim + arch.q_dim * h
    mlp = 3 * h * i
    return attn + mlp


def linear_params(arch: Architecture) -> int:
    """Weight elements of all non-embedding linear layers (every decoder layer; LM head excluded)."""
    return arch.num_hidden_layers * linear_params_per_layer(arch)


def bias_params_per_layer(arch: Architecture) -> int:
    b = 0
    if arch.qkv_bias:
        b += arch.q_dim + 2 * arch.kv_dim
    if arch.o_bias:
        b += arch.hidden_size
    if arch.mlp_bias:
        b += 2 * arch.intermediate_size + arch.hidden_size
    return b


def norm_params_per_layer(arch: Architecture) -> int:
    n = 2 * arch.hidden_size  # input_layernorm, post_attention_layernorm
    if arch.qk_norm:
        n += 2 * arch.head_dim  # q_norm, k_norm
    return n


def total_params(arch: Architecture) -> int:
    """All parameters of the model as built by ``AutoModelForCausalLM`` (a tied matrix counted once)."""
    per_layer = linear_params_per_layer(arch) + bias_params_per_layer(arch) + norm_params_per_layer(arch)
    total = embedding_params(arch) + arch.num_hidden_layers * per_layer + arch.hidden_size  # final norm
    if not arch.tie_word_embeddings:
        total += lm_head_params(arch)
    return total


# ---- FLOPs ---------------------------------------------------------------------------------------------
def _check_pos(**kw: int) -> None:
    for k, v in kw.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{k} must be a non-negative integer, got {v!r}")


def prefill_flops(arch: Architecture, batch: int, seq: int) -> int:
    """FLOPs of one prefill forward over (batch, seq) with ``logits_to_keep=1``.

    2·linear·batch·seq + 2·hidden·vocab·batch + layers · 2·2·batch·heads·head_dim·seq(seq+1)/2.
    """
    _check_pos(batch=batch, seq=seq)
    linear = 2 * linear_params(arch) * batch * seq
    lm_head = 2 * arch.hidden_size * arch.vocab_size * batch
    # QK^T and PV over the causal triangle (query i attends to i+1 keys): sum = seq(seq+1)/2 pairs.
    attn = arch.num_hidden_layers * 2 * 2 * batch * arch.num_attention_heads * arch.head_dim * (seq * (seq + 1) // 2)
    return linear + lm_head + attn


def decode_step_flops(arch: Architecture, batch: int, context: int) -> int:
    """FLOPs of one decode step: each of ``batch`` sequences adds 1 token to ``context`` cached tokens.

    2·linear·batch + 2·hidden·vocab·batch + layers · 4·batch·heads·head_dim·(context+1).
    """
    _check_pos(batch=batch, context=context)
    linear = 2 * linear_params(arch) * batch
    lm_head = 2 * arch.hidden_size * arch.vocab_size * batch
    attn = arch.num_hidden_layers * 4 * batch * arch.num_attention_heads * arch.head_dim * (context + 1)
    return linear + lm_head + attn


# ---- bytes ---------------------------------------------------------------------------------------------
def kv_bytes_per_token(arch: Architecture, dtype: str) -> int:
    """K and V of one token in every layer: 2 · layers · kv_heads · head_dim · dtype bytes."""
    return 2 * arch.num_hidden_layers * arch.kv_dim * dtype_bytes(dtype)


def weight_read_bytes(arch: Architecture, dtype: str, rows: int) -> int:
    """Weight bytes one forward reads: all weights except the embedding table, the LM head once (whether or
    not tied), and ``rows`` embedding rows (one per new token)."""
    b = dtype_bytes(dtype)
    non_embedding = total_params(arch) - embedding_params(arch)  # includes the LM head when untied
    if arch.tie_word_embeddings:
        non_embedding += lm_head_params(arch)  # the shared matrix, read as the LM head
    return (non_embedding + rows * arch.hidden_size) * b


def logits_write_bytes(arch: Architecture, dtype: str, batch: int, kept: int = 1) -> int:
    return batch * kept * arch.vocab_size * dtype_bytes(dtype)


def prefill_bytes(arch: Architecture, dtype: str, batch: int, seq: int) -> int:
    """Fewest bytes of one prefill forward: weights + embedding rows + KV written + kept logits written."""
    _check_pos(batch=batch, seq=seq)
    tokens = batch * seq
    return (
        weight_read_bytes(arch, dtype, tokens)
        + kv_bytes_per_token(arch, dtype) * tokens
        + logits_write_bytes(arch, dtype, batch)
    )


def decode_step_bytes(arch: Architecture, dtype: str, batch: int, context: int) -> int:
    """Fewest bytes of one decode step at ``context`` cached tokens: weights + ``batch`` embedding rows +
    KV of the cached tokens read + KV of the new token written + logits written."""
    _check_pos(batch=batch, context=context)
    kv = kv_bytes_per_token(arch, dtype)
    return (
        weight_read_bytes(arch, dtype, batch)
        + kv * batch * context
        + kv * batch
        + logits_write_bytes(arch, dtype, batch)
    )


# ---- floors --------------------------------------------------------------------------------------------
def phase_floor(flops: float, nbytes: float, peak_flops_per_s: float, peak_bytes_per_s: float) -> tuple[float, str]:
    """Lower bound on a phase's time in ms, and which ceiling sets it ("compute" or "memory")."""
    if not (peak_flops_per_s > 0 and peak_bytes_per_s > 0):
        raise ValueError(f"ceilings must be positive, got {peak_flops_per_s!r} FLOP/s, {peak_bytes_per_s!r} B/s")
    compute_ms = flops / peak_flops_per_s * 1e3
    memory_ms = nbytes / peak_bytes_per_s * 1e3
    if compute_ms > memory_ms:
        return compute_ms, "compute"
    return memory_ms, "memory"


def _efficiency(floor_ms: float | None, measured_ms: float | None) -> float | None:
    if floor_ms is None or measured_ms is None:
        return None
    try:
        m = float(measured_ms)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(m) or m <= 0:
        return None
    return floor_ms / m


def _ceilings(ceilings: Mapping[str, float]) -> tuple[float, float]:
    try:
        bw = float(ceilings["bandwidth_gb_s"]) * 1e9
        fl = float(ceilings["matmul_tflops"]) * 1e12
    except KeyError as e:
        raise ValueError(f"ceilings lacks {e.args[0]!r}; need bandwidth_gb_s and matmul_tflops") from None
    if not (math.isfinite(bw) and math.isfinite(fl) and bw > 0 and fl > 0):
        raise ValueError(f"ceilings must be positive and finite, got {dict(ceilings)!r}")
    return fl, bw


def cell_roofline(
    arch: Architecture,
    dtype: str,
    seq: int,
    batch: int,
    gen_tokens: int,
    ceilings: Mapping[str, float],
    prefill_p50_ms: float | None = None,
    decode_p50_ms_per_tok: float | None = None,
) -> dict[str, Any]:
    """Roofline columns of one sweep cell (see ROOFLINE_COLUMNS).

    Decode values are the mean over the ``gen_tokens - 1`` decode steps at contexts
    L = seq, seq+1, ..., seq+gen_tokens-2; ``decode_floor_ms`` is the mean of the per-step floors and
    ``decode_bound`` names the ceiling whose summed time over the steps is larger. With gen_tokens < 2 there
    are no decode steps and every decode value is None.
    """
    _check_pos(seq=seq, batch=batch, gen_tokens=gen_tokens)
    peak_flops, peak_bw = _ceilings(ceilings)
    out: dict[str, Any] = {}

    pf = prefill_flops(arch, batch, seq)
    pb = prefill_bytes(arch, dtype, batch, seq)
    p_floor, p_bound = phase_floor(pf, pb, peak_flops, peak_bw)
    out["prefill_gflop"] = pf / 1e9
    out["prefill_gbytes"] = pb / 1e9
    out["prefill_floor_ms"] = p_floor
    out["prefill_bound"] = p_bound
    out["prefill_efficiency"] = _efficiency(p_floor, prefill_p50_ms)

    steps = gen_tokens - 1
    if steps < 1:
        out.update(
            decode_gflop_per_step=None,
            decode_gbytes_per_step=None,
            decode_floor_ms=None,
            decode_bound=None,
            decode_efficiency=None,
        )
        return out
    sum_f = sum_b = sum_floor = sum_compute = sum_memory = 0.0
    for L in range(seq, seq + steps):
        f = decode_step_flops(arch, batch, L)
        b = decode_step_bytes(arch, dtype, batch, L)
        floor, _ = phase_floor(f, b, peak_flops, peak_bw)
        sum_f += f
        sum_b += b
        sum_floor += floor
        sum_compute += f / peak_flops
        sum_memory += b / peak_bw
    d_floor = sum_floor / steps
    out["decode_gflop_per_step"] = sum_f / steps / 1e9
    out["decode_gbytes_per_step"] = sum_b / steps / 1e9
    out["decode_floor_ms"] = d_floor
    out["decode_bound"] = "compute" if sum_compute > sum_memory else "memory"
    out["decode_efficiency"] = _efficiency(d_floor, decode_p50_ms_per_tok)
    return out


def peak_floors(
    arch: Architecture, dtype: str, seq: int, batch: int, gen_tokens: int, peak: Mapping[str, Any] | None
) -> dict[str, float | None]:
    """The prefill and decode floors against the device's theoretical peak (``calibrate.theoretical_peak``)
    instead of the measured ceilings: ``prefill_floor_peak_ms``, ``decode_floor_peak_ms``; None without a peak."""
    out: dict[str, float | None] = {"prefill_floor_peak_ms": None, "decode_floor_peak_ms": None}
    if not peak or not peak.get("bandwidth_gb_s") or not peak.get("matmul_tflops"):
        return out
    floors = cell_roofline(arch, dtype, seq, batch, gen_tokens,
                           {"bandwidth_gb_s": peak["bandwidth_gb_s"], "matmul_tflops": peak["matmul_tflops"]})
    out["prefill_floor_peak_ms"] = floors["prefill_floor_ms"]
    out["decode_floor_peak_ms"] = floors["decode_floor_ms"]
    return out


LAUNCH_BOUND_BELOW = 0.5  # a phase whose GPU is busy less than half its time is waiting on the host


def regime(busy: float | None, bound: str | None) -> str | None:
    """launch-bound when the GPU idles most of the phase; otherwise the roofline's bound (memory or compute)."""
    if busy is not None and busy < LAUNCH_BOUND_BELOW:
        return "launch-bound"
    return f"{bound}-bound" if bound else None
