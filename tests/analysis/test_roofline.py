"""Parameter, FLOP and byte counts of roofline.py, checked against transformers and hand arithmetic."""

from __future__ import annotations

import json
import dataclasses
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoConfig, AutoModelForCausalLM

from latency_sensitivity.columns import ROOFLINE_COLUMNS, Column
from latency_sensitivity.config import MODELS_DIR
from latency_sensitivity.analysis.roofline import (
    Architecture,
    cell_roofline,
    decode_step_bytes,
    decode_step_flops,
    dtype_bytes,
    kv_bytes_per_token,
    linear_params,
    phase_floor,
    prefill_bytes,
    prefill_flops,
    total_params,
)

# Qwen2.5-3B's published config.json (the fields that matter here).
QWEN25_3B = json.loads((MODELS_DIR / "qwen2.5-3b.json").read_text())  # the shipped, published config.json
QWEN25_3B_PARAMS = 3_085_938_688

TINY = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "vocab_size": 128,
}

TINY_CONFIGS = {
    "qwen2-tied": {**TINY, "model_type": "qwen2", "tie_word_embeddings": True},
    "qwen2-untied": {**TINY, "model_type": "qwen2", "tie_word_embeddings": False},
    "llama-untied": {**TINY, "model_type": "llama", "tie_word_embeddings": False},
    "llama-tied-biases": {
        **TINY,
        "model_type": "llama",
        "tie_word_embeddings": True,
        "attention_bias": True,
        "mlp_bias": True,
    },
    "llama-head-dim": {**TINY, "model_type": "llama", "head_dim": 8, "num_key_value_heads": 4},
    "mistral": {**TINY, "model_type": "mistral", "tie_word_embeddings": False},
    "qwen3-tied": {**TINY, "model_type": "qwen3", "head_dim": 24, "tie_word_embeddings": True},
    "qwen3-untied": {**TINY, "model_type": "qwen3", "head_dim": 24, "tie_word_embeddings": False},
    "qwen3-bias": {**TINY, "model_type": "qwen3", "head_dim": 16, "attention_bias": True},
}


def _hf_model(d: dict, attn: str = "sdpa"):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(**d)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


def _hf_linear_weights(model) -> int:
    return sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    )


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_param_counts_match_transformers(name):
    d = TINY_CONFIGS[name]
    model = _hf_model(d)
    arch = Architecture.from_config(d)
    assert total_params(arch) == sum(p.numel() for p in model.parameters())
    assert linear_params(arch) == _hf_linear_weights(model)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == bool(d.get("tie_word_embeddings", False)) == arch.tie_word_embeddings


def test_qwen25_3b_params_match_meta_model():
    arch = Architecture.from_config(QWEN25_3B)
    assert total_params(arch) == QWEN25_3B_PARAMS
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**QWEN25_3B))
    assert sum(p.numel() for p in model.parameters()) == QWEN25_3B_PARAMS
    assert linear_params(arch) == _hf_linear_weights(model) == 2_774_532_096
    # untying adds one vocab x hidden matrix
    untied = Architecture.from_config({**QWEN25_3B, "tie_word_embeddings": False})
    assert total_params(untied) == QWEN25_3B_PARAMS + 151936 * 2048


