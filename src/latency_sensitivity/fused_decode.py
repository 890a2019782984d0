"""A decode step with fewer kernels: the decoder layers of the Llama/Qwen2 form rewritten for one-token steps.

transformers runs a decoder layer as RMSNorm, q/k/v projections, rotary embedding, cache update, attention,
output projection, residual addition, RMSNorm, gate/up projections, SiLU-and-multiply, down projection and
residual addition. Compiled, that is still about 13 kernels per layer, and on the H100 the ones between the
projections (normalisations, activation, additions, the attention) took about 40% of a batch-1 step's time
(benchmarks/README.md, "compiled"). ``fuse_decode_layers`` gives such layers a forward that, for a one-token
input, runs them as five products and one attention:

1. ``linear(x, qkv, x_mode=X_PAIR, norm_weight=...)``: the residual addition of the previous layer and the
   input RMSNorm folded into the q/k/v product (the residual stream travels between layers as the pair
   [residual, last output], shape (..., 2, hidden), so the addition happens where the sum is read);
2. rotary embedding and the cache update, as transformers' own functions (inductor fuses them);
3. ``attention``: the one-token query against the cache, the query heads of a KV head read together;
4. ``linear(attn, o, residual=pair)``: the output projection, writing the next pair;
5. ``linear(pair, gate_up, X_PAIR, norm)`` and ``linear(gate_up, down, X_SILU_MUL, residual=pair)``: the MLP
   with its normalisation, activation and residual addition folded in.

The model's final norm adds a pair before normalising. Each operation runs as a Triton kernel of ``kernels``
where that applies (one input row, fp16/bf16, on CUDA) and in torch otherwise: the torch form is the
reference, with transformers' roundings, and is what the CPU runs, so the rewritten layers are tested against
transformers' on the CPU and the kernels against the torch forms. Layers that differ from the form (q/k norms,
sliding windows, other activations, no fused projection groups) keep their own forward; the rewrite is all
layers or none, since the pair crosses every layer.

On the H100 (Qwen2.5-3B, fp16, seq 128 x batch 1, compiled): 402 kernels and 3.02-3.19 ms per step, against
473 and 3.27-3.34 ms with the layers as transformers has them; the products themselves got 0.17 ms slower
inside the step (benchmarks/README.md, "decoder layers rewritten").
"""

from __future__ import annotations

import sys
import types

from . import backends

# How a fused product's input holds its row (kernels.gemv_kernel's X_MODE; defined here, as kernels needs
# Triton to import): the row; a residual pair to add; gate/up for SiLU(gate) * up.
X_ROW, X_PAIR, X_SILU_MUL = 0, 1, 2

# Attention implementations whose masks are 4-D (boolean or additive), as `attention` takes them.
MASKED_ATTENTION = ("sdpa", "eager", "sdpa_packed_gqa")

# The decoder layer form rewritten: children of the layer, its attention and its MLP.
LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
ATTENTION_CHILDREN = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP_CHILDREN = {"gate_proj", "up_proj", "down_proj", "act_fn"}
SILU = ("silu", "swish")


def _kernels_apply(x, *tensors) -> bool:
    """Whether the Triton kernels take x: on CUDA, fp16/bf16, with Triton installed."""
    import torch

    if not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16):
        return False
    return backends.gemv_available() and all(t is None or t.dtype == x.dtype for t in tensors)


def _decode_kernel_takes(head_dim: int, x, *tensors) -> bool:
    """Whether kernels.decode_attention takes heads of head_dim (a power of two, >= 16 for tl.dot) for x."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0 and _kernels_apply(x, *tensors)


def _row(x, x_mode: int):
    """The input row as x_mode holds it (see kernels.gemv_kernel), with torch's roundings."""
    import torch

    if x_mode == X_PAIR:
        return x[..., 0, :] + x[..., 1, :]
    if x_mode == X_SILU_MUL:
        half = x.shape[-1] // 2
        return torch.nn.functional.silu(x[..., :half]) * x[..., half:]
    return x


