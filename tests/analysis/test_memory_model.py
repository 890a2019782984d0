"""memory_model.py: KV cache, weights, logits and activation estimates."""

from __future__ import annotations

import json
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from latency_sensitivity.analysis.memory_model import (
    activation_estimate_bytes,
    kv_cache_bytes,
    logits_bytes,
    materialises_scores,
    predicted_memory,
    weights_bytes,
)
from latency_sensitivity.config import MODELS_DIR
from latency_sensitivity.analysis.roofline import Architecture

QWEN25_3B = Architecture.from_config(json.loads((MODELS_DIR / "qwen2.5-3b.json").read_text()))
GIB = 2**30
MIB = 2**20

# layers 2, hidden 8, heads 2, kv 1, head_dim 4, intermediate 16, vocab 10
HAND = Architecture.from_config(
    {
        "model_type": "qwen2",
        "num_hidden_layers": 2,
        "hidden_size": 8,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 16,
        "vocab_size": 10,
        "tie_word_embeddings": True,
    }
)


def test_kv_cache_qwen25_3b_published_numbers():
    # 2 * 36 layers * 2 KV heads * 128 * 2 bytes = 36 KiB per token
    assert kv_cache_bytes(QWEN25_3B, "bf16", 1, 1) == 36_864 == 36 * 1024
    assert kv_cache_bytes(QWEN25_3B, "bf16", 128, 768) == 3_623_878_656
    assert kv_cache_bytes(QWEN25_3B, "bf16", 128, 768) / GIB == 3.375
    assert kv_cache_bytes(QWEN25_3B, "fp32", 1, 1) == 73_728
    assert kv_cache_bytes(QWEN25_3B, "fp16", 0, 100) == 0


def test_kv_cache_matches_a_real_dynamic_cache():
    d = {
        "model_type": "qwen3",
        "num_hidden_layers": 3,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 24,
        "intermediate_size": 96,
        "vocab_size": 128,
    }
    arch = Architecture.from_config(d)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**d)).eval()
    batch, seq = 3, 11
    with torch.no_grad():
        out = model(input_ids=torch.randint(0, 128, (batch, seq)), use_cache=True, logits_to_keep=1)
        cache = out.past_key_values

        def cache_bytes() -> int:
            return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))

        assert cache_bytes() == kv_cache_bytes(arch, "fp32", batch, seq) == 2 * 3 * 2 * 24 * 4 * 3 * 11
        assert out.logits.numel() * out.logits.element_size() == logits_bytes(arch, "fp32", batch)
        model(input_ids=torch.randint(0, 128, (batch, 1)), past_key_values=cache, use_cache=True)
        assert cache_bytes() == kv_cache_bytes(arch, "fp32", batch, seq + 1)


def test_weights_and_logits_bytes():
    assert weights_bytes(QWEN25_3B, "bf16") == 3_085_938_688 * 2 == 6_171_877_376
    assert weights_bytes(QWEN25_3B, "fp32") == 12_343_754_752
    assert weights_bytes(HAND, "fp32") == 1304 * 4
    assert logits_bytes(QWEN25_3B, "fp16", 4) == 4 * 151936 * 2
    assert logits_bytes(QWEN25_3B, "fp32", 2, kept=3) == 2 * 3 * 151936 * 4


def test_activation_estimate_hand_numbers():
    # batch 3, seq 5, fp32: MLP 15 tokens * 16 * 3 * 4 = 2880; attention 15 * (2*2 + 2*1) * 4 * 4 = 1440
    assert activation_estimate_bytes(HAND, "fp32", 3, 5, "sdpa") == 2880
    # eager adds scores + softmax 2 * 3 * 2 * 5 * 5 * 4 = 1200 -> 2640, still below the MLP
    assert activation_estimate_bytes(HAND, "fp32", 3, 5, "eager") == 2880
    # seq 50: MLP 150 * 16 * 12 = 28800; eager attention 150 * 24 * 4 + 2 * 3 * 2 * 2500 * 4 = 134400
    assert activation_estimate_bytes(HAND, "fp32", 3, 50, "sdpa") == 28800
    assert activation_estimate_bytes(HAND, "fp32", 3, 50, "flash_attention_2") == 28800
    assert activation_estimate_bytes(HAND, "fp32", 3, 50, "eager") == 134400
    assert activation_estimate_bytes(HAND, "fp16", 3, 50, "eager") == 134400 // 2
    assert materialises_scores("paged|eager") and not materialises_scores("sdpa")
    with pytest.raises(ValueError):
        activation_estimate_bytes(HAND, "fp32", 3, 5, "")
    with pytest.raises(ValueError):
        activation_estimate_bytes(HAND, "fp32", -1, 5, "sdpa")


def test_predicted_memory_qwen25_3b():
    p = predicted_memory(QWEN25_3B, "bf16", batch=1, seq=128, gen_tokens=128, attn_implementation="sdpa")
    assert set(p) == {"weights_mb", "kv_cache_mb", "logits_mb", "activation_mb", "predicted_memory_mb"}
    assert p["weights_mb"] == pytest.approx(6_171_877_376 / MIB)  # 5885.96 MiB
    assert p["kv_cache_mb"] == pytest.approx(9.0)  # 256 tokens * 36 KiB
    assert p["logits_mb"] == pytest.approx(151936 * 2 / MIB)
    assert p["activation_mb"] == pytest.approx(128 * 11008 * 3 * 2 / MIB)  # MLP intermediates: 8.0625 MiB
    assert p["predicted_memory_mb"] == pytest.approx(
        p["weights_mb"] + p["kv_cache_mb"] + p["logits_mb"] + p["activation_mb"]
    )
    assert p["predicted_memory_mb"] == pytest.approx(5903.31, abs=0.01)

    # the published batch 128 x 768 cell: 3.375 GiB of KV cache = 3456 MiB
    big = predicted_memory(QWEN25_3B, "bf16", batch=128, seq=512, gen_tokens=256, attn_implementation="sdpa")
    assert big["kv_cache_mb"] == pytest.approx(3456.0)
    # batch 128 x 512 under eager: scores + softmax 2 * 128 * 16 * 512^2 * 2 B = 2048 MiB, plus q, k, v, out
    # 128 * 512 * 36 * 128 * 2 B = 576 MiB; still below the MLP's 128 * 512 * 11008 * 3 * 2 B = 4128 MiB
    eager = predicted_memory(QWEN25_3B, "bf16", batch=128, seq=512, gen_tokens=256, attn_implementation="eager")
    assert eager["activation_mb"] == big["activation_mb"] == pytest.approx(4128.0)
    # batch 8 x 2048: eager 2 * 8 * 16 * 2048^2 * 2 B = 2048 MiB + 8 * 2048 * 36 * 128 * 2 B = 144 MiB beats
    # the MLP's 8 * 2048 * 11008 * 6 B = 1032 MiB; sdpa keeps the MLP figure
    long_eager = predicted_memory(QWEN25_3B, "bf16", batch=8, seq=2048, gen_tokens=1, attn_implementation="eager")
    long_sdpa = predicted_memory(QWEN25_3B, "bf16", batch=8, seq=2048, gen_tokens=1, attn_implementation="sdpa")
    assert long_eager["activation_mb"] == pytest.approx(2048 + 144)
    assert long_sdpa["activation_mb"] == pytest.approx(1032.0)
