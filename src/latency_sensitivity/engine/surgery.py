"""Reversible changes to a transformers model: fused RMSNorm, sibling projections as one GEMM, packed-GQA decode attention, projections routed to the GEMV kernel. Each has its undo."""

from __future__ import annotations

import importlib.util
import types

from latency_sensitivity.engine.probe import probe_hit


# Sibling projections that read the same input, fused into one GEMM by the compiled backend.
PROJECTION_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


# RMSNorm classes known to compute weight * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(dtype).
FUSABLE_NORMS = ("Qwen2RMSNorm", "LlamaRMSNorm", "MistralRMSNorm", "Qwen3RMSNorm")


def _fused_rms_norm_forward(self, hidden_states):
    import torch

    # fp32 arithmetic inside, one rounding to the input dtype, then the weight: as the module computes it
    normed = torch.nn.functional.rms_norm(hidden_states, (hidden_states.shape[-1],), None, self.variance_epsilon)
    return self.weight * normed


PACKED_GQA = "sdpa_packed_gqa"


def transformers_packs_gqa() -> bool:
    """Whether transformers' own sdpa path runs a masked one-token query on the KV heads (its ``pack_gqa``).

    Versions without it (5.17, the H100/H200 image's) repeat every KV head's keys and values once per query
    head (``repeat_kv``) whenever there is a mask, and a static cache always has one: each decode step then
    copies the whole cache num_attention_heads / num_key_value_heads times over, per layer.
    """
    try:
        from transformers.integrations import sdpa_attention
    except ImportError:  # pragma: no cover - every supported transformers has it
        return False
    return hasattr(sdpa_attention, "pack_gqa")


def packed_gqa_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            is_causal=None, **kwargs):
    """transformers' sdpa attention, except that a one-token query runs on the KV heads without repeating them.

    The query heads of a KV group become that group's query rows, (batch, heads, 1, dim) -> (batch, kv_heads,
    groups, dim), so SDPA reads each cached key and value once; a mask shared by all heads broadcasts as it is.
    The same arithmetic as repeat_kv's (query head h uses KV head h // groups), in the layout transformers'
    later ``pack_gqa`` uses. Anything else (prefill, a per-head mask, a position bias) goes to transformers.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    shared_mask = attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1
                                             and attention_mask.shape[2] == 1)
    if groups > 1 and query.shape[2] == 1 and shared_mask and kwargs.get("position_bias") is None \
            and kwargs.get("cache") is None and key.shape[1] * groups == query.shape[1]:
        probe_hit("packed_gqa_attention")
        return packed_sdpa(query, key, value, attention_mask, scaling, dropout).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def packed_sdpa(query, key, value, mask, scale, dropout: float = 0.0):
    """SDPA of a one-token query (B, H, 1, D) on keys and values (B, HKV, L, D), the query heads of each KV
    group as that KV head's query rows, so each key and value is read once; a mask shared by the heads
    broadcasts as it is. Returns (B, 1, H, D), as transformers' attention functions do."""
    import torch

    b, h, _, d = query.shape
    hkv = key.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(b, hkv, h // hkv, d), key, value, attn_mask=mask, dropout_p=dropout, scale=scale)
    return out.reshape(b, h, 1, d).transpose(1, 2)


def pack_gqa_decode(model, force: bool = False) -> bool:
    """Switch a GQA model's sdpa attention to packed_gqa_sdpa_forward where transformers lacks the packing.

    True when switched (undo with unpack_gqa_decode). Only sdpa models with fewer KV heads than query heads;
    `force` switches even where transformers packs itself (tests compare the two that way).
    """
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    if getattr(cfg, "_attn_implementation", None) != "sdpa" or not heads or kv_heads >= heads:
        return False
    if transformers_packs_gqa() and not force:
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_GQA, packed_gqa_sdpa_forward)
    AttentionMaskInterface.register(PACKED_GQA, sdpa_mask)  # the same boolean masks as sdpa
    model.set_attn_implementation(PACKED_GQA)
    return True


def unpack_gqa_decode(model) -> None:
    if getattr(model.config, "_attn_implementation", None) == PACKED_GQA:
        model.set_attn_implementation("sdpa")


def fuse_rms_norms(model) -> list:
    """Swap the forward of known RMSNorm modules for a fused one; returns the swapped modules.

    A module is swapped only when the fused form reproduces its output on a probe input (so a variant with
    different arithmetic, e.g. (1 + weight), is left alone). `unfuse_rms_norms` undoes it.
    """
    import torch

    swapped = []
    for module in model.modules():
        if type(module).__name__ not in FUSABLE_NORMS:
            continue
        if not (hasattr(module, "weight") and hasattr(module, "variance_epsilon")):
            continue
        w = module.weight
        gen = torch.Generator(device="cpu").manual_seed(0)
        probe = torch.randn((2, w.shape[-1]), generator=gen).to(device=w.device, dtype=w.dtype)
        fused = types.MethodType(_fused_rms_norm_forward, module)
        with torch.no_grad():
            if not torch.allclose(fused(probe).float(), module(probe).float(), rtol=1e-2, atol=1e-2):
                continue
        module.forward = fused
        swapped.append(module)
    return swapped


def _restore_forward(modules, *attributes: str) -> None:
    """Undo a swapped forward: the class's forward again, and the attributes the swap set dropped."""
    for module in modules:
        for name in ("forward", *attributes):
            vars(module).pop(name, None)


def unfuse_rms_norms(modules) -> None:
    _restore_forward(modules)


