"""The compiled backend's step compiled ahead of time, saved, and loaded by a later process without a trace
(engine/decode_step.SavedStep), on the CPU; "a new process" is the process's kept step and dynamo forgotten."""

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_ARCHITECTURE, cell_spec
from latency_sensitivity.engine import base, decode_step, registry
from latency_sensitivity.engine import eager as eager_backend
from latency_sensitivity.measure import model as cell_model


def spec(**kw):
    return cell_spec(**{"backend": "compiled", "seq_len": 12, "gen_tokens": 6, "reps": 2, **kw})


@pytest.fixture(scope="module")
def architecture(tmp_path_factory):
    """The tiny model with one decoder layer: the same step, compiled in a fraction of the time."""
    folder = tmp_path_factory.mktemp("one_layer")
    arch = json.loads(Path(TINY_ARCHITECTURE).read_text())
    (folder / "one_layer.json").write_text(json.dumps({**arch, "num_hidden_layers": 1}))
    return str(folder / "one_layer.json")


@pytest.fixture(scope="module")
def inductor_dir(tmp_path_factory):
    """One inductor cache for the module's compiles (not an earlier run's)."""
    return str(tmp_path_factory.mktemp("inductor"))


@pytest.fixture(scope="module")
def static_step(architecture, inductor_dir, tmp_path_factory):
    """A static batch-2 step compiled and saved once: (its folder, its file)."""
    steps = tmp_path_factory.mktemp("static_steps")
    with pytest.MonkeyPatch.context() as patch, torch.inference_mode():
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_dir)
        decode_step.forget_compiled_step()
        model, prompt = cell(architecture, batch=2, seed=0)
        info, _ = run(model, prompt, steps, dynamic=False)
        decode_step.forget_compiled_step()
    assert info["compile_stats"]["step"] == "compiled and saved"
    return steps, Path(info["saved_step"])


def cell(architecture, batch, seed):
    """(model, prompt) of a cell: the model built as a measuring process builds it, with `seed`'s weights."""
    s = spec(model_location=architecture, batch=batch, seed=seed)
    model = cell_model.build_model(s)
    return model, cell_model.make_prompt(s, model.config.vocab_size)


def run(model, prompt, steps_dir, dynamic=True):
    """A compiled backend's info and generate() output, checked against eager decoding of the same model."""
    want_tokens, want_logits = eager_backend.EagerBackend(model).generate(prompt, 6)
    backend = registry.make("compiled", model, prompt, 6, base.Clock(False), dynamic_batch=dynamic,
                            saved_step_dir=steps_dir)
    try:
        info = backend.info()
        tokens, logits = backend.generate(prompt, 6)
        assert torch.equal(tokens, want_tokens)
        torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-4)
        return info, logits
    finally:
        backend.close()


def test_a_saved_step_is_loaded_by_a_later_process_without_a_trace(architecture, inductor_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_dir)
    steps = tmp_path / "steps"
    with torch.inference_mode():
        decode_step.forget_compiled_step()
        model, prompt = cell(architecture, batch=2, seed=0)
        first, _ = run(model, prompt, steps)
        assert first["compile_stats"]["step"] == "compiled and saved" and first["compile_stats"]["graphs"] == 1
        saved = Path(first["saved_step"])
        assert saved.parent == steps and [p.name for p in steps.iterdir()] == [saved.name]  # no partial left
        # the next cell in the same process runs the kept step
        model, prompt = cell(architecture, batch=3, seed=1)
        kept, _ = run(model, prompt, steps)
        assert kept["compile_stats"]["step"] == "kept" and kept["compile_stats"]["graphs"] == 0

        # a new process, another model at another batch: the step loads; dynamo makes no graph, looks nothing up
        decode_step.forget_compiled_step()
        model, prompt = cell(architecture, batch=4, seed=2)
        loaded, logits = run(model, prompt, steps)
        stats = loaded["compile_stats"]
        assert stats["step"] == "loaded" and loaded["saved_step"] == str(saved)
        assert stats["graphs"] == stats["setup_graphs"] == 0 and stats["kept"] is False
        assert stats["fxgraph_cache_hit"] == stats["fxgraph_cache_miss"] == 0
        assert loaded["paths"]["step"] == 1 and loaded["paths"]["compiled_step"] == 3  # no Python in its calls
        # the same cell traced by torch.compile: the same code, the same logits
        decode_step.forget_compiled_step()
        traced, traced_logits = run(model, prompt, None)
        assert traced["compile_stats"]["step"] == "traced" and traced["saved_step"] is None
        torch.testing.assert_close(logits, traced_logits, rtol=1e-6, atol=1e-6)
        decode_step.forget_compiled_step()


