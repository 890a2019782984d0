"""Model loading, measured in its stages like a real deployment's cold start.

A checkpoint (safetensors) is loaded the way a server does it, each stage timed on its own:

1. read: the file's bytes from storage into host memory, after writing back any of its dirty pages
   (``fsync``) and asking the kernel to drop it from the page cache (``posix_fadvise(DONTNEED)``, no root
   needed). DONTNEED leaves dirty pages in memory, so a checkpoint written moments before would otherwise be
   read from the cache, faster than the disk can deliver it. The share of the file still resident before the
   read (``mincore``) is recorded, and the read counts as cold only when none of it is;
2. deserialise: ``safetensors.torch.load`` of those bytes into host tensors;
3. instantiate: the model's modules built without allocating weights (meta device) and the host tensors
   assigned to them (``load_state_dict(assign=True)``);
4. host-to-device: the model moved to the device (on the CPU: nothing to copy);
5. first forward: the first prefill on the device (kernel selection, allocator growth, lazy init) against a
   second, warm one.

Bytes per second of read and host-to-device are set beside ceilings measured on the same machine in the same
run: a cold sequential read of a scratch file of the same size on the same file system, and a pinned and a
pageable host-to-device copy (CUDA only). `materialize` writes a model's random weights once as such a
checkpoint (``save_pretrained``, safetensors), so loading is measured without downloading anything.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

GB = 1e9


# The materialize job's record, in the checkpoint folder beside the weights.
MATERIALIZED = "materialized.json"


def materialize(spec, out_dir: str | Path) -> dict:
    """Build the cell's model (random weights from its architecture) and save it as a safetensors checkpoint."""
    from latency_sensitivity.measure import model as cell_model
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model = cell_model.build_model(spec)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    files = sorted(out_dir.glob("*.safetensors"))
    return {"checkpoint": str(out_dir), "files": [f.name for f in files], "bytes": sum(f.stat().st_size for f in files)}


def drop_from_page_cache(path: str | Path) -> bool:
    """Write back the file's dirty pages, then ask the kernel to forget its cached pages; True when accepted.

    Without the write-back, DONTNEED skips dirty pages and a freshly written file stays cached."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except (OSError, AttributeError):
        return False
    finally:
        os.close(fd)


def resident_fraction(path: str | Path) -> float | None:
    """Share of the file's pages in the page cache (``mincore`` on a shared read-only mapping); None where
    it cannot be asked (no libc, another OS, an empty file)."""
    import ctypes
    import ctypes.util
    import mmap

    size = os.path.getsize(path)
    if size == 0:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return None
            return sum(v & 1 for v in vec) / pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as fh:
        return fh.read()


def disk_read_ceiling(folder: Path, size: int) -> dict:
    """Cold sequential read GB/s of a scratch file of `size` bytes written in `folder` (then removed)."""
    scratch = folder / ".read_ceiling.bin"
    chunk = os.urandom(1 << 20)
    try:
        with open(scratch, "wb") as fh:
            for _ in range(max(1, size >> 20)):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        dropped = drop_from_page_cache(scratch) and not resident_fraction(scratch)
        t0 = time.perf_counter()
        n = len(_read(scratch))
        seconds = time.perf_counter() - t0
    finally:
        scratch.unlink(missing_ok=True)
    return {"disk_read_gb_s": n / seconds / GB, "disk_read_bytes": n, "disk_read_cold": dropped}


def h2d_ceiling(size: int, device: str) -> dict:
    """Pinned and pageable host-to-device copy GB/s of `size` bytes (CUDA only)."""
    import torch

    if device != "cuda":
        return {}
    out = {}
    for kind, pin in (("pinned", True), ("pageable", False)):
        host = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
        dev = torch.empty(size, dtype=torch.uint8, device="cuda")
        dev.copy_(host, non_blocking=pin)  # warm
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dev.copy_(host, non_blocking=pin)
        torch.cuda.synchronize()
        out[f"h2d_{kind}_gb_s"] = size / (time.perf_counter() - t0) / GB
        del host, dev
    torch.cuda.empty_cache()
    return out


def _no_init_weights():
    """transformers' context that skips weight initialisation (its module moved between versions)."""
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:  # initialised then: counted in instantiate_s
            return contextlib.nullcontext()
    return no_init_weights()


