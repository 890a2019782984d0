"""A decode step with fewer kernels: the decoder layers of the Llama/Qwen2 form rewritten for one-token steps.

transformers runs a decoder layer as RMSNorm, q/k/v projections, rotary embedding, cache update, attention,
output projection, residual addition, RMSNorm, gate/up projections, SiLU-and-multiply, down projection and
residual addition. Compiled, that is still about 13 kernels per layer, and the ones between the projections
(normalisations, activation, additions, the attention) and the gaps between them take a large share of a
batch-1 step (benchmarks/decode_target/NOTES.md, "Stage 1"). ``fuse_decode_layers`` gives such layers a forward that, for a one-token
input, runs them as five products and one attention:

1. ``linear(x, qkv, x_mode=X_PAIR, norm_weight=...)``: the residual addition of the previous layer and the
   input RMSNorm folded into the q/k/v product (the residual stream travels between layers as the pair
   [residual, last output], shape (..., 2, hidden), so the addition happens where the sum is read);
2. ``qkv_rope``: with a static cache, product 1 also rotates q and k (rotate_half, where the modeling file's
   apply_rotary_pos_emb is that form) and writes k and v into the cache, in one kernel; otherwise
   transformers' rotary embedding and cache update follow it;
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

The kernels are launched by Triton with programmatic dependent launch (``pdl``) where the GPU has it. Kernels
per step and step times against the compiled step with transformers' layers: benchmarks/decode_target/NOTES.md,
"Stage 2" and "Stage 3".
"""

from __future__ import annotations

import sys
import types

from latency_sensitivity.engine import probe, surgery
from latency_sensitivity.engine.forms import X_PAIR, X_ROW, X_SILU_MUL


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
    return surgery.gemv_available() and all(t is None or t.dtype == x.dtype for t in tensors)


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


def _one_row(x, weight, x_mode: int) -> bool:
    """Whether x holds one input row of the product with weight (as x_mode says), the kernels' case."""
    return x.numel() == weight.shape[1] * (2 if x_mode != X_ROW else 1) and weight.stride(-1) == 1


def linear(x, weight, bias=None, *, x_mode: int = X_ROW, norm_weight=None, eps: float = 0.0, residual=None,
           pdl: bool = False):
    """The fused product of kernels.gemv: (norm of) the input row as x_mode holds it, times weight.T, plus bias;
    with `residual`, the pair [residual (a row, or a pair summed), product] of shape (..., 2, N). pdl: the
    kernel launched with programmatic dependent launch (kernels.pdl_launch)."""
    import torch

    if _one_row(x, weight, x_mode) and _kernels_apply(x, weight, bias, norm_weight, residual):
        from latency_sensitivity.engine import kernels

        return kernels.gemv(x, weight, bias, x_mode=x_mode, norm_weight=norm_weight, eps=eps, residual=residual,
                            pdl=pdl)
    row = _row(x, x_mode)
    if norm_weight is not None:
        row = rms_norm(row, norm_weight, eps)
    y = torch.nn.functional.linear(row, weight, bias)
    if residual is None:
        return y
    if residual.shape != y.shape:  # a pair
        residual = residual[..., 0, :] + residual[..., 1, :]
    return torch.stack((residual, y), dim=-2)


def rotate_half(x, cos, sin):
    """transformers' rotary embedding of Llama/Qwen2 (apply_rotary_pos_emb): x * cos + rotate_half(x) * sin,
    with x (B, heads, T, D) and cos, sin (B, T, D)."""
    import torch

    half = x.shape[-1] // 2
    return x * cos.unsqueeze(1) + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin.unsqueeze(1)


def split_heads(qkv, sizes, head_dim: int):
    """The fused q/k/v product (B, 1, sum(sizes)) as q, k, v of shape (B, heads, 1, head_dim) each."""
    return tuple(t.view(qkv.shape[0], 1, -1, head_dim).transpose(1, 2) for t in qkv.split(sizes, dim=-1))