def test_a_saved_step_file_that_does_not_load_is_compiled_again_and_named(architecture, static_step, inductor_dir,
                                                                           monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_dir)
    steps = tmp_path / "steps"
    steps.mkdir()
    (steps / static_step[1].name).write_bytes(b"not a compiled step")  # a truncated or foreign file
    with torch.inference_mode():
        decode_step.forget_compiled_step()
        model, prompt = cell(architecture, batch=2, seed=0)
        again, _ = run(model, prompt, steps, dynamic=False)
        assert again["compile_stats"]["step"] == "compiled and saved again"
        assert again["compile_stats"]["step_load_error"] and again["saved_step"] == str(steps / static_step[1].name)
        decode_step.forget_compiled_step()
        loaded, _ = run(model, prompt, steps, dynamic=False)  # the file written again loads
        assert loaded["compile_stats"]["step"] == "loaded" and "step_load_error" not in loaded["compile_stats"]
        decode_step.forget_compiled_step()


def test_a_loaded_step_whose_guards_fail_is_an_error(architecture, static_step, monkeypatch):
    """A saved step keeps only the guards that travel, so its name must carry the rest; a file found under a
    name whose step it is not (here: a static batch-2 step as batch 3's) fails its guards: the setup is an
    error, never the wrong step run."""
    steps, saved = static_step
    with torch.inference_mode():
        decode_step.forget_compiled_step()
        model, prompt = cell(architecture, batch=3, seed=0)
        monkeypatch.setattr(decode_step, "saved_step_name", lambda key: saved.name)
        with pytest.raises(RuntimeError, match="[Gg]uard"):
            registry.make("compiled", model, prompt, 6, base.Clock(False), saved_step_dir=steps)
        assert decode_step.compiled_step_key() is None  # the failed setup forgot it
        assert not any("forward" in vars(m) for m in model.modules())  # and left the model as it was


def test_the_saved_step_name_changes_with_what_the_step_depends_on(monkeypatch):
    key = ("Qwen2ForCausalLM", "{}", "torch.float16", "cuda:0", 0, 2, 0, True, False, None, 160, "{}", True)
    name = decode_step.saved_step_name(key)
    assert name.startswith("step-") and name.endswith(".bin") and name == decode_step.saved_step_name(key)
    assert decode_step.saved_step_name(key[:-3] + (192,) + key[-2:]) != name  # another cache length
    monkeypatch.setattr(decode_step, "engine_source_hash", lambda: "other engine code")
    assert decode_step.saved_step_name(key) != name
    monkeypatch.undo()
    monkeypatch.setattr(decode_step, "versions", lambda: {"torch": "0.0", "transformers": "0.0", "triton": None})
    assert decode_step.saved_step_name(key) != name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_loaded_step_is_captured_on_cuda(tmp_path):
    """On CUDA a saved step (batch dynamic, compiled at batch 2) loads in a later process at batch 4 on a model
    with other weights, is captured, and replays that model's own logits."""
    steps = tmp_path / "steps"
    with torch.inference_mode():
        for seed, batch, source in ((0, 2, "compiled and saved"), (1, 4, "loaded")):
            decode_step.forget_compiled_step()
            s = spec(device="cuda", dtype="fp16", seq_len=32, batch=batch, gen_tokens=8, seed=seed)
            model = cell_model.build_model(s)
            prompt = cell_model.make_prompt(s, model.config.vocab_size)
            want_tokens, want_logits = eager_backend.EagerBackend(model).generate(prompt, 8)
            backend = registry.make("compiled", model, prompt, 8, base.Clock(True), dynamic_batch=True,
                                    saved_step_dir=steps)
            try:
                info = backend.info()
                assert backend.graph is not None and info["compile_stats"]["step"] == source
                assert info["compile_stats"]["setup_graphs"] == (1 if source != "loaded" else 0)
                _, logits = backend.generate(prompt, 8, forced=want_tokens)
                torch.testing.assert_close(logits, want_logits, rtol=2e-2, atol=2e-2)
            finally:
                backend.close()
            del model, backend
        decode_step.forget_compiled_step()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_loaded_step_gives_the_traced_step_s_logits_on_cuda(tmp_path):
    """On CUDA the step saved ahead of time and loaded untraced gives the logits of the same step traced by
    torch.compile, to the bit: the same model, prompt and batch, each captured, fed the same tokens."""
    steps = tmp_path / "steps"
    logits = {}
    with torch.inference_mode():
        s = spec(device="cuda", dtype="fp16", seq_len=32, batch=4, gen_tokens=8, seed=0)
        model = cell_model.build_model(s)
        prompt = cell_model.make_prompt(s, model.config.vocab_size)
        forced, _ = eager_backend.EagerBackend(model).generate(prompt, 8)
        for way, saved_dir in (("traced", None), ("compiled and saved", steps), ("loaded", steps)):
            decode_step.forget_compiled_step()  # each as in a process of its own
            backend = registry.make("compiled", model, prompt, 8, base.Clock(True), dynamic_batch=True,
                                    saved_step_dir=saved_dir)
            try:
                assert backend.graph is not None and backend.info()["compile_stats"]["step"] == way
                _, logits[way] = backend.generate(prompt, 8, forced=forced)
            finally:
                backend.close()
        decode_step.forget_compiled_step()
    differences = {way: (logits[way] - logits["traced"]).abs().max().item() for way in logits}
    print(f"largest logit difference from the traced step: {differences}")
    assert torch.equal(logits["loaded"], logits["compiled and saved"]), differences
    assert torch.equal(logits["loaded"], logits["traced"]), differences
