"""A cell's specification, its model (random weights from an architecture, or a local checkpoint) and its prompt."""

from __future__ import annotations

from dataclasses import dataclass

from latency_sensitivity.vocabulary import COMPILING_SETTINGS


TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class CellSpec:
    model: str
    model_kind: str  # "architecture" (random weights) | "path" (local checkpoint)
    model_location: str
    dtype: str
    backend: str
    device: str
    attn_implementation: str
    seq_len: int
    batch: int
    gen_tokens: int
    warmup: int
    reps: int
    seed: int
    threads: int
    replicate: int = 1  # which of the cell's separate measuring processes this is (replicates.py)
    cpu_affinity: list[int] | None = None  # CPUs the process is pinned to (host.pin); None: as started
    isolation: str = "process"  # process: one process per cell; shared: a worker serves cells (worker.py)
    # the compiled backend's step: per batch size or batch dynamic; saved once and loaded, or traced (vocabulary)
    compile_shapes: str = COMPILING_SETTINGS["compile_shapes"]
    compiled_step: str = COMPILING_SETTINGS["compiled_step"]
    saved_step_dir: str | None = None  # where saved steps are (the compile cache's steps folder; the runner's)
    placement: str = "fixed"  # where the model and cache land on the device: as allocated, or by replicate (placement.py)


def model_config(spec: CellSpec):
    """The transformers config of the cell's model, with its model class imported (start-up, not build)."""
    import json

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if spec.model_kind == "architecture":
        with open(spec.model_location) as fh:
            arch = json.load(fh)
        model_type = arch.pop("model_type")
        arch.pop("torch_dtype", None)
        arch.pop("dtype", None)
        cfg = AutoConfig.for_model(model_type, **arch)
    elif spec.model_kind == "path":
        cfg = AutoConfig.from_pretrained(spec.model_location, local_files_only=True)
    else:
        raise ValueError(f"unknown model kind {spec.model_kind!r}")
    MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)]  # transformers imports model modules lazily: do it now
    return cfg


def build_model(spec: CellSpec, cfg=None):
    """Random weights from an architecture (like vLLM's dummy load format), or a local checkpoint's weights."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = cfg if cfg is not None else model_config(spec)
    dtype = getattr(torch, TORCH_DTYPES[spec.dtype])
    device = torch.device(spec.device)
    if spec.model_kind == "architecture":
        torch.manual_seed(spec.seed)
        with device:
            try:
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=spec.attn_implementation)
            except TypeError:  # transformers < 4.56 names it torch_dtype
                model = AutoModelForCausalLM.from_config(
                    cfg, torch_dtype=dtype, attn_implementation=spec.attn_implementation
                )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            spec.model_location,
            config=cfg,
            dtype=dtype,
            attn_implementation=spec.attn_implementation,
            local_files_only=True,
        ).to(device)
    model.eval()
    return model


def make_prompt(spec: CellSpec, vocab_size: int):
    """Seeded random token ids: latency depends on shapes, not on which tokens."""
    import torch

    gen = torch.Generator().manual_seed(spec.seed)
    ids = torch.randint(0, vocab_size, (spec.batch, spec.seq_len), generator=gen)
    return ids.to(spec.device)