def qkv_rope(x, weight, bias, *, heads: int, kv_heads: int, cos, sin, position, keys, values, length,
             x_mode: int = X_ROW, norm_weight=None, eps: float = 0.0, pdl: bool = False):
    """A decode token's q/k/v product (weight: the q, k, v rows stacked), q and k rotated (rotate_half), k and v
    written to the static cache (keys, values: (B, kv_heads, max_len, D)) at `position` (a one-element tensor:
    the token's position, which is the cache's length) and the cache's `length` set to position + 1; returns
    q as (B, heads, 1, D). kernels.qkv_rope at batch 1 where the kernels apply; torch otherwise."""
    import torch

    d = weight.shape[0] // (heads + 2 * kv_heads)
    if (_one_row(x, weight, x_mode) and d % 16 == 0 and keys.shape[0] == 1
            and _kernels_apply(x, weight, bias, norm_weight, cos, sin, keys, values)):
        from latency_sensitivity.engine import kernels

        return kernels.qkv_rope(x, weight, bias, heads=heads, kv_heads=kv_heads, cos=cos, sin=sin,
                                position=position, keys=keys, values=values, length=length, x_mode=x_mode,
                                norm_weight=norm_weight, eps=eps, pdl=pdl)
    qkv = linear(x, weight, bias, x_mode=x_mode, norm_weight=norm_weight, eps=eps)
    q, k, v = split_heads(qkv, [heads * d, kv_heads * d, kv_heads * d], d)
    at = position.reshape(-1)[:1]
    keys.index_copy_(2, at, rotate_half(k, cos, sin))
    values.index_copy_(2, at, v)
    length.copy_(at[0] + 1)
    return rotate_half(q, cos, sin)


def attention(query, key, value, mask, scale: float, pdl: bool = False):
    """A one-token query (B, H, 1, D) on cached keys and values (B, HKV, L, D); mask None, boolean (True:
    attend) or additive, broadcasting to (B, 1, 1, L). Returns (B, 1, H, D).

    kernels.decode_attention where it applies (pdl: its kernels launched with programmatic dependent launch);
    otherwise surgery.packed_sdpa (the same arithmetic as repeating the keys and values per query head).
    """
    import torch

    boolean_mask = mask is None or (mask.dtype == torch.bool and mask.shape[-1] == key.shape[2]
                                    and mask.dim() == 4 and mask.shape[1:3] == (1, 1))
    if (boolean_mask and key.stride(-1) == 1 and value.stride(-1) == 1
            and _decode_kernel_takes(query.shape[-1], query, key, value)):
        from latency_sensitivity.engine import kernels

        probe.probe_hit("attention_kernel")
        return kernels.decode_attention(query, key, value, None if mask is None else mask.contiguous(), scale,
                                        pdl=pdl)
    return surgery.packed_sdpa(query, key, value, mask, scale)


def add_pair(x):
    """A pair (..., 2, N) summed to its row (..., N); a row as it is."""
    return x[..., 0, :] + x[..., 1, :] if x.dim() == 4 else x


class _LayerPlan:
    """What the rewritten forward of one decoder layer reads: the fused weights and the shapes; whether its
    rotary embedding is rotate_half's (then q/k/v, rotation and cache write are one qkv_rope); pdl: the
    kernels launched with programmatic dependent launch."""

    def __init__(self, layer, qkv_group, gate_up_group, rotary, rotates_half: bool, pdl: bool):
        attn = layer.self_attn
        self.qkv, self.gate_up = qkv_group, gate_up_group
        self.head_dim = attn.head_dim
        self.sizes = [m.out_features for m in qkv_group.modules]
        self.heads, self.kv_heads = self.sizes[0] // self.head_dim, self.sizes[1] // self.head_dim
        self.scaling = attn.scaling
        self.rotary, self.rotates_half = rotary, rotates_half
        self.pdl = pdl
        self.cache_keyword = cache_keyword(layer)


def _static_layer(cache, index: int):
    """The layer `index` of a transformers static cache, allocated (what qkv_rope writes); None otherwise."""
    from transformers.cache_utils import StaticLayer

    layers = getattr(cache, "layers", None)
    layer = layers[index] if layers is not None and index < len(layers) else None
    return layer if type(layer) is StaticLayer and layer.is_initialized else None