def rms_norm(x, weight, eps: float):
    """RMSNorm as transformers' Llama/Qwen2 modules compute it: fp32 inside, rounded, then the weight."""
    import torch

    dtype = x.dtype
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def linear(x, weight, bias=None, *, x_mode: int = X_ROW, norm_weight=None, eps: float = 0.0, residual=None):
    """The fused product of kernels.gemv: (norm of) the input row as x_mode holds it, times weight.T, plus bias;
    with `residual`, the pair [residual (a row, or a pair summed), product] of shape (..., 2, N)."""
    import torch

    row_width = weight.shape[1] * (2 if x_mode != X_ROW else 1)
    one_row = x.numel() == row_width and weight.stride(-1) == 1
    if one_row and _kernels_apply(x, weight, bias, norm_weight, residual):
        from . import kernels

        return kernels.gemv(x, weight, bias, x_mode=x_mode, norm_weight=norm_weight, eps=eps, residual=residual)
    row = _row(x, x_mode)
    if norm_weight is not None:
        row = rms_norm(row, norm_weight, eps)
    y = torch.nn.functional.linear(row, weight, bias)
    if residual is None:
        return y
    if residual.shape != y.shape:  # a pair
        residual = residual[..., 0, :] + residual[..., 1, :]
    return torch.stack((residual, y), dim=-2)


def attention(query, key, value, mask, scale: float):
    """A one-token query (B, H, 1, D) on cached keys and values (B, HKV, L, D); mask None, boolean (True:
    attend) or additive, broadcasting to (B, 1, 1, L). Returns (B, 1, H, D).

    kernels.decode_attention where it applies; otherwise backends.packed_sdpa (the same arithmetic as
    repeating the keys and values per query head).
    """
    import torch

    boolean_mask = mask is None or (mask.dtype == torch.bool and mask.shape[-1] == key.shape[2]
                                    and mask.dim() == 4 and mask.shape[1:3] == (1, 1))
    if (boolean_mask and key.stride(-1) == 1 and value.stride(-1) == 1
            and _decode_kernel_takes(query.shape[-1], query, key, value)):
        from . import kernels

        return kernels.decode_attention(query, key, value, None if mask is None else mask.contiguous(), scale)
    return backends.packed_sdpa(query, key, value, mask, scale)


def add_pair(x):
    """A pair (..., 2, N) summed to its row (..., N); a row as it is."""
    return x[..., 0, :] + x[..., 1, :] if x.dim() == 4 else x


class _LayerPlan:
    """What the rewritten forward of one decoder layer reads: the fused weights and the shapes."""

    def __init__(self, layer, qkv_group, gate_up_group, rotary):
        attn = layer.self_attn
        self.qkv, self.gate_up = qkv_group, gate_up_group
        self.head_dim = attn.head_dim
        self.sizes = [m.out_features for m in qkv_group.modules]
        self.scaling = attn.scaling
        self.rotary = rotary


def _fused_decoder_layer_forward(self, hidden_states, attention_mask=None, position_ids=None,
                                 past_key_values=None, use_cache=False, position_embeddings=None, **kwargs):
    plan = self.fused_decode_plan
    pair_in = hidden_states.dim() == 4
    if hidden_states.shape[1] != 1 or past_key_values is None or position_embeddings is None:
        return type(self).forward(self, add_pair(hidden_states), attention_mask=attention_mask,
                                  position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                                  position_embeddings=position_embeddings, **kwargs)
    attn, mlp = self.self_attn, self.mlp
    b = hidden_states.shape[0]
    norm = self.input_layernorm
    qkv = linear(hidden_states, plan.qkv.weight, plan.qkv.bias, x_mode=X_PAIR if pair_in else X_ROW,
                 norm_weight=norm.weight, eps=norm.variance_epsilon)
    q, k, v = (t.view(b, 1, -1, plan.head_dim).transpose(1, 2) for t in qkv.split(plan.sizes, dim=-1))
    cos, sin = position_embeddings
    q, k = plan.rotary(q, k, cos, sin)
    k, v = past_key_values.update(k, v, attn.layer_idx)
    out = attention(q, k, v, attention_mask, plan.scaling).reshape(b, 1, -1)
    pair = linear(out, attn.o_proj.weight, attn.o_proj.bias, residual=hidden_states)
    norm = self.post_attention_layernorm
    gate_up = linear(pair, plan.gate_up.weight, plan.gate_up.bias, x_mode=X_PAIR, norm_weight=norm.weight,
                     eps=norm.variance_epsilon)
    return linear(gate_up, mlp.down_proj.weight, mlp.down_proj.bias, x_mode=X_SILU_MUL, residual=pair)


