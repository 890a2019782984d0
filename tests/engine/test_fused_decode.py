"""The torch forms of fused_decode's operations (what the CPU runs, and what the kernels are tested against),
against transformers' modules and hand-written compositions."""

import pytest
import torch

from latency_sensitivity.engine import fused_decode as fd
from latency_sensitivity.engine import forms


def test_rms_norm_is_the_module_arithmetic():
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    norm = Qwen2RMSNorm(64, eps=1e-6).half()
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(2, 3, 64).half()
    assert torch.equal(fd.rms_norm(x, norm.weight, 1e-6), norm(x))


def test_linear_forms():
    torch.manual_seed(0)
    w, b, g = torch.randn(5, 8), torch.randn(5), torch.rand(8) + 0.5
    row, pair, gate_up = torch.randn(1, 1, 8), torch.randn(1, 1, 2, 8), torch.randn(1, 1, 16)
    lin = torch.nn.functional.linear
    torch.testing.assert_close(fd.linear(row, w, b), lin(row, w, b))
    torch.testing.assert_close(fd.linear(pair, w, b, x_mode=forms.X_PAIR), lin(pair[..., 0, :] + pair[..., 1, :], w, b))
    act = torch.nn.functional.silu(gate_up[..., :8]) * gate_up[..., 8:]
    torch.testing.assert_close(fd.linear(gate_up, w, x_mode=forms.X_SILU_MUL), lin(act, w))
    torch.testing.assert_close(fd.linear(pair, w, x_mode=forms.X_PAIR, norm_weight=g, eps=1e-5),
                               lin(fd.rms_norm(pair.sum(-2), g, 1e-5), w))
    # with a residual: the pair [residual, product], the residual a row or a pair summed
    r_row, r_pair = torch.randn(1, 1, 5), torch.randn(1, 1, 2, 5)
    out = fd.linear(row, w, residual=r_row)
    assert out.shape == (1, 1, 2, 5)
    assert torch.equal(out[..., 0, :], r_row) and torch.equal(out[..., 1, :], lin(row, w))
    assert torch.equal(fd.linear(row, w, residual=r_pair)[..., 0, :], r_pair[..., 0, :] + r_pair[..., 1, :])
    assert torch.equal(fd.add_pair(out), r_row + lin(row, w)) and fd.add_pair(row) is row


@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
def test_attention_is_repeated_kv_attention(mask_kind):
    torch.manual_seed(0)
    b, h, hkv, length, d = 2, 8, 2, 11, 16
    q, k, v = torch.randn(b, h, 1, d), torch.randn(b, hkv, length, d), torch.randn(b, hkv, length, d)
    keep = torch.ones(b, 1, 1, length, dtype=torch.bool)
    keep[..., 9:] = False
    keep[1, ..., 0] = False
    mask = {None: None, "bool": keep,
            "additive": torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))}[mask_kind]
    k_rep, v_rep = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    scores = q @ k_rep.transpose(2, 3) * 0.3
    if mask is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    want = (scores.softmax(-1) @ v_rep).transpose(1, 2)
    got = fd.attention(q, k, v, mask, 0.3)
    assert got.shape == (b, 1, h, d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_qkv_rope_is_the_projection_rotation_and_cache_update():
    """qkv_rope's torch form against the three steps as transformers runs them: the q/k/v projections,
    apply_rotary_pos_emb, the static cache layer's update."""
    from transformers.cache_utils import StaticLayer
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

    torch.manual_seed(0)
    heads, kv_heads, d, hidden, pos = 4, 2, 16, 24, 5
    rows = (heads + 2 * kv_heads) * d
    w, b, g = torch.randn(rows, hidden), torch.randn(rows), torch.rand(hidden)
    x, cos, sin = torch.randn(1, 1, 2, hidden), torch.randn(1, 1, d), torch.randn(1, 1, d)
    want_layer, got_layer = StaticLayer(max_cache_len=9), StaticLayer(max_cache_len=9)
    for layer in (want_layer, got_layer):  # allocated, `pos` positions held
        layer.lazy_initialization(torch.zeros(1, kv_heads, 1, d), torch.zeros(1, kv_heads, 1, d))
        layer.cumulative_length.fill_(pos)
    qkv = fd.linear(x, w, b, x_mode=forms.X_PAIR, norm_weight=g, eps=1e-6)
    q, k, v = (t.view(1, 1, -1, d).transpose(1, 2) for t in qkv.split([heads * d, kv_heads * d, kv_heads * d], -1))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    want_layer.update(k, v)
    got = fd.qkv_rope(x, w, b, heads=heads, kv_heads=kv_heads, cos=cos, sin=sin, position=torch.tensor([[pos]]),
                      keys=got_layer.keys, values=got_layer.values, length=got_layer.cumulative_length,
                      x_mode=forms.X_PAIR, norm_weight=g, eps=1e-6)
    assert torch.equal(got, q)
    assert torch.equal(got_layer.keys, want_layer.keys) and torch.equal(got_layer.values, want_layer.values)
    assert int(got_layer.cumulative_length) == int(want_layer.cumulative_length) == pos + 1


def test_the_rotary_form_is_recognised():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb as qwen2

    def interleaved(q, k, cos, sin):  # pairs (2i, 2i + 1) rotated, as some models do: not rotate_half's
        def rot(x):
            return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
        return q * cos.unsqueeze(1) + rot(q) * sin.unsqueeze(1), k * cos.unsqueeze(1) + rot(k) * sin.unsqueeze(1)

    assert fd._rotates_half(qwen2) and fd._rotates_half(llama)
    assert not fd._rotates_half(interleaved)
    assert not fd._rotates_half(lambda q, k, cos, sin, position_ids: (q, k))  # another signature