def measure_loading(checkpoint: str | Path, device: str, dtype: str, seq_len: int = 128, seed: int = 0):
    """The stages of loading `checkpoint` onto `device` (see the module docstring), with the ceilings.

    Returns (result dict, the loaded model).
    """
    import safetensors.torch
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from latency_sensitivity.measure.model import TORCH_DTYPES

    checkpoint = Path(checkpoint)
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {checkpoint}")
    total = sum(f.stat().st_size for f in files)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    stages: dict[str, float] = {}

    dropped = all(drop_from_page_cache(f) for f in files)
    resident = [resident_fraction(f) for f in files]
    resident_bytes = sum((r or 0.0) * f.stat().st_size for r, f in zip(resident, files))
    cold = dropped and resident_bytes == 0
    t0 = time.perf_counter()
    blobs = [_read(f) for f in files]
    stages["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    state: dict = {}
    for blob in blobs:
        state.update(safetensors.torch.load(blob))
    stages["deserialise_s"] = time.perf_counter() - t0
    del blobs

    # Start-up, not loading: the config and the model's code (transformers imports it lazily).
    cfg = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)]
    t0 = time.perf_counter()
    with _no_init_weights():  # allocate, do not initialise: the checkpoint's tensors replace them
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, TORCH_DTYPES[dtype]))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()
    loaded = {t.data_ptr() for t in state.values()}
    not_loaded = [n for n, p in model.named_parameters() if p.data_ptr() not in loaded]
    if not_loaded or unexpected:
        raise RuntimeError(f"checkpoint does not fit the model: not loaded {not_loaded[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")
    model.eval()
    stages["instantiate_s"] = time.perf_counter() - t0
    del state

    t0 = time.perf_counter()
    model.to(device)
    sync()
    stages["host_to_device_s"] = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, cfg.vocab_size, (1, seq_len), generator=gen).to(device)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            sync()
            t0 = time.perf_counter()
            model(input_ids=prompt, logits_to_keep=1)
            sync()
            times.append(time.perf_counter() - t0)
    stages["first_forward_s"], stages["warm_forward_s"] = times
    result = {
        "model": cfg.model_type,
        "checkpoint": str(checkpoint),
        "device": device,
        "dtype": dtype,
        "bytes": total,
        "read_cold": cold,
        "read_resident_fraction": resident_bytes / total if total else None,
        **stages,
        "read_gb_s": total / stages["read_s"] / GB,
        "host_to_device_gb_s": total / stages["host_to_device_s"] / GB if device == "cuda" else None,
        "load_total_s": sum(v for k, v in stages.items() if k != "warm_forward_s"),
    }
    result.update(disk_read_ceiling(checkpoint, total))
    result.update(h2d_ceiling(total, device))
    return result, model


def main(argv: list[str] | None = None) -> int:
    """python -m latency_sensitivity.measure.loading materialize|measure ..."""
    import argparse

    from latency_sensitivity.atomic import write_json
    from latency_sensitivity.measure.host import process_age_s  # each job's wall time, for its record
    from latency_sensitivity.measure.model import CellSpec

    p = argparse.ArgumentParser(prog="python -m latency_sensitivity.measure.loading", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("materialize", help="write a model's random weights as a safetensors checkpoint")
    m.add_argument("--model", required=True)
    m.add_argument("--model-kind", choices=["architecture", "path"], required=True)
    m.add_argument("--model-location", required=True)
    m.add_argument("--dtype", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the random weights are generated: on a GPU in about a second, where the host's "
                        "single-threaded initialisation of a 3B model takes minutes; the same seed and device "
                        "give the measured cells' weights")
    m.add_argument("--out", required=True, type=Path)
    r = sub.add_parser("measure", help="time loading a checkpoint onto a device, stage by stage")
    r.add_argument("--checkpoint", required=True, type=Path)
    r.add_argument("--model", help="the model's name in the config (for the record; default: its model_type)")
    r.add_argument("--device", choices=["cpu", "cuda"], required=True)
    r.add_argument("--dtype", required=True)
    r.add_argument("--seq", type=int, default=128)
    r.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    if a.command == "materialize":
        spec = CellSpec(model=a.model, model_kind=a.model_kind, model_location=a.model_location, dtype=a.dtype,
                        backend="eager", device=a.device, attn_implementation="sdpa", seq_len=1, batch=1,
                        gen_tokens=2, warmup=0, reps=1, seed=a.seed, threads=1)
        from latency_sensitivity.measure.gpu_slots import claim_for

        claim = claim_for(a.device)
        info = materialize(spec, a.out)
        # beside the weights, for the loading record: what writing them cost (a one-time job per model and dtype)
        write_json(a.out / MATERIALIZED, {**info, "job_s": process_age_s(),
                                          "gpu_wait_s": claim.waited_s if claim is not None else None})
        print(json.dumps(info), file=sys.stderr)
        return 0
    from latency_sensitivity.measure.gpu_slots import claim_for

    claim = claim_for(a.device)
    try:
        result, _ = measure_loading(a.checkpoint, a.device, a.dtype, a.seq)
        result["model"] = a.model or result["model"]
        result["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal: the report says what failed
        result = {"model": a.model, "checkpoint": str(a.checkpoint), "device": a.device, "dtype": a.dtype,
                  "status": "error",
                  "error": f"{type(exc).__name__}: {exc}"}
        print(result["error"], file=sys.stderr)
    result["job_s"] = process_age_s()  # the job's wall time, from its process's start (a one-time cost)
    result["gpu_wait_s"] = claim.waited_s if claim is not None else None  # part of job_s
    try:  # the job that wrote the checkpoint, where it said
        written = json.loads((a.checkpoint / MATERIALIZED).read_text())
    except (OSError, ValueError):
        written = {}
    result["checkpoint_job_s"], result["checkpoint_gpu_wait_s"] = written.get("job_s"), written.get("gpu_wait_s")
    write_json(a.out, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
