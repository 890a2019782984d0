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


def model_key(spec: CellSpec) -> tuple:
    """What a built model depends on: the same key gives the same modules and the same weights."""
    return (spec.model_kind, spec.model_location, spec.dtype, spec.device, spec.attn_implementation, spec.seed)


def model_fingerprint(model) -> tuple:
    """The model's form, weights' values aside: each module's name, class, instance attributes (a backend's change
    sets some: a swapped forward, a fused group, a rewritten layer's plan) and hooks, its parameters' and buffers'
    names, shapes, dtypes and devices, and the config. Not the weights' storage: a backend that fused projections
    leaves them views of one tensor after it undid the fusing, with the same values."""
    import json

    modules = tuple((name, type(m).__qualname__, tuple(sorted(vars(m))),
                     tuple(len(v) for k, v in sorted(vars(m).items()) if k.endswith("hooks") and isinstance(v, dict)))
                    for name, m in model.named_modules())
    tensors = tuple((name, tuple(t.shape), str(t.dtype), str(t.device))
                    for name, t in (*model.named_parameters(), *model.named_buffers()))
    return modules, tensors, json.dumps(model.config.to_dict(), sort_keys=True, default=str), model.training


class ModelKeeper:
    """A worker's built model, kept from one cell to its next cell of the same model (model_key) instead of a build
    per cell: the worker's cells then run the same weights, where its first cell built them on the device.

    take() hands over the kept model where the key matches and the model's form is the one it was built with
    (each backend undoes its changes to the model when it closes); otherwise it builds one. keep() after the cell
    keeps it only where the cell ended ok: after a failed cell the next one builds afresh. A process of its own
    builds per cell (no keeper).

    A worker freezes what outlives its cells out of the garbage collector's reach (worker.py), a kept model
    included, and a model can hold reference cycles (a change left in place: a method bound to its module): what
    of it is in one is freed only once the collector can reach it again, so take() unfreezes everything where it
    lets a kept model go (the worker's collection after the cell then walks it all once, and freezes what
    survives); after a failed cell, the cell does (cell.measure)."""

    def __init__(self):
        self._kept = None  # (key, model, fingerprint at its build)
        self._taken = None  # (key, fingerprint at its build) of the model a cell has now

    def take(self, spec: CellSpec, cfg=None) -> tuple:
        """(model, "kept" or "built", why a model of this key that was kept changed form, or None). The keeper
        holds nothing until keep()."""
        import gc

        key = model_key(spec)
        kept, self._kept, changed = self._kept, None, None
        if kept is not None and kept[0] == key:
            _, model, fingerprint = kept
            now = model_fingerprint(model)
            if now == fingerprint:
                self._taken = (key, fingerprint)
                return model, "kept", None
            changed = first_difference(fingerprint, now)
        if kept is not None:  # let go: the collector may reach it again
            gc.unfreeze()
        model = kept = None  # freed before the build that replaces it
        model = build_model(spec, cfg)
        self._taken = (key, model_fingerprint(model))
        return model, "built", changed

    def keep(self, model, ok: bool) -> None:
        """After the cell that took `model` (its backend closed): kept for the next cell where the cell was ok."""
        taken, self._taken = self._taken, None
        if ok and taken is not None and model is not None:
            self._kept = (taken[0], model, taken[1])


def first_difference(before: tuple, now: tuple) -> str:
    """The first place where two model_fingerprint()s differ, in words."""
    modules, tensors, config, training = before
    modules_now, tensors_now, config_now, training_now = now
    for was, is_ in zip(modules, modules_now):
        if was != is_:
            name = f"module {was[0] or 'model'} ({was[1]})"
            if was[:2] != is_[:2]:
                return f"{name} is now {is_[0] or 'model'} ({is_[1]})"
            extra, lost = sorted(set(is_[2]) - set(was[2])), sorted(set(was[2]) - set(is_[2]))
            if not extra and not lost:
                return f"{name} has {sum(is_[3])} hooks, against {sum(was[3])}"
            return name + " " + " and ".join(([f"has {extra}"] if extra else []) + ([f"lacks {lost}"] if lost else []))
    if len(modules) != len(modules_now):
        return f"{len(modules_now)} modules, against {len(modules)}"
    for was, is_ in zip(tensors, tensors_now):
        if was != is_:
            return f"tensor {was} is now {is_}"
    if len(tensors) != len(tensors_now):
        return f"{len(tensors_now)} parameters and buffers, against {len(tensors)}"
    if config != config_now:
        return "its config changed"
    return f"training {training_now}, against {training}"