class _ProjectionGroup:
    """Sibling nn.Linear layers that read the same input, computed as one GEMM on their concatenated weight.

    The first member called with an input computes the fused product; each member returns its slice of it,
    the later ones from the group's memo of that input (by identity), which is dropped once every member has
    taken its slice. Traced by torch.compile this is one matmul in the compiled graph; run eagerly, one GEMM.
    """

    def __init__(self, owner, name: str, modules, weight, bias):
        # The fused weight and bias are buffers of the members' parent module (`owner`), named `name` + "_weight"
        # / "_bias" and read through it, so that the model's named buffers hold them: they move with the model,
        # and an export (torch.export) names them as the model's own tensors instead of anonymous constants.
        self.owner, self.name, self.modules = owner, name, modules
        owner.register_buffer(f"{name}_weight", weight, persistent=False)
        owner.register_buffer(f"{name}_bias", bias, persistent=False)  # None: no bias (no buffer is made)
        self.input = self.output = None
        self.left = 0
        self.linear = None  # torch's linear; kernels.linear once routed to the gemv kernel

    @property
    def weight(self):
        return getattr(self.owner, f"{self.name}_weight")

    @property
    def bias(self):
        return getattr(self.owner, f"{self.name}_bias")

    def remove(self) -> None:
        """Drop the fused buffers from the owner (the members' weights stay views of the fused weight)."""
        for suffix in ("_weight", "_bias"):
            if hasattr(self.owner, self.name + suffix):  # once only, whatever undoes the fusing twice
                delattr(self.owner, self.name + suffix)

    def product(self, x):
        import torch

        if self.input is not x:
            linear = self.linear or torch.nn.functional.linear
            if self.linear is not None:
                probe_hit("gemv_route")
            self.input, self.output = x, linear(x, self.weight, self.bias)
            self.left = len(self.modules)
        out = self.output
        self.left -= 1
        if self.left <= 0:
            self.input = self.output = None
        return out


def _fused_projection_forward(self, x):
    if x.dim() >= 2 and x.shape[-2] != 1:
        # a prefill (many tokens per sequence): the module's own product on its own weight (a contiguous view
        # of the fused one), exactly as eager runs it. The fused GEMM is for decode steps, where it saves
        # launches; a prefill is compute-bound, and there the fused product and its strided slices were slower
        # than eager's separate GEMMs (benchmarks/prefill_parity/NOTES.md).
        return _torch_linear(x, self.weight, self.bias)
    start, stop = self.fused_span
    return self.fused_group.product(x)[..., start:stop]


def _torch_linear(x, weight, bias):
    import torch

    return torch.nn.functional.linear(x, weight, bias)


def fuse_sibling_projections(model) -> list:
    """Run each group of sibling projections (PROJECTION_GROUPS) as one GEMM; returns the groups.

    Only plain nn.Linear members with the same input size, dtype, device and bias presence are fused. Their
    weights (and biases) become views of the concatenated tensor, so the model holds no second copy.
    `unfuse_sibling_projections` restores the modules' own forward (the weights stay views, same values).
    """
    import torch

    groups = []
    for parent in list(model.modules()):
        for names in PROJECTION_GROUPS:
            members = [getattr(parent, n, None) for n in names]
            if not all(type(m) is torch.nn.Linear for m in members):
                continue
            first = members[0]
            if any(m.in_features != first.in_features or m.weight.dtype != first.weight.dtype
                   or m.weight.device != first.weight.device or (m.bias is None) != (first.bias is None)
                   for m in members):
                continue
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, usable outside inference mode
                weight = torch.cat([m.weight for m in members])
                bias = None if first.bias is None else torch.cat([m.bias for m in members])
                group = _ProjectionGroup(parent, "fused_" + "_".join(names), members, weight, bias)
                start = 0
                for m in members:
                    stop = start + m.out_features
                    m.weight = torch.nn.Parameter(weight[start:stop], requires_grad=False)
                    if bias is not None:
                        m.bias = torch.nn.Parameter(bias[start:stop], requires_grad=False)
                    # a plain function bound to the module (torch.compile traces it; a functools.partial it does
                    # not, in torch 2.11)
                    m.fused_group, m.fused_span = group, (start, stop)
                    m.forward = types.MethodType(_fused_projection_forward, m)
                    start = stop
            groups.append(group)
    return groups


def unfuse_sibling_projections(groups) -> None:
    _restore_forward([m for group in groups for m in group.modules], "fused_group", "fused_span")
    for group in groups:
        group.remove()


# Looked up once: torch.compile cannot trace importlib's lookup inside a step (fused_decode asks per call).
_TRITON = importlib.util.find_spec("triton") is not None


def gemv_available() -> bool:
    """Whether the Triton kernels of `kernels` can be used (Triton comes with torch's CUDA builds)."""
    return _TRITON


def _gemv_linear_forward(self, x):
    probe_hit("gemv_route")
    return self.gemv_linear(x, self.weight, self.bias)


def route_linears_to_gemv(model, groups) -> list:
    """Run the model's nn.Linear layers (and the fused groups) through `kernels.linear`: one-row products on
    CUDA as the Triton gemv kernel, others as before. Returns the rerouted modules; `unroute_linears` undoes it."""
    import torch

    from latency_sensitivity.engine import kernels

    in_groups = set()
    for group in groups:
        group.linear = kernels.linear
        in_groups.update(id(m) for m in group.modules)
    routed = []
    for module in model.modules():
        if type(module) is torch.nn.Linear and id(module) not in in_groups:
            module.gemv_linear = kernels.linear  # an attribute, so torch.compile traces into it
            module.forward = types.MethodType(_gemv_linear_forward, module)
            routed.append(module)
    return routed


def unroute_linears(modules, groups) -> None:
    for group in groups:
        group.linear = None
    _restore_forward(modules, "gemv_linear")
