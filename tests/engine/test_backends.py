"""Backends: eager and graph (static KV cache; on the CPU the same step, not captured), checked against each other."""

import json
import re
from pathlib import Path

import pytest
import torch
import transformers

from conftest import TINY_ARCHITECTURE, cell_spec
from latency_sensitivity.engine import eager as eager_backend
from latency_sensitivity.engine import graph as graph_backend
from latency_sensitivity.engine import probe
from latency_sensitivity.engine import registry
from latency_sensitivity.engine import surgery
from latency_sensitivity.measure import cell, runner
from latency_sensitivity.engine import base
from latency_sensitivity.measure import model as cell_model
from latency_sensitivity.columns import COLUMNS_BY_NAME
from latency_sensitivity.config import MODELS_DIR

TINY = str(MODELS_DIR / "tiny-qwen2.json")


def spec(**kw):
    return cell_spec(**{"backend": "graph", "seq_len": 12, "gen_tokens": 6, "reps": 2, **kw})


@pytest.fixture(scope="module")
def tiny():
    s = spec()
    model = cell_model.build_model(s)
    return model, cell_model.make_prompt(s, model.config.vocab_size)


@pytest.mark.parametrize("fuse_norms, pack_gqa", [(False, None), (True, None), (False, True)])
def test_static_cache_path_matches_eager_for_every_request(tiny, fuse_norms, pack_gqa):
    model, prompt = tiny
    with torch.inference_mode():
        want_tokens, want_logits = eager_backend.EagerBackend(model).generate(prompt, 6)
        graph = graph_backend.GraphBackend(model, batch=2, seq_len=12, gen_tokens=6, fuse_norms=fuse_norms,
                                      pack_gqa=pack_gqa)
        try:
            assert graph.capture is False  # the CPU runs the step uncaptured
            if pack_gqa:  # forced here; by default only where transformers does not pack itself
                assert graph.packed_gqa and model.config._attn_implementation == surgery.PACKED_GQA
                assert graph.info()["decode_attention"] == "sdpa, packed GQA"
            else:
                assert graph.packed_gqa == (not surgery.transformers_packs_gqa())
            graph.setup(prompt)
            assert len(graph.fused_norms) == (9 if fuse_norms else 0)  # 2 per layer + the final norm
            for _ in range(3):  # positions must be right after every reset, not only the first time
                tokens, logits = graph.generate(prompt, 6)
                assert torch.equal(tokens, want_tokens)
                torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
            # teacher-forced on eager's tokens: the same logits step by step
            _, forced = graph.generate(prompt, 6, forced=want_tokens)
            torch.testing.assert_close(forced, want_logits, rtol=1e-4, atol=1e-4)
            # a timed request between them leaves the next one right too
            p, t, steps, e = graph.request(prompt, 6, base.Clock(False), "rep0")
            assert len(steps) == 5 and p > 0 and e >= t > 0
            tokens, _ = graph.generate(prompt, 6)
            assert torch.equal(tokens, want_tokens)
        finally:
            graph.close()
    assert not any("forward" in vars(m) for m in model.modules())  # fused norms undone
    assert model.config._attn_implementation == "sdpa"  # packed GQA undone
    with torch.inference_mode():
        tokens, logits = eager_backend.EagerBackend(model).generate(prompt, 6)
    assert torch.equal(tokens, want_tokens) and torch.equal(logits, want_logits)


def test_packed_gqa_attention_equals_repeated_kv():
    """One query token over a padded static cache: packing the query heads per KV head = repeating K/V."""
    from transformers.integrations.sdpa_attention import repeat_kv

    class Module:  # what the attention function reads of the layer
        num_key_value_groups = 4

    gen = torch.Generator().manual_seed(0)
    b, kv, groups, length, d = 3, 2, 4, 10, 8
    q = torch.randn(b, kv * groups, 1, d, generator=gen)
    k, v = torch.randn(b, kv, length, d, generator=gen), torch.randn(b, kv, length, d, generator=gen)
    mask = torch.zeros(b, 1, 1, length, dtype=torch.bool)
    mask[..., :7] = True  # 7 filled positions, 3 of padding
    k[..., 7:, :] = 1e4  # the padding must not count
    want = torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups),
                                                            attn_mask=mask, scale=0.3).transpose(1, 2)
    got, weights = surgery.packed_gqa_sdpa_forward(Module(), q, k, v, mask, scaling=0.3)
    assert weights is None and got.shape == (b, 1, kv * groups, d)
    torch.testing.assert_close(got, want)
    # a prefill (several query tokens) goes to transformers' own path, with the same result as its sdpa
    q2 = torch.randn(b, kv * groups, 5, d, generator=gen)
    got2, _ = surgery.packed_gqa_sdpa_forward(Module(), q2, k[..., :5, :], v[..., :5, :], None, scaling=0.3,
                                               is_causal=True)
    want2 = torch.nn.functional.scaled_dot_product_attention(
        q2, repeat_kv(k[..., :5, :], groups), repeat_kv(v[..., :5, :], groups), is_causal=True, scale=0.3)
    torch.testing.assert_close(got2, want2.transpose(1, 2))