def test_flops_match_torch_flop_counter():
    """FlopCounterMode counts the matmuls transformers really runs. With eager attention the prefill scores
    are the full seq x seq square (our formula counts the causal triangle); decode matches exactly."""
    d = TINY_CONFIGS["qwen3-untied"]
    arch = Architecture.from_config(d)
    model = _hf_model(d, attn="eager")
    batch, seq = 3, 7
    ids = torch.randint(0, d["vocab_size"], (batch, seq))
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        prefill_counted = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            model(input_ids=ids[:, :1], past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
        decode_counted = fc.get_total_flops()
    per_pair = 2 * 2 * batch * arch.num_attention_heads * arch.head_dim * arch.num_hidden_layers
    causal = per_pair * seq * (seq + 1) // 2
    full = per_pair * seq * seq
    # Some transformers versions compute RoPE's cos/sin with a small matmul (inv_freq @ positions), which the
    # formula ignores: at most 2 * (head_dim / 2) * positions * batch FLOPs.
    def rope(positions: int) -> int:
        return 2 * (arch.head_dim // 2) * positions * batch

    assert 0 <= prefill_counted - (prefill_flops(arch, batch, seq) - causal + full) <= rope(seq)
    assert 0 <= decode_counted - decode_step_flops(arch, batch, seq) <= rope(1)


# A hand-sized architecture: layers 2, hidden 8, heads 2, kv 1, head_dim 4, intermediate 16, vocab 10, tied.
HAND = {
    "model_type": "qwen2",
    "num_hidden_layers": 2,
    "hidden_size": 8,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 16,
    "vocab_size": 10,
    "tie_word_embeddings": True,
}


def test_hand_counts():
    a = Architecture.from_config(HAND)
    assert a.head_dim == 4
    # per layer: q 8*8 + k 8*4 + v 8*4 + o 8*8 + gate/up/down 3*8*16 = 64+32+32+64+384 = 576
    assert linear_params(a) == 2 * 576
    # embed 80 + 2 * (576 linear + 16 qkv bias + 16 norms) + 8 final norm (tied: no lm_head)
    assert total_params(a) == 80 + 2 * (576 + 16 + 16) + 8 == 1304
    assert kv_bytes_per_token(a, "fp32") == 2 * 2 * 1 * 4 * 4 == 64

    # prefill, batch 3, seq 5: linear 2*1152*15, LM head 2*8*10*3, attention 2 layers * 4*3*2*4 * 15
    assert prefill_flops(a, 3, 5) == 34560 + 480 + 2880 == 37920
    # weights 1304 (tied matrix once) + 15 embedding rows of 8, fp32; KV 64 B * 15 tokens; logits 3*10*4
    assert prefill_bytes(a, "fp32", 3, 5) == (1304 + 15 * 8) * 4 + 64 * 15 + 120 == 6776
    # decode step at context 5: 2*1152*3 + 480 + 2 layers * 4*3*2*4 * 6
    assert decode_step_flops(a, 3, 5) == 6912 + 480 + 1152 == 8544
    # weights + 3 rows, KV read 5 tokens * 3 seqs, KV written 3 tokens, logits
    assert decode_step_bytes(a, "fp32", 3, 5) == (1304 + 24) * 4 + 64 * 15 + 64 * 3 + 120 == 6584
    assert decode_step_flops(a, 3, 6) == 8736
    assert decode_step_bytes(a, "fp32", 3, 6) == 6776
    # fp16 halves every byte term
    assert prefill_bytes(a, "fp16", 3, 5) == 6776 // 2

    # untied: the embedding table is no longer read whole, the LM head is; only the param count changes
    u = Architecture.from_config({**HAND, "tie_word_embeddings": False})
    assert total_params(u) == 1304 + 80
    assert prefill_bytes(u, "fp32", 3, 5) == 6776


def test_cell_roofline_hand_numbers():
    a = Architecture.from_config(HAND)
    # 1000 FLOP/s and 1000 B/s: a floor in ms equals the FLOP or byte count.
    slow = {"matmul_tflops": 1e-9, "bandwidth_gb_s": 1e-6}
    r = cell_roofline(a, "fp32", seq=5, batch=3, gen_tokens=3, ceilings=slow, prefill_p50_ms=75840.0, decode_p50_ms_per_tok=17280.0)
    assert r["prefill_gflop"] == pytest.approx(37920e-9)
    assert r["prefill_gbytes"] == pytest.approx(6776e-9)
    assert r["prefill_floor_ms"] == pytest.approx(37920)
    assert r["prefill_bound"] == "compute"
    assert r["prefill_efficiency"] == pytest.approx(0.5)
    # two decode steps at contexts 5 and 6
    assert r["decode_gflop_per_step"] == pytest.approx((8544 + 8736) / 2 * 1e-9)
    assert r["decode_gbytes_per_step"] == pytest.approx((6584 + 6776) / 2 * 1e-9)
    assert r["decode_floor_ms"] == pytest.approx(8640)
    assert r["decode_bound"] == "compute"
    assert r["decode_efficiency"] == pytest.approx(0.5)

    # 100 B/s: memory time is bytes * 10 ms, larger than the compute time
    r = cell_roofline(a, "fp32", seq=5, batch=3, gen_tokens=3, ceilings={"matmul_tflops": 1e-9, "bandwidth_gb_s": 1e-7})
    assert r["prefill_floor_ms"] == pytest.approx(67760)
    assert r["prefill_bound"] == "memory"
    assert r["decode_floor_ms"] == pytest.approx((6584 + 6776) / 2 * 10)
    assert r["decode_bound"] == "memory"
    assert r["prefill_efficiency"] is None and r["decode_efficiency"] is None


def test_cell_roofline_no_decode_steps_and_bad_measurements():
    a = Architecture.from_config(HAND)
    c = {"matmul_tflops": 1.0, "bandwidth_gb_s": 1.0}
    r = cell_roofline(a, "fp32", 5, 3, 1, c, prefill_p50_ms=float("nan"), decode_p50_ms_per_tok=1.0)
    for k in ("decode_gflop_per_step", "decode_gbytes_per_step", "decode_floor_ms", "decode_bound", "decode_efficiency"):
        assert r[k] is None
    assert r["prefill_efficiency"] is None  # NaN measurement
    assert cell_roofline(a, "fp32", 5, 3, 2, c, prefill_p50_ms=0.0)["prefill_efficiency"] is None
    with pytest.raises(ValueError, match="bandwidth_gb_s"):
        cell_roofline(a, "fp32", 5, 3, 2, {"matmul_tflops": 1.0})
    with pytest.raises(ValueError):
        cell_roofline(a, "fp32", 5, 3, 2, {"matmul_tflops": 0.0, "bandwidth_gb_s": 1.0})


def test_qwen25_3b_decode_is_memory_bound():
    a = Architecture.from_config(QWEN25_3B)
    # fp16, batch 1, one decode step at context 128:
    # params 3,085,938,688 * 2 + 1 embedding row 2048*2 + KV read 128 * 36,864 + KV write 36,864 + logits 151,936*2
    expected_bytes = 6_171_877_376 + 4_096 + 4_718_592 + 36_864 + 303_872
    assert expected_bytes == 6_176_940_800
    assert decode_step_bytes(a, "fp16", 1, 128) == expected_bytes
    r = cell_roofline(a, "fp16", seq=128, batch=1, gen_tokens=2, ceilings={"bandwidth_gb_s": 3000, "matmul_tflops": 989})
    assert r["decode_gbytes_per_step"] == pytest.approx(6.1769408)
    assert r["decode_floor_ms"] == pytest.approx(6.1769408 / 3.0, rel=1e-12)  # 2.0590 ms
    assert round(r["decode_floor_ms"], 2) == 2.06
    assert r["decode_bound"] == "memory"
    # 2 * 2,774,532,096 linear + 2 * 2048 * 151,936 LM head + 36 layers * 4 * 16 * 128 * 129
    assert r["decode_gflop_per_step"] == pytest.approx((5_549_064_192 + 622_329_856 + 38_043_648) / 1e9)


def test_qwen25_3b_long_prefill_is_compute_bound():
    a = Architecture.from_config(QWEN25_3B)
    seq = 4096
    flops = 2 * 2_774_532_096 * seq + 2 * 2048 * 151936 + 36 * 4 * 16 * 128 * (seq * (seq + 1) // 2)
    assert flops == 25_204_094_402_560
    assert prefill_flops(a, 1, seq) == flops
    r = cell_roofline(a, "fp16", seq=seq, batch=1, gen_tokens=2, ceilings={"bandwidth_gb_s": 3000, "matmul_tflops": 989})
    assert r["prefill_bound"] == "compute"
    assert r["prefill_floor_ms"] == pytest.approx(flops / 989e12 * 1e3)  # 25.48 ms
    assert round(r["prefill_floor_ms"], 1) == 25.5
    assert r["prefill_gbytes"] < 7.0
    # a short prefill at batch 1 is memory-bound on the same ceilings
    assert cell_roofline(a, "fp16", 16, 1, 2, {"bandwidth_gb_s": 3000, "matmul_tflops": 989})["prefill_bound"] == "memory"


def test_phase_floor():
    assert phase_floor(2e12, 1e9, 1e12, 1e12) == (pytest.approx(2000.0), "compute")
    assert phase_floor(1e9, 3e9, 1e12, 1e12) == (pytest.approx(3.0), "memory")
    assert phase_floor(1.0, 1.0, 1.0, 1.0) == (pytest.approx(1000.0), "memory")  # a tie reads as memory
    with pytest.raises(ValueError):
        phase_floor(1.0, 1.0, 0.0, 1.0)


def test_from_config_defaults_and_errors():
    a = Architecture.from_config({**TINY, "model_type": "llama", "num_key_value_heads": None})
    assert a.num_key_value_heads == 4 and a.head_dim == 16 and not a.tie_word_embeddings
    assert not (a.qkv_bias or a.o_bias or a.mlp_bias or a.qk_norm)
    q2 = Architecture.from_config({**TINY, "model_type": "qwen2"})
    assert q2.qkv_bias and not q2.o_bias
    q3 = Architecture.from_config({**TINY, "model_type": "qwen3"})
    assert q3.head_dim == 128 and q3.qk_norm and not q3.qkv_bias  # Qwen3Config's default head_dim
    assert Architecture.from_config({**TINY, "model_type": "qwen3", "head_dim": None}).head_dim == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hidden_size = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        Architecture.from_config({**TINY, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="hidden_size"):
        Architecture.from_config({k: v for k, v in QWEN25_3B.items() if k != "hidden_size"})
    with pytest.raises(ValueError, match="model_type"):
        Architecture.from_config(TINY)
    with pytest.raises(ValueError, match="multiple"):
        Architecture.from_config({**TINY, "model_type": "llama", "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="positive integer"):
        Architecture.from_config({**TINY, "model_type": "llama", "hidden_size": 0})


def test_dtype_bytes():
    assert (dtype_bytes("fp32"), dtype_bytes("fp16"), dtype_bytes("bf16")) == (4, 2, 2)
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_bytes("int8")


def test_roofline_columns_describe_every_key():
    a = Architecture.from_config(HAND)
    from latency_sensitivity.analysis.roofline import peak_floors

    r = cell_roofline(a, "fp32", 5, 3, 3, {"matmul_tflops": 1.0, "bandwidth_gb_s": 1.0})
    r.update(peak_floors(a, "fp32", 5, 3, 3, {"matmul_tflops": 2.0, "bandwidth_gb_s": 2.0}))
    assert [c.name for c in ROOFLINE_COLUMNS] == list(r)
    for c in ROOFLINE_COLUMNS:
        assert isinstance(c, Column)
        assert c.description.endswith(".") and len(c.description) > 20
    units = {c.name: c.unit for c in ROOFLINE_COLUMNS}
    assert units["prefill_floor_ms"] == "ms" and units["prefill_gflop"] == "GFLOP" and units["decode_gbytes_per_step"] == "GB"
    assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))


def test_regime_from_gpu_busy_and_bound():
    from latency_sensitivity.analysis.roofline import regime

    assert regime(0.2, "memory") == "launch-bound"
    assert regime(0.5, "memory") == "memory-bound"
    assert regime(0.95, "compute") == "compute-bound"
    assert regime(None, "memory") == "memory-bound"  # CPU: no kernel time
    assert regime(None, None) is None


def test_peak_floor_counts_tied_weights_once():
    from latency_sensitivity.analysis.roofline import peak_floors

    a = Architecture.from_config(QWEN25_3B)
    # the H100 SXM's spec: 3352 GB/s, 989.4 dense fp16 TFLOP/s; decode at context 128 reads 6.17 GB (tied: once)
    peak = {"bandwidth_gb_s": 3352.0, "matmul_tflops": 989.4}
    floors = peak_floors(a, "fp16", 128, 1, 2, peak)
    assert floors["decode_floor_peak_ms"] == pytest.approx(6.1769408 / 3.352, rel=1e-12)  # 1.843 ms
    measured = cell_roofline(a, "fp16", 128, 1, 2, {"bandwidth_gb_s": 3005.0, "matmul_tflops": 700.0})
    assert floors["decode_floor_peak_ms"] < measured["decode_floor_ms"]
    # the tied matrix is read once, as the LM head: 6.17 GB of weights, not 6.80 GB with it counted twice
    from latency_sensitivity.analysis.roofline import weight_read_bytes

    assert weight_read_bytes(a, "fp16", 0) == 6_171_877_376
    twice_ms = (6_171_877_376 + 151936 * 2048 * 2) / 3352e9 * 1e3
    assert floors["decode_floor_peak_ms"] < twice_ms
    assert peak_floors(a, "fp16", 128, 1, 2, None) == {"prefill_floor_peak_ms": None, "decode_floor_peak_ms": None}


def test_merge_carries_the_peak_floors():
    from latency_sensitivity.analysis import merge

    result = {"status": "ok", "architecture": QWEN25_3B,
              "cell": {"dtype": "fp16", "seq_len": 128, "batch": 1, "gen_tokens": 2},
              "metrics": {"prefill_p50_ms": 40.0, "decode_p50_ms_per_tok": 6.24}}
    ceilings = {"bandwidth_gb_s": 3005.0, "matmul_tflops": 700.0,
                "peak": {"bandwidth_gb_s": 3352.0, "matmul_tflops": 989.4}}
    row = merge.roofline_row(result, ceilings)
    assert row["decode_floor_peak_ms"] == pytest.approx(6.1769408 / 3.352, rel=1e-12)
    assert row["decode_floor_ms"] == pytest.approx(6.1769408 / 3.005, rel=1e-12)
    assert merge.roofline_row(result, {**ceilings, "peak": None})["decode_floor_peak_ms"] is None