def cache_keyword(layer) -> str | None:
    """The keyword under which the model hands its decoder layers the KV cache: ``past_key_values`` up to
    transformers 5.23, ``cache`` from 5.24; None when the layer's forward names neither."""
    import inspect

    params = inspect.signature(type(layer).forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _fused_decoder_layer_forward(self, hidden_states, *args, **kwargs):
    plan = self.fused_decode_plan
    pair_in = hidden_states.dim() == 4
    past_key_values = kwargs.get(plan.cache_keyword)
    position_embeddings = kwargs.get("position_embeddings")
    if args or hidden_states.shape[1] != 1 or past_key_values is None or position_embeddings is None:
        # prefill (or a call of another form): transformers' own layer, with the arguments as they came
        return type(self).forward(self, add_pair(hidden_states), *args, **kwargs)
    probe.probe_hit("fused_layer")
    attention_mask, position_ids = kwargs.get("attention_mask"), kwargs.get("position_ids")
    attn, mlp = self.self_attn, self.mlp
    b = hidden_states.shape[0]
    norm = self.input_layernorm
    x_mode = X_PAIR if pair_in else X_ROW
    cos, sin = position_embeddings
    cache = _static_layer(past_key_values, attn.layer_idx)
    if (plan.rotates_half and cache is not None and position_ids is not None and position_ids.numel() == 1
            and cos.shape[-1] == plan.head_dim):
        probe.probe_hit("fused_layer_qkv_rope")
        q = qkv_rope(hidden_states, plan.qkv.weight, plan.qkv.bias, heads=plan.heads, kv_heads=plan.kv_heads,
                     cos=cos, sin=sin, position=position_ids, keys=cache.keys, values=cache.values,
                     length=cache.cumulative_length, x_mode=x_mode, norm_weight=norm.weight,
                     eps=norm.variance_epsilon, pdl=plan.pdl)
        k, v = cache.keys, cache.values
    else:
        qkv = linear(hidden_states, plan.qkv.weight, plan.qkv.bias, x_mode=x_mode, norm_weight=norm.weight,
                     eps=norm.variance_epsilon, pdl=plan.pdl)
        q, k, v = split_heads(qkv, plan.sizes, plan.head_dim)
        q, k = plan.rotary(q, k, cos, sin)
        k, v = past_key_values.update(k, v, attn.layer_idx)
    out = attention(q, k, v, attention_mask, plan.scaling, pdl=plan.pdl).reshape(b, 1, -1)
    pair = linear(out, attn.o_proj.weight, attn.o_proj.bias, residual=hidden_states, pdl=plan.pdl)
    norm = self.post_attention_layernorm
    gate_up = linear(pair, plan.gate_up.weight, plan.gate_up.bias, x_mode=X_PAIR, norm_weight=norm.weight,
                     eps=norm.variance_epsilon, pdl=plan.pdl)
    return linear(gate_up, mlp.down_proj.weight, mlp.down_proj.bias, x_mode=X_SILU_MUL, residual=pair,
                  pdl=plan.pdl)


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


def _rotates_half(rotary) -> bool:
    """Whether a modeling file's apply_rotary_pos_emb(q, k, cos, sin) is rotate_half's, tried on small tensors."""
    import torch

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 3, 8, generator=g), torch.randn(1, 2, 3, 8, generator=g)
    cos, sin = torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g)
    try:
        got = rotary(q, k, cos, sin)
    except Exception:  # another signature: not the form
        return False
    return all(torch.equal(a, rotate_half(b, cos, sin)) for a, b in zip(got, (q, k)))


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
    if cache_keyword(layer) is None:  # a layer forward that takes the cache under a name not known here
        return False
    if any(type(layer.get_submodule(n)).__name__ not in norm_names for n in ("input_layernorm",
                                                                             "post_attention_layernorm")):
        return False
    qkv, gate_up = groups_by_module.get(id(attn.q_proj)), groups_by_module.get(id(mlp.gate_proj))
    return (qkv is not None and list(qkv.modules) == [attn.q_proj, attn.k_proj, attn.v_proj]
            and gate_up is not None and list(gate_up.modules) == [mlp.gate_proj, mlp.up_proj]
            and type(attn.o_proj) is torch.nn.Linear and type(mlp.down_proj) is torch.nn.Linear)


def fuse_decode_layers(model, groups, norm_names, pdl: bool = False) -> list:
    """Give the model's decoder layers of the Llama/Qwen2 form the fused one-token forward (module docstring),
    and its final norm a forward that adds a pair; returns the changed modules (`unfuse_decode_layers` undoes).

    groups: the fused projection groups (surgery.fuse_sibling_projections), q/k/v and gate/up of every layer
    rewritten. norm_names: the RMSNorm classes whose arithmetic `rms_norm` reproduces. Needs transformers >= 5
    (layers returning a tensor, the cache's update taking no positions); with anything else nothing changes.
    pdl: the kernels launched with programmatic dependent launch (not under torch.compile).
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
    rotates_half = {}
    for layer in layers:
        attn = layer.self_attn
        rotary = _rotary(attn)
        if rotary not in rotates_half:
            rotates_half[rotary] = _rotates_half(rotary)
        layer.fused_decode_plan = _LayerPlan(layer, by_module[id(attn.q_proj)], by_module[id(layer.mlp.gate_proj)],
                                             rotary, rotates_half[rotary], pdl)
        layer.forward = types.MethodType(_fused_decoder_layer_forward, layer)
        changed.append(layer)
    final_norm.forward = types.MethodType(_pair_norm_forward, final_norm)
    changed.append(final_norm)
    return changed


def unfuse_decode_layers(modules) -> None:
    surgery._restore_forward(modules, "fused_decode_plan")