def test_packed_gqa_only_for_sdpa_models_with_fewer_kv_heads(tiny):
    model, _ = tiny
    cfg = model.config
    kv = cfg.num_key_value_heads
    try:
        cfg.num_key_value_heads = cfg.num_attention_heads  # plain multi-head attention: nothing to pack
        assert surgery.pack_gqa_decode(model, force=True) is False
    finally:
        cfg.num_key_value_heads = kv
    model.set_attn_implementation("eager")
    try:
        assert surgery.pack_gqa_decode(model, force=True) is False
    finally:
        model.set_attn_implementation("sdpa")


def test_a_cache_that_is_not_reset_is_caught(tiny, monkeypatch):
    model, prompt = tiny
    with torch.inference_mode():
        graph = registry.make("graph", model, prompt, 4, base.Clock(False))
        if graph.explicit_positions:
            pytest.skip("transformers 4.x: positions are passed explicitly, not read from the cache")
        graph.request(prompt, 4, base.Clock(False), "rep0")
        monkeypatch.setattr(graph_backend.GraphBackend, "reset", lambda self: None)
        with pytest.raises((RuntimeError, IndexError)):
            graph.request(prompt, 4, base.Clock(False), "rep1")
        graph.close()


@pytest.mark.parametrize("ahead", [True, False])
def test_the_setup_allocates_the_cache_without_a_prefill(tiny, monkeypatch, ahead):
    """The setup's steps need the cache's tensors, not a prompt in them: where transformers can tell their shapes
    ahead the setup runs no prefill (a request's first prefill is the cell's first, as with eager); where it
    cannot, a prefill allocates them. Either way the requests after it give eager's tokens."""
    model, prompt = tiny
    if not ahead:  # layers on several devices, or keys and values of different widths: no shape ahead
        monkeypatch.setattr(type(model), "_get_static_cache_init_shape", lambda self: None, raising=False)
    prefills = []
    original = graph_backend.GraphBackend._prefill
    monkeypatch.setattr(graph_backend.GraphBackend, "_prefill",
                        lambda self, p: prefills.append(p.shape) or original(self, p))
    with torch.inference_mode():
        want_tokens, _ = eager_backend.EagerBackend(model).generate(prompt, 6)
        graph = registry.make("graph", model, prompt, 6, base.Clock(False))
        try:
            parts = graph.info()["setup_parts"]
            assert prefills == ([] if ahead else [prompt.shape])
            assert ("allocate_cache_s" in parts) is ahead and ("prefill_s" in parts) is not ahead
            layers = graph.cache.layers
            assert all(layer.keys.shape == (2, model.config.num_key_value_heads, 18,
                                            model.config.hidden_size // model.config.num_attention_heads)
                       for layer in layers)
            assert int(graph.cache.get_seq_length()) == 0  # left reset
            tokens, _ = graph.generate(prompt, 6)
            assert torch.equal(tokens, want_tokens)
        finally:
            graph.close()


def test_graph_refuses_what_its_cache_cannot_hold(tiny):
    model, prompt = tiny
    with torch.inference_mode():
        graph = registry.make("graph", model, prompt, 4, base.Clock(False))
        with pytest.raises(ValueError, match="do not fit the static cache"):
            graph.request(prompt, 8, base.Clock(False), "rep0")
        with pytest.raises(ValueError, match="prompt shape"):
            graph.request(prompt[:1], 4, base.Clock(False), "rep0")
        graph.close()


def test_capture_needs_cuda(tiny):
    model, _ = tiny
    with pytest.raises(RuntimeError, match="CUDA graph capture needs CUDA"):
        graph_backend.GraphBackend(model, batch=2, seq_len=12, gen_tokens=4, capture=True)


def test_unknown_backend(tiny):
    model, prompt = tiny
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        registry.make("nope", model, prompt, 4, base.Clock(False))
    with pytest.raises(ValueError, match="eager backend takes no options"):
        registry.make("eager", model, prompt, 4, base.Clock(False), pack_gqa=True)


def test_norm_with_other_arithmetic_is_left_alone():
    class Qwen2RMSNorm(torch.nn.Module):  # the name of a known norm, the arithmetic of (1 + weight)
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.full((16,), 0.5))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    model = torch.nn.Sequential(Qwen2RMSNorm())
    assert surgery.fuse_rms_norms(model) == []


