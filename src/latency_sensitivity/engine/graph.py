"""The graph and compiled backends: a static KV cache and the decode step replayed as a CUDA graph.

Every backend has engine/base.py's interface (``request``, ``prefill``, ``generate``, ``setup_s``, ``info``).

Backends:

``eager``
    transformers with its dynamic KV cache: one Python-launched forward per decode step
    (``eager.one_request``). On a GPU this mostly measures the host.

``graph``
    A static KV cache (transformers' ``StaticCache``, sized ``seq_len + gen_tokens``) and the decode step
    (forward with ``logits_to_keep=1`` plus the greedy argmax) captured once per cell as a CUDA graph after a
    few eager warm-up steps on a side stream; each step copies its input token into the graph's static input
    tensor and replays the graph. Prefill stays eager and writes into the static cache. Positions come from
    the cache's own device-side length counter (transformers >= 5), or, where the model's forward still takes
    ``cache_position`` (transformers 4.x), from a static position tensor the graph advances itself; either
    way a replayed step needs nothing from the host. The cache is reset (``StaticCache.reset()``: zeroed and
    its length set to 0) before every request, outside the timed region, and its length is checked after
    every request. The captured step runs transformers' own modules unchanged, so its logits can equal eager's
    bit for bit; with the host's launches gone, what is left of a step is the kernels' own time (measured
    numbers: benchmarks/decode_target/NOTES.md, "The graph backend's step").

    A one-token decode query on a static cache comes with a mask, and transformers versions without
    ``pack_gqa`` in their sdpa path (5.17, the GPU image's) then repeat each KV head's keys and values once
    per query head before SDPA, copying the whole cache (8x for Qwen2.5-3B) per layer per step. There the
    backend registers ``packed_gqa_sdpa_forward`` as the model's attention (``pack_gqa``: None = where
    needed), which runs the query heads of a KV group as rows of one query on that KV head, as later
    transformers do (measured: benchmarks/packed_gqa/NOTES.md).

    ``GraphBackend(fuse_norms=True)`` (off by default; the runner does not use it) runs RMSNorm layers of the
    Llama/Qwen2 form as ``torch.nn.functional.rms_norm`` plus the weight multiply (~2 kernels instead of ~8 per
    norm), a faster step whose logits are no longer eager's: the fused kernel does not round exactly as the
    module does (benchmarks/decode_target/NOTES.md, "The graph backend's step").

``compiled``
    The graph backend with the decode step rewritten for speed, where ``graph`` keeps transformers' modules
    unchanged: sibling projections that read the same input run as one GEMM (``fuse_sibling_projections``:
    q/k/v, and gate/up, as vLLM's QKVParallelLinear and MergedColumnParallelLinear do; the modules' weights
    become views of the fused weight, so no memory is added); at batch 1 on CUDA every projection and the LM
    head run as the Triton GEMV kernel of ``kernels`` (``route_linears_to_gemv``); and the step is compiled by
    ``torch.compile`` (inductor, its own CUDA graphs off) before it is captured as above, so normalisation,
    rotary embedding, activation and residual additions run as a few fused kernels instead of ~40 per layer.
    Prefill runs the same modules eagerly, and each projection as its own GEMM, exactly as eager does (the
    fused GEMM serves one-token steps only: benchmarks/prefill_parity/NOTES.md). Compiling is part of the
    backend's setup (``setup_s``; ``compile_s`` apart), never of a measured rep; inductor's on-disk cache
    (``TORCHINDUCTOR_CACHE_DIR``; the pipeline keeps it under results/cache/compile/, see
    measure/compile_cache.py) serves later cells of the same shapes, though dynamo still traces the step in each
    process, unless the step is saved (``saved_step_dir``: compiled ahead of time once, loaded untraced by later
    processes); within a process a later backend of the same architecture and shapes runs the compiled step kept
    from the one before (``decode_step``). The step compiles as one graph (``fullgraph``) or
    the setup fails: a graph break would leave parts of it eager and recompiled per layer, silently. The
    logits match eager's within fp16 rounding, not bit for bit (measured: benchmarks/decode_target/NOTES.md,
    "Stage 1").

    At batch 1 on CUDA the compiled backend also rewrites decoder layers of the Llama/Qwen2 form for one-token
    steps (``fuse_layers``, see ``fused_decode``): normalisation, activation and residual additions folded into
    the GEMV kernels, rotary embedding and cache write into the q/k/v kernel, attention as a Triton decode
    kernel. Those layers are not compiled (``compile=None``: their kernels are fused already, and inductor would
    recompute the rotary tables and mask per layer and launch the kernels itself); Triton launches their
    kernels with programmatic dependent launch on Hopper (``pdl``). Measured: benchmarks/decode_target/NOTES.md,
    "Stage 2" and "Stage 3".

    On the CPU the graph backend runs **without capture**: the same static cache and the same step function,
    called directly per step instead of replayed. That keeps the code path (static cache, positions, reset,
    timing) testable in CI; its CPU timings are those of static-cache eager decoding, not of a graph.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter

from latency_sensitivity.engine.base import Backend, Clock, PartTimer, timed_request
from latency_sensitivity.engine.decode_step import SavedStep, allocate_static_cache, cache_tensors, compile_counts, compiled_step, decode_step, forget_compiled_step, keep_step_paths, kept_step_paths, mark_retraced, static_cache
from latency_sensitivity.engine.probe import PathNotTaken, PathProbe, probe_hit, versions_text
from latency_sensitivity.engine.surgery import FUSABLE_NORMS, fuse_rms_norms, fuse_sibling_projections, gemv_available, pack_gqa_decode, route_linears_to_gemv, unfuse_rms_norms, unfuse_sibling_projections, unpack_gqa_decode, unroute_linears


class GraphBackend(Backend):
    """Static KV cache; the decode step captured as a CUDA graph (on the CPU: the same step, not captured).

    fuse_norms: run RMSNorm layers as a fused normalisation (faster, not bit-identical; see the module
    docstring); capture: None = capture when the model is on CUDA, False = never (the CPU path), True = always
    (fails without CUDA); fuse_projections: q/k/v and gate/up as one GEMM each; gemv: one-row products (batch
    1 decode) on CUDA as the Triton kernel of `kernels` (None: at batch 1 on CUDA); fuse_layers: decoder layers
    given fused_decode's one-token forward (None: at batch 1 on CUDA, with fuse_projections, where the model
    has the form; True: also on the CPU, in torch, and a model without the form is an error); compile: the
    step compiled by torch.compile before capture, with inductor's compile_options (None: unless the layers
    are rewritten, whose kernels are fused already; the last five are the compiled backend's); pdl: the
    rewritten layers' kernels launched with programmatic dependent launch, each starting while the previous
    one finishes (None: where they run on a GPU of compute capability 9.0 or later and the step is not
    compiled, as torch.compile launches the kernels itself); saved_step_dir: a folder where the compiled step is
    saved once compiled ahead of time and loaded by every later backend (decode_step.SavedStep; None: traced by
    torch.compile in each process).
    """

    name = "graph"

    def __init__(self, model, batch: int, seq_len: int, gen_tokens: int, *, capture: bool | None = None,
                 warmup_steps: int = 3, fuse_norms: bool = False, pack_gqa: bool | None = None,
                 fuse_projections: bool = False, gemv: bool | None = False, fuse_layers: bool | None = False,
                 compile: bool | None = False, compile_options: dict | None = None, pdl: bool | None = None,
                 dynamic_batch: bool = False, saved_step_dir: str | None = None):
        import torch

        if gen_tokens < 2:
            raise ValueError("gen_tokens must be >= 2")
        self.torch = torch
        self.model = model
        param = next(model.parameters())
        self.device = param.device
        self.capture = (self.device.type == "cuda") if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise RuntimeError(f"CUDA graph capture needs CUDA; the model is on {self.device.type}")
        self.batch, self.seq_len, self.gen_tokens = batch, seq_len, gen_tokens
        self.max_cache_len = seq_len + gen_tokens
        self.warmup_steps = max(1, min(warmup_steps, gen_tokens - 1))
        # None: where it applies (batch 1 on CUDA, with Triton installed: a decode step's products have one
        # row per sequence); True: always (products of several rows, or on the CPU, keep torch's linear, but the
        # routing is in place); False: never. Checked before the model is touched.
        if gemv is None:
            gemv = batch == 1 and self.device.type == "cuda" and gemv_available()
        elif gemv and not gemv_available():
            raise RuntimeError("the gemv kernel needs Triton, which is not installed (it comes with torch's CUDA "
                               "builds)")
        # the same default for the rewritten decoder layers (fused_decode); True runs them on the CPU too, in torch
        layers_asked = fuse_layers is True  # asked for, not only where it applies: a model without the form fails
        if fuse_layers is None:
            fuse_layers = fuse_projections and batch == 1 and self.device.type == "cuda" and gemv_available()
        if fuse_layers and not fuse_projections:
            raise ValueError("fuse_layers needs fuse_projections (the layers read the fused q/k/v and gate/up weights)")
        hopper = self.device.type == "cuda" and torch.cuda.get_device_capability(self.device)[0] >= 9
        if pdl is None:
            pdl = bool(fuse_layers) and hopper and gemv_available() and compile is not True
        elif pdl and (compile or not hopper or not fuse_layers or not gemv_available()):
            raise ValueError("pdl needs the rewritten layers' Triton kernels on a GPU of compute capability 9.0 or "
                             "later, launched by Triton (not compile)")
        self.pdl = bool(pdl)
        self.gemv = bool(gemv)
        self.compile = compile  # None: decided once the layers are (or are not) rewritten
        # inductor settings: torch.compile's `options` (e.g. {"coordinate_descent_tuning": True})
        self.compile_options = dict(compile_options or {})
        self.dynamic_batch = False  # decided with compile (below)
        self.saved_step_dir = None if saved_step_dir is None else str(saved_step_dir)
        self.saved_step = None  # the saved step's file (decode_step.SavedStep), where the step is one
        self.compile_s = None  # wall time of the first (compiling) step
        self.compile_stats: dict = {}
        # what close() undoes, empty until the model is changed
        self.fused_norms, self.fused_projections, self.gemv_linears, self.fused_layers = [], [], [], []
        self.packed_gqa = False
        self.paths: dict = {}  # how often each code path ran in the setup's steps (PathProbe)
        self.step_paths_from = None  # compiled: where the paths inside the step were counted (setup)
        self.graph = self.cache = self.static_logits = self.static_out = None
        self._step_fn = decode_step
        self.compile_kept = False  # the compiled step kept from an earlier backend of this process (decode_step)
        self._filled = False  # whether the cache holds a request's positions
        self.setup_parts: dict = {}  # the setup's wall time by part (setup), the device synchronized between parts
        timer = PartTimer(Clock(self.device.type == "cuda"))  # the construction's parts, first in setup_parts
        try:  # a failure from here on leaves the model as it was
            self._change_model(model, fuse_norms, fuse_projections, gemv, fuse_layers, pack_gqa)
            timer.end("change_model_s")
            if layers_asked and not self.fused_layers:
                raise ValueError("fuse_layers: the model's decoder layers are not of the Llama/Qwen2 form that "
                                 "fused_decode rewrites (see fused_decode.fuse_decode_layers)")
            if self.compile is None:
                self.compile = not self.fused_layers
            # batch compiled as a dynamic dimension: one graph for every batch size of 2 or more, which inductor's
            # on-disk cache then serves to the other batch sizes. Where the step is not compiled (the rewritten
            # batch-1 layers) there is nothing to make dynamic, and a dimension of size 1 is always specialized,
            # so a batch-1 step compiles for its own shape; info() says which it was.
            self.dynamic_batch = bool(dynamic_batch and self.compile and batch >= 2)
            self.cache = static_cache(model, batch, self.max_cache_len)
            # transformers 4.x takes positions as `cache_position`; 5.x derives them from the cache on the device
            self.explicit_positions = "cache_position" in inspect.signature(model.forward).parameters
            if self.compile:
                self._step_fn, self.compile_kept = compiled_step(self._compile_key(), self.dynamic_batch,
                                                                  self.compile_options, self.saved_step_dir)
                self.saved_step = str(self._step_fn.path) if isinstance(self._step_fn, SavedStep) else None
            self.static_in = torch.zeros((batch, 1), dtype=torch.long, device=self.device)
            self.static_pos = torch.zeros((1,), dtype=torch.long, device=self.device)
            timer.end("cache_and_step_s")  # the static cache, and the compiled step found (dynamo reset) or kept
            self.setup_parts = timer.parts
        except BaseException:
            self.close()
            raise

    def _change_model(self, model, fuse_norms, fuse_projections, gemv, fuse_layers, pack_gqa) -> None:
        """The model changes the options ask for, each recorded as it is made (close() undoes them)."""
        if fuse_norms:
            self.fused_norms = fuse_rms_norms(model)
        if fuse_projections:
            self.fused_projections = fuse_sibling_projections(model)
        if gemv:
            self.gemv_linears = route_linears_to_gemv(model, self.fused_projections)
        if fuse_layers:
            from latency_sensitivity.engine import fused_decode

            self.fused_layers = fused_decode.fuse_decode_layers(model, self.fused_projections, FUSABLE_NORMS,
                                                                pdl=self.pdl)
        self.pdl = self.pdl and bool(self.fused_layers)  # only the rewritten layers' kernels launch so
        # None: pack where transformers does not (see transformers_packs_gqa); True: always; False: never.
        self.packed_gqa = pack_gqa is not False and pack_gqa_decode(model, force=pack_gqa is True)

    # -- the two forwards

    def _prefill(self, prompt):
        torch = self.torch
        kw = {}
        if self.explicit_positions:
            kw["cache_position"] = torch.arange(prompt.shape[1], device=self.device)
        out = self.model(input_ids=prompt, past_key_values=self.cache, use_cache=True, logits_to_keep=1, **kw)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        if self.explicit_positions:
            self.static_pos.fill_(prompt.shape[1])
        return out.logits, token

    def _step(self, fn=decode_step):
        """One decode step on the static tensors (`fn`: as Python runs it, or the compiled step): static_in ->
        static_logits, static_out (next token)."""
        self.static_logits, self.static_out = fn(self.model, self.static_in, self.cache,
                                                 self.static_pos if self.explicit_positions else None)

    def _compile_key(self) -> tuple:
        """What the compiled step's code depends on besides the tensors' values: the model's class, architecture
        and dtype, the changes made to it, the shapes (the batch only where it is static) and inductor's options.
        dynamo's guards check the rest when the code runs."""
        import json

        param = next(self.model.parameters())
        return (type(self.model).__qualname__, json.dumps(self.model.config.to_dict(), sort_keys=True, default=str),
                str(param.dtype), str(param.device), len(self.fused_norms), len(self.fused_projections),
                len(self.gemv_linears), self.packed_gqa, self.explicit_positions,
                None if self.dynamic_batch else self.batch, self.max_cache_len,
                json.dumps(self.compile_options, sort_keys=True, default=str))

    def _replay(self):
        if self.graph is not None:
            probe_hit("graph_replay")
            self.graph.replay()
        else:
            self._run_step()

    def _run_step(self):
        if self.compile:
            probe_hit("compiled_step")
        self._step(self._step_fn)

    def _first_step(self):
        """The first step of setup: where torch.compile compiles (timed, with inductor's cache counters)."""
        if not self.compile:
            self._run_step()
            return
        before = compile_counts()
        t0 = time.perf_counter()
        self._run_step()
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
        self.compile_s = time.perf_counter() - t0
        after = compile_counts()
        self.compile_stats = {name: after[name] - before[name] for name in after}
        # the compiled step kept from an earlier backend of this process: its code ran without a trace
        self.compile_stats["kept"] = self.compile_kept and self.compile_stats["graphs"] == 0
        if self.compile_kept and not self.compile_stats["kept"]:
            mark_retraced()  # its guards did not hold: the next backend starts afresh
        # where the step came from: kept, traced by torch.compile, or the saved step's source (loaded, compiled)
        saved = self._step_fn if isinstance(self._step_fn, SavedStep) else None
        self.compile_stats["step"] = "kept" if self.compile_stats["kept"] else (saved.source if saved else "traced")
        if saved and saved.load_error:
            self.compile_stats["step_load_error"] = saved.load_error

    def _mark_dynamic_batch(self) -> None:
        """Mark the batch dimension of the step's inputs dynamic for torch.compile: the input tokens and every KV
        cache tensor (allocated before). torch.compile fails the setup if it specializes a marked
        dimension, so a step that is not dynamic in batch is an error, never silently one graph per batch."""
        torch = self.torch
        tensors = [self.static_in] + cache_tensors(self.cache, self.batch)
        if len(tensors) < 2:
            raise RuntimeError("dynamic_batch: the KV cache holds no tensors of this batch to mark")
        for tensor in tensors:
            torch._dynamo.mark_dynamic(tensor, 0)

    def _warm_up(self):
        self._first_step()
        for _ in range(self.warmup_steps - 1):
            self._run_step()

    def reset(self) -> None:
        if self._filled:
            self.cache.reset()
            self.static_pos.zero_()
            self._filled = False

    # -- setup

    def setup(self, prompt) -> None:
        """Allocate the cache, run warm-up steps from its first position, capture the step, replay it once, reset
        the cache. The steps run under a PathProbe, and a claimed path that did not run raises PathNotTaken."""
        try:
            self._setup(prompt)
        except BaseException:
            if self.compile:  # whatever the compiled step holds, the next backend does not start from it
                forget_compiled_step()
            raise

    def _setup(self, prompt) -> None:
        torch = self.torch
        self._graphs_before_setup = compile_counts()["graphs"] if self.compile else 0
        timer = PartTimer(Clock(self.device.type == "cuda"))
        timer.parts.update(self.setup_parts)  # the construction's
        self.setup_parts = timer.parts
        self._check(prompt, self.gen_tokens)
        probe = PathProbe()
        step_paths: dict | None = {}  # compiled: the paths inside the step (below)
        with torch.inference_mode():
            self.reset()
            self._filled = True
            # the steps need the cache's tensors, not a prompt in them: allocated ahead, a cell's first prefill is its
            # first request's, as with eager; a prefill allocates them where transformers cannot tell their shapes
            allocated = allocate_static_cache(self.model, self.cache, self.batch)
            self.static_in.copy_(prompt[:, -1:] if allocated else self._prefill(prompt)[1])
            if self.dynamic_batch and isinstance(self._step_fn, SavedStep):  # a saved step: marked only
                self._step_fn.before_compile = self._mark_dynamic_batch  # to compile (a loaded one fails marks)
            elif self.dynamic_batch:  # compiled, batch 2 or more
                self._mark_dynamic_batch()
            timer.end("allocate_cache_s" if allocated else "prefill_s")
            if self.compile:
                # the paths inside the step (its compiled calls run no Python): counted on one step as Python runs
                # it (seq_len + 1 + warmup_steps <= max_cache_len), or a kept step's from the backend that made it
                step_paths = kept_step_paths() if self.compile_kept else None
                self.step_paths_from = "this backend" if step_paths is None else "kept step"
                if step_paths is None:
                    with PathProbe() as python_step:
                        self._step()
                    self.static_in.copy_(self.static_out)
                    step_paths = python_step.counts
                    timer.end("python_step_s")
            if self.capture:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side), probe:
                    self._warm_up()
                torch.cuda.current_stream().wait_stream(side)
                timer.end("warm_up_s")  # the compiling first step within it (compile_s)
                # Capture records the step without running it: the cache is where the warm-up left it.
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph), probe:
                    self._run_step()
                self.graph = graph
                timer.end("capture_s")
                # the captured step replayed once, so that the replay is counted too (on the reset cache: no prefill)
                self.reset()
                self._filled = True
                with probe:
                    self._replay()
                timer.end("replay_s")  # a cache reset and one replay
            else:
                with probe:
                    self._warm_up()
                timer.end("warm_up_s")
            self.reset()
        timer.end("reset_s")
        self.paths = dict(sorted((Counter(probe.counts) + Counter(step_paths)).items()))
        if self.compile:  # graphs dynamo made in the whole setup: the first step's, unless kept; more is a
            # recompile in the warm-up or the capture, a trace outside compile_s
            self.compile_stats["setup_graphs"] = compile_counts()["graphs"] - self._graphs_before_setup
        self._verify_paths()
        if self.compile and self.step_paths_from == "this backend":
            keep_step_paths(step_paths)  # for the later backends that run this step kept

    def claimed_paths(self) -> dict:
        """Per claimed path (info()'s name for it): the probe count it needs, as (name, least count, what)."""
        steps = self.paths.get("step", 0)  # steps whose Python ran (the step run uncompiled, or traced for capture)
        layers = max(0, len(self.fused_layers) - 1)
        claims = {}
        if layers:
            claims["fused_layers"] = ("fused_layer", layers * steps,
                                      f"{layers} rewritten decoder layers x {steps} steps")
            if self.decode_attention().startswith("decode kernel"):
                claims["decode_attention"] = ("attention_kernel", layers * steps,
                                              "the decode attention kernel in every rewritten layer")
        if self.gemv:
            claims["gemv"] = ("gemv_route", steps, "the products routed through kernels.linear, every step")
        if self.packed_gqa and not self.fused_layers:
            claims["decode_attention"] = ("packed_gqa_attention", steps, "packed GQA attention, every step")
        if self.graph is not None:
            claims["captured"] = ("graph_replay", 1, "the captured graph replayed")
        if self.compile:
            claims["compiled"] = ("compiled_step", 1, "the compiled step called")
        return claims

    def _verify_paths(self) -> None:
        """Raise PathNotTaken naming every claimed path that ran fewer times than claimed (versions beside)."""
        steps = self.paths.get("step", 0)
        missing = []
        if steps < 1:
            missing.append(f"step: the decode step's Python never ran ({self.paths})")
        for claim, (path, least, what) in self.claimed_paths().items():
            got = self.paths.get(path, 0)
            if got < least:
                missing.append(f"{claim}: {what} claimed, but {path} ran {got} of {least} times")
        if self.compile and steps != 1:
            # the compiled calls must run as compiled code: Python in them means torch.compile did not
            missing.append(f"compiled: the step's Python ran {steps - 1} times inside the compiled calls (0 when "
                           "compiled)")
        if missing:
            raise PathNotTaken(f"{self.name} backend: " + "; ".join(missing) + f" ({versions_text()})")

    def _check(self, prompt, gen_tokens: int) -> None:
        if tuple(prompt.shape) != (self.batch, self.seq_len):
            raise ValueError(f"prompt shape {tuple(prompt.shape)} is not the backend's ({self.batch}, {self.seq_len})")
        if self.seq_len + gen_tokens > self.max_cache_len:
            raise ValueError(f"{self.seq_len} + {gen_tokens} tokens do not fit the static cache of "
                             f"{self.max_cache_len} positions")

    def _check_length(self, expected: int) -> None:
        held = int(self.cache.get_seq_length())
        if held != expected:
            raise RuntimeError(f"static KV cache holds {held} positions, expected {expected}")
        if self.explicit_positions and int(self.static_pos) != expected:
            raise RuntimeError(f"position counter at {int(self.static_pos)}, expected {expected}")

    # -- the interface

    def request(self, prompt, gen_tokens: int, clock, rep_name: str):
        """A timed request (base.timed_request) on the static cache; the cache is reset before the clock starts."""
        self._check(prompt, gen_tokens)
        self.reset()
        self._filled = True

        def step(token):
            self.static_in.copy_(token)
            self._replay()
            return self.static_out

        result = timed_request(lambda: self._prefill(prompt)[1], step, gen_tokens, clock, rep_name)
        self._check_length(prompt.shape[1] + gen_tokens - 1)
        return result

    def prefill(self, prompt):
        self._check(prompt, 1)
        self.reset()
        self._filled = True
        logits, _ = self._prefill(prompt)
        return logits

    def generate(self, prompt, gen_tokens: int, forced=None):
        torch = self.torch
        self._check(prompt, gen_tokens)
        self.reset()
        self._filled = True
        logits, token = self._prefill(prompt)
        all_logits = [logits[:, -1].float().clone()]
        tokens = [token.clone()]
        for i in range(gen_tokens - 1):
            self.static_in.copy_(forced[:, i : i + 1] if forced is not None else token)
            self._replay()
            all_logits.append(self.static_logits[:, -1].float().clone())
            token = self.static_out.clone()
            tokens.append(token)
        self._check_length(prompt.shape[1] + gen_tokens - 1)
        return torch.cat(tokens, dim=1), torch.stack(all_logits, dim=1)

    def info(self) -> dict:
        return {"name": self.name, "captured": self.graph is not None, "max_cache_len": self.max_cache_len,
                "capture_warmup_steps": self.warmup_steps, "fused_rms_norms": len(self.fused_norms),
                "explicit_positions": self.explicit_positions, "decode_attention": self.decode_attention(),
                "fused_projections": len(self.fused_projections), "compiled": self.compile,
                "compile_s": self.compile_s, "compile_stats": self.compile_stats,
                "setup_parts": {k: round(v, 6) for k, v in self.setup_parts.items()},
                "compile_options": self.compile_options, "compile_dynamic_batch": self.dynamic_batch,
                "saved_step": self.saved_step,
                "gemv": self.gemv, "pdl": self.pdl,
                # decoder layers given the fused one-token forward (the final norm is not counted)
                "fused_layers": max(0, len(self.fused_layers) - 1),
                # how often each code path ran in the setup's steps, all claimed ones checked (PathProbe); a compiled
                # step's inside paths were counted by this backend or by the one that made the kept step
                "paths": self.paths, "step_paths_from": self.step_paths_from}

    def decode_attention(self) -> str:
        if self.fused_layers:
            from latency_sensitivity.engine import fused_decode

            return fused_decode.attention_name(self.model)
        return "sdpa, packed GQA" if self.packed_gqa else str(getattr(self.model.config, "_attn_implementation", "?"))

    def close(self) -> None:
        self.graph = None
        self.cache = None
        self.static_logits = self.static_out = None
        self._step_fn = None  # the compiled step stays with the process (decode_step), not with the backend
        if self.fused_layers:
            from latency_sensitivity.engine import fused_decode

            fused_decode.unfuse_decode_layers(self.fused_layers)
            self.fused_layers = []
        unfuse_rms_norms(self.fused_norms)
        self.fused_norms = []
        unroute_linears(self.gemv_linears, self.fused_projections)
        self.gemv_linears = []
        unfuse_sibling_projections(self.fused_projections)
        self.fused_projections = []
        if self.packed_gqa:
            unpack_gqa_decode(self.model)
            self.packed_gqa = False
        self.model = None


class CompiledBackend(GraphBackend):
    """The graph backend with fused projections and the step compiled by torch.compile (module docstring)."""

    name = "compiled"

    def __init__(self, model, batch: int, seq_len: int, gen_tokens: int, **options):
        options.setdefault("fuse_projections", True)
        options.setdefault("gemv", None)
        options.setdefault("fuse_layers", None)
        options.setdefault("compile", None)
        super().__init__(model, batch, seq_len, gen_tokens, **options)