def attention_name(model) -> str:
    """How the rewritten layers run a decode step's attention on this model (for the result file)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if cfg._attn_implementation != "eager" and _decode_kernel_takes(head_dim, next(model.parameters())):
        return "decode kernel, packed GQA"  # eager attention's masks are additive: those go to SDPA
    return "sdpa, packed GQA"


def _pair_norm_forward(self, hidden_states):
    return type(self).forward(self, add_pair(hidden_states))


def _rotary(attn):
    """The rotary embedding function of the attention module's modeling file (transformers' own)."""
    return getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)


def _rewritable(layer, groups_by_module, norm_names) -> bool:
    import torch

    children = dict(layer.named_children())
    if set(children) != LAYER_CHILDREN:
        return False
    attn, mlp = children["self_attn"], children["mlp"]
    if set(dict(attn.named_children())) != ATTENTION_CHILDREN or set(dict(mlp.named_children())) != MLP_CHILDREN:
        return False
    if getattr(attn, "sliding_window", None) is not None or not hasattr(attn, "layer_idx") or _rotary(attn) is None:
        return False
    if any(type(layer.get_submodule(n)).__name__ not in norm_names for n in ("input_layernorm",
                                                                             "post_attention_layernorm")):
        return False
    qkv, gate_up = groups_by_module.get(id(attn.q_proj)), groups_by_module.get(id(mlp.gate_proj))
    return (qkv is not None and list(qkv.modules) == [attn.q_proj, attn.k_proj, attn.v_proj]
            and gate_up is not None and list(gate_up.modules) == [mlp.gate_proj, mlp.up_proj]
            and type(attn.o_proj) is torch.nn.Linear and type(mlp.down_proj) is torch.nn.Linear)


def fuse_decode_layers(model, groups, norm_names) -> list:
    """Give the model's decoder layers of the Llama/Qwen2 form the fused one-token forward (module docstring),
    and its final norm a forward that adds a pair; returns the changed modules (`unfuse_decode_layers` undoes).

    groups: the fused projection groups (backends.fuse_sibling_projections), q/k/v and gate/up of every layer
    rewritten. norm_names: the RMSNorm classes whose arithmetic `rms_norm` reproduces. Needs transformers >= 5
    (layers returning a tensor, the cache's update taking no positions); with anything else nothing changes.
    """
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        return []
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    final_norm = getattr(decoder, "norm", None)
    if layers is None or final_norm is None or type(final_norm).__name__ not in norm_names:
        return []
    if getattr(model.config, "hidden_act", None) not in SILU:
        return []
    if getattr(model.config, "_attn_implementation", None) not in MASKED_ATTENTION:
        return []  # flash attention's masks are 2-D, or none
    by_module = {id(m): g for g in groups for m in g.modules}
    if not all(_rewritable(layer, by_module, norm_names) for layer in layers):
        return []  # all or none: the pair must travel through every layer
    changed = []
    for layer in layers:
        attn = layer.self_attn
        layer.fused_decode_plan = _LayerPlan(layer, by_module[id(attn.q_proj)], by_module[id(layer.mlp.gate_proj)],
                                             _rotary(attn))
        layer.forward = types.MethodType(_fused_decoder_layer_forward, layer)
        changed.append(layer)
    final_norm.forward = types.MethodType(_pair_norm_forward, final_norm)
    changed.append(final_norm)
    return changed


def unfuse_decode_layers(modules) -> None:
    backends._restore_forward(modules, "fused_decode_plan")