def test_fused_projections_are_one_gemm_on_the_same_weights(tiny):
    """One-token forwards (decode steps) run each group as one GEMM; a prefill runs every module's own GEMM, as
    eager does, to the bit."""
    model, prompt = tiny
    params = {n: p.clone() for n, p in model.named_parameters()}
    one_token = prompt[:, :1]
    with torch.inference_mode():
        want = model(input_ids=prompt).logits
        want_step = model(input_ids=one_token).logits
        real_linear = torch.nn.functional.linear
        groups = surgery.fuse_sibling_projections(model)
        try:
            assert len(groups) == 8  # q/k/v and gate/up in each of 4 layers
            attn = model.model.layers[0].self_attn
            fused = groups[0] if groups[0].modules[0] is attn.q_proj else groups[1]
            assert [m.out_features for m in fused.modules] == [256, 128, 128]
            # the modules' weights are views of the fused weight: no second copy, the same values
            assert attn.k_proj.weight.data_ptr() == fused.weight.data_ptr() + 256 * 256 * fused.weight.element_size()
            for name, p in model.named_parameters():
                assert torch.equal(p, params[name]), name
            # the fused weights are the model's own (non-persistent) buffers, each the group's tensor: an export
            # names them, and the state dict is as before
            buffers = dict(model.named_buffers())
            assert buffers["model.layers.0.self_attn.fused_q_proj_k_proj_v_proj_weight"] is attn.fused_q_proj_k_proj_v_proj_weight
            assert attn.fused_q_proj_k_proj_v_proj_weight is fused.weight
            assert buffers["model.layers.0.self_attn.fused_q_proj_k_proj_v_proj_bias"] is fused.bias is not None
            assert "model.layers.0.mlp.fused_gate_proj_up_proj_weight" in buffers
            assert "model.layers.0.mlp.fused_gate_proj_up_proj_bias" not in buffers  # no bias, no buffer
            assert sum(1 for n in buffers if ".fused_" in n) == 4 * 3
            assert not any(".fused_" in n for n in model.state_dict())

            def forward(ids):
                calls = []
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(torch.nn.functional, "linear",
                               lambda x, w, b=None: calls.append(tuple(w.shape)) or real_linear(x, w, b))
                    return model(input_ids=ids).logits, calls

            got, calls = forward(one_token)
            # per layer: q/k/v, o, gate/up, down; then the LM head
            assert calls[:4] == [(512, 256), (256, 256), (1408, 256), (256, 704)] and len(calls) == 4 * 4 + 1
            torch.testing.assert_close(got, want_step, rtol=1e-5, atol=1e-5)
            got, calls = forward(prompt)
            assert calls[:7] == [(256, 256), (128, 256), (128, 256), (256, 256), (704, 256), (704, 256), (256, 704)]
            assert len(calls) == 7 * 4 + 1 and torch.equal(got, want)
            assert all(g.input is None and g.output is None for g in groups)  # nothing held after a forward
        finally:
            surgery.unfuse_sibling_projections(groups)
        assert not any("forward" in vars(m) for m in model.modules())
        assert not any(".fused_" in n for n, _ in model.named_buffers()) and not any(
            n.startswith("fused_") for m in model.modules() for n in m._buffers)
        torch.testing.assert_close(model(input_ids=prompt).logits, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    """The tiny model with one decoder layer, for the tests that compile: torch.compile traces and inductor
    generates the same step, in a fraction of the CPU's compile time."""
    folder = tmp_path_factory.mktemp("one_layer")
    arch = json.loads(Path(TINY_ARCHITECTURE).read_text())
    (folder / "one_layer.json").write_text(json.dumps({**arch, "num_hidden_layers": 1}))
    s = spec(model_location=str(folder / "one_layer.json"))
    model = cell_model.build_model(s)
    return model, cell_model.make_prompt(s, model.config.vocab_size), s


def test_compiled_backend_matches_eager_on_the_cpu(one_layer, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # compile here, not from an earlier run's cache
    graph_backend.forget_compiled_step()  # nor from an earlier test's step kept in this process
    model, prompt, _ = one_layer
    extern_calls = {}
    with torch.inference_mode():
        want_tokens, want_logits = eager_backend.EagerBackend(model).generate(prompt, 6)
        # compile None (the default): compiled unless the layers are rewritten; True: the rewritten layers' torch
        # forms traced too
        for fuse, fuse_layers, compile in ((True, False, None), (False, False, None), (True, True, True),
                                           (True, True, None)):
            compiled = registry.make("compiled", model, prompt, 6, base.Clock(False), fuse_projections=fuse,
                                     fuse_layers=fuse_layers, compile=compile)
            try:
                info = compiled.info()
                assert info["name"] == "compiled" and info["compiled"] is (compile or not fuse_layers)
                assert info["fused_projections"] == (2 if fuse else 0)
                assert info["fused_layers"] == (1 if fuse_layers else 0)  # on the CPU, in their torch forms
                # one step run uncompiled counts the paths inside; the compiled calls run none of the step's Python
                steps = 1 if info["compiled"] else 3  # compiled: the uncompiled step; else the warm-up steps
                assert info["paths"]["step"] == steps
                assert info["paths"].get("fused_layer", 0) == info["fused_layers"] * steps
                assert info["paths"].get("compiled_step", 0) == (3 if info["compiled"] else 0)
                # the setup's parts (uncaptured on the CPU): they add up to no more than the whole setup
                parts = info["setup_parts"]
                assert list(parts) == ["change_model_s", "cache_and_step_s", "allocate_cache_s"] + (
                    ["python_step_s"] if info["compiled"] else []) + [
                    "warm_up_s", "reset_s"] and all(v >= 0 for v in parts.values())
                assert sum(parts.values()) <= compiled.setup_s
                if info["compiled"]:
                    assert compiled.setup_s >= parts["warm_up_s"] >= info["compile_s"] > 0
                    assert info["compile_stats"]["graphs"] == 1  # the whole step, no graph break (fullgraph)
                    assert info["compile_stats"]["setup_graphs"] == 1  # and no recompile in the later steps
                    extern_calls[fuse, fuse_layers] = info["compile_stats"]["extern_calls"]
                else:
                    assert info["compile_s"] is None and info["compile_stats"] == {}
                for _ in range(2):
                    tokens, logits = compiled.generate(prompt, 6)
                    assert torch.equal(tokens, want_tokens)
                    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
                p, t, steps, e = compiled.request(prompt, 6, base.Clock(False), "rep0")
                assert len(steps) == 5 and p > 0 and e >= t > 0
            finally:
                compiled.close()
            assert not any("forward" in vars(m) or "fused_group" in vars(m) for m in model.modules())
    # fused, the compiled step calls one matmul for q/k/v (not 3) and one for gate/up (not 2) in its layer
    assert extern_calls[False, False] - extern_calls[True, False] == 3


def test_dynamic_batch_compiles_once_for_every_batch_size(one_layer, monkeypatch, tmp_path):
    """compile_shapes dynamic_batch: the step compiled at batch 2 serves batch 3 from inductor's cache (a hit, no
    second compile), and both match eager. A batch-1 step (size-1 dimensions are specialized) and the static
    default compile for their own shapes, and say so. Within one process a later backend, on a new model with
    other weights and at another batch, runs the kept step without a trace and gives that model's own logits;
    the models before are not held; a setup that fails forgets the step."""
    import gc
    import weakref

    from latency_sensitivity.engine import decode_step

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model, _, s = one_layer
    for batch, dynamic, expected in ((1, True, False), (3, False, False), (3, True, True)):
        backend = graph_backend.CompiledBackend(model, batch=batch, seq_len=12, gen_tokens=6, dynamic_batch=dynamic)
        try:
            assert backend.info()["compile_dynamic_batch"] is expected and backend.info()["compiled"] is True
        finally:
            backend.close()
    stats = {}
    paths = {}
    weights = []
    with torch.inference_mode():
        # (batch, seed, a new process): 2 and 3 as each in a process of its own; 4 and 5 later in this one
        for batch, seed, fresh in ((2, 0, True), (3, 0, True), (4, 1, False), (5, 2, False)):
            if fresh:
                graph_backend.forget_compiled_step()  # nothing compiled in the process yet
                measured = model
            else:
                with torch.inference_mode(False):  # built as the first model was (dynamo guards on how)
                    measured = cell_model.build_model(spec(model_location=s.model_location, seed=seed))
                weights.append(weakref.ref(next(measured.parameters())))
            prompt = cell_model.make_prompt(spec(batch=batch, seed=seed), model.config.vocab_size)
            want_tokens, want_logits = eager_backend.EagerBackend(measured).generate(prompt, 6)
            compiled = registry.make("compiled", measured, prompt, 6, base.Clock(False), dynamic_batch=True)
            try:
                info = compiled.info()
                assert info["compile_dynamic_batch"] is True
                assert info["compile_stats"]["graphs"] == info["compile_stats"]["setup_graphs"] == (1 if fresh else 0)
                assert info["compile_stats"]["kept"] is (not fresh) and compiled.compile_kept is (not fresh)
                # the paths inside the step: counted on a Python step by the backend that made the step, and
                # taken from it by the backends that keep it (no Python step of their own)
                assert info["step_paths_from"] == ("this backend" if fresh else "kept step")
                assert ("python_step_s" in info["setup_parts"]) is fresh
                assert info["paths"]["step"] == 1 and info["paths"]["compiled_step"] == 3
                assert info["paths"] == paths.setdefault("first", info["paths"])
                stats[batch] = info["compile_stats"]
                tokens, logits = compiled.generate(prompt, 6)
                assert torch.equal(tokens, want_tokens)
                torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
            finally:
                compiled.close()
            del measured, compiled
            gc.collect()
            assert [w() for w in weights] == [None] * len(weights)  # no model of an earlier cell held
        # a setup that fails, here with the kept step, forgets it: the next backend of the same key traces again
        prompt = cell_model.make_prompt(spec(batch=4), model.config.vocab_size)
        with monkeypatch.context() as patch:
            patch.setattr(graph_backend.GraphBackend, "_verify_paths",
                          lambda self: (_ for _ in ()).throw(graph_backend.PathNotTaken("a claimed path")))
            assert decode_step.compiled_step_key() is not None
            with pytest.raises(graph_backend.PathNotTaken):
                registry.make("compiled", model, prompt, 6, base.Clock(False), dynamic_batch=True)
            assert decode_step.compiled_step_key() is None
    assert stats[2]["fxgraph_cache_miss"] == 1 and stats[2]["fxgraph_cache_hit"] == 0
    assert stats[3]["fxgraph_cache_hit"] == 1 and stats[3]["fxgraph_cache_miss"] == 0  # batch 2's graph
    for kept in (stats[4], stats[5]):  # no trace, so no cache lookup either
        assert kept["fxgraph_cache_hit"] == kept["fxgraph_cache_miss"] == 0


def test_a_process_keeps_one_compiled_step(monkeypatch):
    """The kept step's policy: the same key is kept; another key, or a key whose last reuse traced again, resets
    dynamo and compiles anew; forget_compiled_step drops it."""
    from latency_sensitivity.engine import decode_step

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    decode_step.forget_compiled_step()
    first, kept = decode_step.compiled_step(("a",), False, {})
    assert kept is False and len(resets) == 2
    assert decode_step.compiled_step(("a",), False, {}) == (first, True) and len(resets) == 2
    decode_step.mark_retraced()
    again, kept = decode_step.compiled_step(("a",), False, {})
    assert kept is False and again is not first and len(resets) == 3
    other, kept = decode_step.compiled_step(("b",), True, {})
    assert kept is False and other is not again and len(resets) == 4
    decode_step.forget_compiled_step()
    assert decode_step.compiled_step(("b",), True, {})[1] is False


def test_gemv_routing_keeps_the_tokens_and_is_undone(tiny, monkeypatch):
    model, prompt = tiny
    monkeypatch.setattr(graph_backend, "gemv_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs Triton"):
        registry.make("compiled", model, prompt, 6, base.Clock(False), gemv=True)
    assert not any("forward" in vars(m) or "fused_group" in vars(m) for m in model.modules())  # model untouched
    # by default only at batch 1 on CUDA: the CPU keeps torch's linear, and says so
    compiled_default = graph_backend.CompiledBackend(model, batch=2, seq_len=12, gen_tokens=6)
    assert compiled_default.info()["gemv"] is False
    compiled_default.close()
    monkeypatch.undo()
    pytest.importorskip("triton")
    with torch.inference_mode():
        want_tokens, want_logits = eager_backend.EagerBackend(model).generate(prompt, 6)
        graph = registry.make("graph", model, prompt, 6, base.Clock(False), gemv=True, fuse_projections=True)
        try:
            # o and down in each of 4 layers, and the LM head; q/k/v and gate/up through their fused groups
            assert graph.info()["gemv"] and len(graph.gemv_linears) == 4 * 2 + 1
            assert all(g.linear is not None for g in graph.fused_projections)
            tokens, logits = graph.generate(prompt, 6)
            assert torch.equal(tokens, want_tokens)
            torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
        finally:
            graph.close()
    assert not any(key in vars(m) for m in model.modules() for key in ("forward", "gemv_linear", "fused_group"))


def test_fused_decode_layers_keep_the_tokens_and_are_undone(tiny, monkeypatch):
    """The rewritten one-token layers (fused_decode), in their torch forms on the CPU, against eager."""
    from latency_sensitivity.engine import fused_decode

    model, prompt = tiny
    qkv_rope_calls = []
    qkv_rope = fused_decode.qkv_rope
    monkeypatch.setattr(fused_decode, "qkv_rope", lambda *a, **kw: qkv_rope_calls.append(1) or qkv_rope(*a, **kw))
    with pytest.raises(ValueError, match="needs fuse_projections"):
        graph_backend.GraphBackend(model, batch=2, seq_len=12, gen_tokens=6, fuse_layers=True)
    assert not any("forward" in vars(m) for m in model.modules())
    with torch.inference_mode():
        want_tokens, want_logits = eager_backend.EagerBackend(model).generate(prompt, 6)
        graph = registry.make("graph", model, prompt, 6, base.Clock(False), fuse_projections=True,
                              fuse_layers=True)
        try:
            assert graph.info()["fused_layers"] == 4
            assert graph.info()["decode_attention"] == "sdpa, packed GQA"  # the kernel only on CUDA
            layer = model.model.layers[0]
            assert layer.fused_decode_plan.sizes == [m.out_features for m in (layer.self_attn.q_proj,
                                                                               layer.self_attn.k_proj,
                                                                               layer.self_attn.v_proj)]
            for forced in (None, want_tokens):
                tokens, logits = graph.generate(prompt, 6, forced=forced)
                assert torch.equal(tokens, want_tokens)
                torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
            assert len(qkv_rope_calls) >= 2 * 5 * 4  # the cache written by qkv_rope: every layer, every step
            # the setup's three warm-up steps ran the rewritten forward in every layer, with qkv_rope
            assert graph.info()["paths"] == {"step": 3, "fused_layer": 12, "fused_layer_qkv_rope": 12}
        finally:
            graph.close()
    assert not any(key in vars(m) for m in model.modules() for key in ("forward", "fused_decode_plan",
                                                                       "fused_group"))


def test_a_failed_setup_leaves_the_model_as_it_was(tiny, monkeypatch):
    model, _ = tiny

    def no_cache(*args, **kwargs):
        raise MemoryError("no room for the cache")

    monkeypatch.setattr(graph_backend, "static_cache", no_cache)
    with pytest.raises(MemoryError, match="no room"):
        graph_backend.GraphBackend(model, batch=2, seq_len=12, gen_tokens=6, fuse_norms=True, fuse_projections=True,
                              fuse_layers=True, pack_gqa=True)
    assert not any(key in vars(m) for m in model.modules() for key in ("forward", "fused_decode_plan",
                                                                       "fused_group"))
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.undo()
    model.config.hidden_act = "gelu"  # not the form: asked for, the rewrite is an error, and undone
    try:
        with pytest.raises(ValueError, match="not of the Llama/Qwen2 form"):
            graph_backend.GraphBackend(model, batch=2, seq_len=12, gen_tokens=6, fuse_projections=True, fuse_layers=True)
    finally:
        model.config.hidden_act = "silu"
    assert not any(key in vars(m) for m in model.modules() for key in ("forward", "fused_group"))


def test_layers_of_another_form_keep_their_forward(tiny):
    from latency_sensitivity.engine import fused_decode

    model, _ = tiny
    groups = surgery.fuse_sibling_projections(model)
    try:
        assert fused_decode.fuse_decode_layers(model, [], surgery.FUSABLE_NORMS) == []  # no fused q/k/v
        assert fused_decode.fuse_decode_layers(model, groups, ()) == []  # a norm of unknown arithmetic
        model.config.hidden_act = "gelu"
        assert fused_decode.fuse_decode_layers(model, groups, surgery.FUSABLE_NORMS) == []
        model.config.hidden_act = "silu"
        model.model.layers[1].self_attn.sliding_window = 4  # all layers or none: the pair crosses every layer
        assert fused_decode.fuse_decode_layers(model, groups, surgery.FUSABLE_NORMS) == []
        model.model.layers[1].self_attn.sliding_window = None
        model.config._attn_implementation = "flash_attention_2"  # 2-D masks
        assert fused_decode.fuse_decode_layers(model, groups, surgery.FUSABLE_NORMS) == []
        model.config._attn_implementation = "sdpa"
        changed = fused_decode.fuse_decode_layers(model, groups, surgery.FUSABLE_NORMS)
        assert len(changed) == 5 and changed[-1] is model.model.norm
        fused_decode.unfuse_decode_layers(changed)
    finally:
        model.config.hidden_act, model.config._attn_implementation = "silu", "sdpa"
        surgery.unfuse_sibling_projections(groups)
    assert not any(key in vars(m) for m in model.modules() for key in ("forward", "fused_decode_plan"))


def test_runner_measures_a_graph_cell_on_the_cpu():
    r = cell.measure(spec())
    assert r["status"] == "ok", r["error"]
    m, s = r["metrics"], r["samples"]
    assert r["cell"]["backend"] == "graph"
    assert len(s["prefill_ms"]) == 2 and all(len(steps) == 5 for steps in s["decode_step_ms"])
    assert m["backend_setup_s"] > 0 and m["decode_p50_ms_per_tok"] > 0
    info = dict(r["backend_info"])
    assert isinstance(info.pop("explicit_positions"), bool)  # True on transformers 4.x
    assert info.pop("decode_attention") == ("sdpa" if surgery.transformers_packs_gqa() else "sdpa, packed GQA")
    assert m["decode_attention"] == r["backend_info"]["decode_attention"]
    # the paths that ran in the setup's three warm-up steps: the step, and packed GQA in each layer where it is on
    layers = r["architecture"]["num_hidden_layers"]
    packed = {} if surgery.transformers_packs_gqa() else {"packed_gqa_attention": 3 * layers}
    assert info.pop("paths") == {"step": 3, **packed}
    assert list(info.pop("setup_parts")) == ["change_model_s", "cache_and_step_s", "allocate_cache_s", "warm_up_s",
                                             "reset_s"]  # uncaptured on the CPU
    assert info == {"name": "graph", "captured": False, "max_cache_len": 18, "capture_warmup_steps": 3,
                    "fused_rms_norms": 0, "fused_projections": 0, "compiled": False, "compile_s": None,
                    "compile_stats": {}, "compile_options": {}, "compile_dynamic_batch": False, "saved_step": None, "gemv": False, "pdl": False, "fused_layers": 0,
                    "step_paths_from": None}
    assert m["backend_compile_s"] is None
    # the versions the paths depend on, beside them in every cell
    env = r["environment"]
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert "triton" in env


def test_eager_cell_records_its_setup_time_too():
    r = cell.measure(spec(backend="eager", reps=1, warmup=0))
    assert r["status"] == "ok", r["error"]
    assert r["metrics"]["backend_setup_s"] >= 0 and r["backend_info"] == {"name": "eager"}
    assert COLUMNS_BY_NAME["backend_setup_s"].unit == "s"
    assert "graph" in COLUMNS_BY_NAME["backend"].description


def test_cli_backend_choice(tmp_path):
    argv = ["--model", "tiny", "--model-kind", "architecture", "--model-location", TINY, "--dtype", "fp32",
            "--device", "cpu", "--seq", "8", "--batch", "1", "--gen-tokens", "3", "--warmup", "0", "--reps", "1"]
    assert runner.parse_args(argv + ["--out", "x.json"])[0].backend == "eager"
    with pytest.raises(SystemExit):
        runner.parse_args(argv + ["--backend", "tensorrt", "--out", "x.json"])
    out = tmp_path / "cell.json"
    assert runner.main(argv + ["--backend", "graph", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["status"] == "ok" and r["cell"]["backend"] == "graph"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, options, batch", [
    ("graph", {"pack_gqa": None}, 4), ("graph", {"pack_gqa": True}, 4), ("graph", {"pack_gqa": False}, 4),
    ("compiled", {}, 4), ("compiled", {}, 1), ("compiled", {"compile": True}, 1),
    ("graph", {"fuse_projections": True, "gemv": True, "fuse_layers": True}, 1)])
def test_captured_step_matches_eager_on_cuda(name, options, batch):
    s = spec(device="cuda", dtype="fp16", seq_len=32, batch=batch, gen_tokens=8)
    model = cell_model.build_model(s)
    prompt = cell_model.make_prompt(s, model.config.vocab_size)
    with torch.inference_mode():
        want_tokens, want_logits = eager_backend.EagerBackend(model).generate(prompt, 8)
        backend = registry.make(name, model, prompt, 8, base.Clock(True), **options)
        assert backend.graph is not None and backend.setup_s > 0
        info = backend.info()
        hopper = torch.cuda.get_device_capability()[0] >= 9
        if name == "compiled":
            assert info["fused_projections"] == 8
            assert info["gemv"] is (batch == 1)  # the Triton GEMV kernel where products have one row
            assert info["fused_layers"] == (4 if batch == 1 else 0)  # and the rewritten decoder layers
            assert (info["decode_attention"] == "decode kernel, packed GQA") is (batch == 1)
            # torch.compile where the layers are not rewritten (or when asked); else Triton launches the kernels,
            # with programmatic dependent launch on Hopper
            compiled = batch != 1 or options.get("compile") is True
            assert info["compiled"] is compiled and ((info["compile_s"] or 0) > 0) is compiled
            assert info["pdl"] is (not compiled and hopper)
        elif options.get("fuse_layers"):  # the rewritten layers' kernels, launched by Triton
            assert info["fused_layers"] == 4 and info["decode_attention"] == "decode kernel, packed GQA"
            assert info["pdl"] is hopper
        for _ in range(2):
            _, logits = backend.generate(prompt, 8, forced=want_tokens)
            torch.testing.assert_close(logits, want_logits, rtol=2e-2, atol=2e-2)
        backend.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kept_compiled_step_is_captured_on_cuda():
    """On CUDA, a compiled backend that runs the step its process kept (dynamic_batch: batch 4 after batch 2, on
    a new model with other weights) captures it and replays that model's own logits."""
    graph_backend.forget_compiled_step()
    with torch.inference_mode():
        for seed, batch, kept in ((0, 2, False), (1, 4, True)):
            s = spec(device="cuda", dtype="fp16", seq_len=32, batch=batch, gen_tokens=8, seed=seed)
            model = cell_model.build_model(s)
            prompt = cell_model.make_prompt(s, model.config.vocab_size)
            want_tokens, want_logits = eager_backend.EagerBackend(model).generate(prompt, 8)
            backend = registry.make("compiled", model, prompt, 8, base.Clock(True), dynamic_batch=True)
            try:
                info = backend.info()
                assert backend.graph is not None and info["compile_stats"]["kept"] is kept
                assert info["compile_stats"]["graphs"] == info["compile_stats"]["setup_graphs"] == (0 if kept else 1)
                # a kept step's inside paths come from the backend that made it: no Python step of its own
                assert list(info["setup_parts"]) == (["change_model_s", "cache_and_step_s", "allocate_cache_s"]
                                                     + ([] if kept else ["python_step_s"])
                                                     + ["warm_up_s", "capture_s", "replay_s", "reset_s"])
                assert info["step_paths_from"] == ("kept step" if kept else "this backend")
                assert info["paths"]["step"] == 1 and info["paths"]["graph_replay"] == 1
                _, logits = backend.generate(prompt, 8, forced=want_tokens)
                torch.testing.assert_close(logits, want_logits, rtol=2e-2, atol=2e-2)
            finally:
                backend.close()
            del model, backend


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_cell():
    r = cell.measure(spec(device="cuda", dtype="fp16", seq_len=64, batch=4, gen_tokens=8, reps=3))
    assert r["status"] == "ok", r["error"]
    assert r["backend_info"]["captured"] is True and r["metrics"]["backend_setup_s"] > 0
    assert "kernel_time_error" not in r, r.get("kernel_time_error")
    assert 0 < r["metrics"]["decode_kernel_ms_per_step"]


def _versions_pattern():
    return rf"torch {re.escape(torch.__version__)}, transformers {re.escape(transformers.__version__)}, triton "


def test_a_rewritten_layer_that_does_not_run_is_an_error(tiny, monkeypatch):
    """The rewritten layers looking for the cache under the keyword the model does not use (as when transformers
    renamed past_key_values to cache): every layer falls back to transformers' forward, which is an error."""
    from latency_sensitivity.engine import fused_decode

    model, prompt = tiny
    keyword = fused_decode.cache_keyword
    other = {"cache": "past_key_values", "past_key_values": "cache"}
    monkeypatch.setattr(fused_decode, "cache_keyword", lambda layer: other[keyword(layer)])
    with torch.inference_mode(), pytest.raises(probe.PathNotTaken) as err:
        registry.make("graph", model, prompt, 6, base.Clock(False), fuse_projections=True, fuse_layers=True)
    assert re.search(r"fused_layers: 4 rewritten decoder layers x 3 steps claimed, but fused_layer ran 0 of 12",
                     str(err.value))
    assert re.search(_versions_pattern(), str(err.value))
    assert not any(key in vars(m) for m in model.modules() for key in ("forward", "fused_decode_plan"))


def test_packed_gqa_claimed_but_not_switched_is_an_error(tiny, monkeypatch):
    model, prompt = tiny
    monkeypatch.setattr(graph_backend, "pack_gqa_decode", lambda model, force=False: True)  # claims, changes nothing
    with torch.inference_mode(), pytest.raises(probe.PathNotTaken, match="decode_attention: packed GQA"):
        registry.make("graph", model, prompt, 6, base.Clock(False), pack_gqa=True)


def test_a_step_that_torch_compile_leaves_eager_is_an_error_row(monkeypatch):
    """A torch.compile that hands the step back as it is: the compiled backend's calls run the step's Python,
    and the cell is a recorded error, not eager numbers under the compiled name."""
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)
    graph_backend.forget_compiled_step()  # no step kept from an earlier test: this cell calls torch.compile
    r = cell.measure(spec(backend="compiled"))
    assert r["status"] == "error" and r["error"]["type"] == "PathNotTaken"
    assert r["error"]["phase"] == "backend_setup" and r["metrics"] == {}
    message = r["error"]["message"]
    assert "compiled: the step's Python ran 3 times inside the compiled calls" in message
    assert re.search(_versions_pattern(), message)
    assert r["environment"]["transformers"] == transformers.__version__
