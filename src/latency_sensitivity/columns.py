"""Every column of a merged sweep CSV, defined once.

The per-cell JSON stores the measured metrics under the same names; merge, collapse, plots, report and the
README's metrics table all read their names, units and meanings from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from latency_sensitivity import vocabulary


@dataclass(frozen=True)
class Column:
    name: str
    unit: str
    description: str


# The reference study's CSV, in its order. Always first in sweep.csv.
REFERENCE_COLUMNS: tuple[Column, ...] = (
    Column("seq_len", "tokens", "Prompt length of every sequence in the batch."),
    Column("batch", "sequences", "Number of independent sequences processed together."),
    Column("prefill_p50_ms", "ms", "Median wall time of the prefill forward pass (whole batch, `logits_to_keep=1`)."),
    Column("prefill_ms_per_tok", "ms/token", "prefill_p50_ms / (batch × seq_len)."),
    Column("prefill_tok_s", "tokens/s", "batch × seq_len × 1000 / prefill_p50_ms."),
    Column(
        "decode_p50_ms_per_tok",
        "ms/step",
        "Median time of one decode step over all measured steps: every sequence gains one token, so this is "
        "the per-token latency a request sees.",
    ),
    Column("decode_tok_s", "tokens/s", "batch × 1000 / decode_p50_ms_per_tok."),
    Column(
        "total_tok_s",
        "tokens/s",
        "batch × (seq_len + gen_tokens) × 1000 / e2e_p50_ms: prompt and generated tokens over the measured "
        "request time.",
    ),
    Column(
        "vram_reserved_mb",
        "MiB",
        "Peak memory reserved by PyTorch's CUDA allocator during the measured reps (0 on the CPU).",
    ),
    Column(
        "flag",
        "",
        "`ok`, `collapse` (see flag_detail), `oom` (the cell ran out of memory) or `error` (see error).",
    ),
)

EXTRA_COLUMNS: tuple[Column, ...] = (
    # identity of the cell
    Column("sweep", "", "Name of the sweep (config `sweeps`) this row belongs to."),
    Column("model", "", "Model name (config `models`)."),
    Column("dtype", "", "Weight and activation dtype: fp32, fp16 or bf16."),
    Column(
        "backend",
        "",
        f"Execution backend: {vocabulary.describe(markdown=True)}.",
    ),
    Column("device", "", "Device kind the cell ran on: cpu or cuda."),
    Column("device_name", "", "Device model (GPU name, or the CPU model)."),
    Column("attn_implementation", "", "Attention kernel asked of transformers (sdpa, eager, flash_attention_2)."),
    Column("gen_tokens", "tokens", "Tokens generated per sequence: 1 from prefill, gen_tokens - 1 decode steps."),
    Column("warmup", "reps", "Discarded warmup repetitions."),
    Column("reps", "reps", "Measured repetitions."),
    Column("status", "", "Outcome of the measurement: ok, oom or error."),
    Column("flag_detail", "", "Why a cell is flagged: metric, ratio to the best earlier cell, that cell, and the noise the change exceeded."),
    Column("error", "", "Exception type and message of a failed cell (empty when it succeeded)."),
    # latency
    Column("ttft_p50_ms", "ms", "Median time to first token: prefill forward plus picking the first token."),
    Column("tpot_p50_ms", "ms", "Median over reps of the mean decode step time (time per output token after the first)."),
    Column("e2e_p50_ms", "ms", "Median end-to-end time of one request: TTFT plus all decode steps."),
    Column("tokenize_p50_ms", "ms", "Median host time to tokenise the batch's texts (one batched encode of batch texts of exactly seq_len tokens each)."),
    Column("detokenize_p50_ms", "ms", "Median host time to detokenise the batch's generated ids (batch x gen_tokens, one batched decode)."),
    Column("tokenize_tok_s", "tokens/s", "batch × seq_len × 1000 / tokenize_p50_ms."),
    Column("request_p50_ms", "ms", "Text in, text out: tokenize_p50_ms + e2e_p50_ms + detokenize_p50_ms (model loading not included)."),
    Column("prefill_p10_ms", "ms", "10th percentile of prefill time."),
    Column("prefill_p90_ms", "ms", "90th percentile of prefill time."),
    Column("prefill_iqr_ms", "ms", "Interquartile range (p75 - p25) of prefill time."),
    Column("prefill_p50_ci_low_ms", "ms", "Lower end of a bootstrap 95% interval of prefill_p50_ms."),
    Column("prefill_p50_ci_high_ms", "ms", "Upper end of a bootstrap 95% interval of prefill_p50_ms."),
    Column("decode_p10_ms_per_tok", "ms/step", "10th percentile of decode step time."),
    Column("decode_p90_ms_per_tok", "ms/step", "90th percentile of decode step time."),
    Column("decode_iqr_ms_per_tok", "ms/step", "Interquartile range of decode step time."),
    Column("decode_p50_ci_low_ms", "ms/step", "Lower end of a bootstrap 95% interval of decode_p50_ms_per_tok."),
    Column("decode_p50_ci_high_ms", "ms/step", "Upper end of a bootstrap 95% interval of decode_p50_ms_per_tok."),
    Column("ttft_p90_ms", "ms", "90th percentile of time to first token."),
    # between processes (measure.replicates): the latencies above are the median of the replicates' medians
    Column("replicates", "processes", "Separate processes the cell was measured in; its latencies are the median of their medians."),
    Column("prefill_replicate_spread_pct", "%", "(max - min) / median × 100 of the replicates' prefill_p50_ms: how well prefill repeats between processes (empty with one replicate)."),
    Column("prefill_replicate_min_ms", "ms", "Lowest replicate's prefill_p50_ms."),
    Column("prefill_replicate_max_ms", "ms", "Highest replicate's prefill_p50_ms."),
    Column("decode_replicate_spread_pct", "%", "(max - min) / median × 100 of the replicates' decode_p50_ms_per_tok (empty with one replicate)."),
    Column("decode_replicate_min_ms", "ms/step", "Lowest replicate's decode_p50_ms_per_tok."),
    Column("decode_replicate_max_ms", "ms/step", "Highest replicate's decode_p50_ms_per_tok."),
    # what the cell cost (summed over replicates in totals: analysis/replicates.py)
    Column("job_s", "s", "Wall time of the cell's job, from its process's start to its result: with isolation process the interpreter, imports, CUDA context, model build, backend setup, warmup and side measurements; with isolation shared the same less what its worker had paid already (plus the worker's start-up, when this job started it)."),
    Column("measured_s", "s", "Wall time of the measured reps alone."),
    Column("gc_full_collections", "", "Full garbage collections during the measured reps: 0 where none walked the model, the backend and what torch.compile left alive in the middle of a rep (the runner holds them off from backend setup to the cell's end)."),
    Column("cell_s", "s", "Wall time of the cell's measurement in its measuring process (model build to its last side measurement); job_s less cell_s is the job's own start-up and hand-over."),
    Column("tokenization_s", "s", "Wall time of the side measurement of tokenising and detokenising the cell's texts."),
    Column("kernel_time_s", "s", "What taking the GPU kernel time cost (kernel_time_request): from a warmup request, the profiler's own seconds (starting and stopping its two sessions, reading their traces; by part in the cell file's kernel_time_parts, beside the seconds each session's start and stop waited for the device to finish the request's queued work, which are the warmup's); from the pass after the reps, its wall time (one profiled prefill and one request profiled over up to 3 decode steps in its middle, stopping after them)."),
    Column("worker_start_s", "s", "Seconds the cell's job waited for its measurement worker to start (isolation shared; 0 when the worker was running, and with isolation process): a one-time cost per worker, inside job_s."),
    Column("cells_before", "", "Cells the measuring process had measured before this one (0 with isolation process; the median over replicates)."),
    Column("job_s_total", "s", "job_s summed over the cell's replicates: the device time the cell took."),
    Column("measured_s_total", "s", "measured_s summed over the cell's replicates."),
    Column("worker_start_s_total", "s", "worker_start_s summed over the cell's replicates."),
    Column("backend_setup_s_total", "s", "backend_setup_s summed over the cell's replicates: graph capture, and for the compiled backend compiling and autotuning, which a later run of the same shapes on the same machine loads from results/cache/compile/."),
    Column("import_s_total", "s", "import_s summed over the cell's replicates."),
    Column("startup_s_total", "s", "startup_s summed over the cell's replicates."),
    Column("warmup_s_total", "s", "warmup_s summed over the cell's replicates."),
    Column("kernel_time_s_total", "s", "kernel_time_s summed over the cell's replicates."),
    Column("tokenization_s_total", "s", "tokenization_s summed over the cell's replicates."),
    # the host around the measured reps (what explains noise in launch-bound cells; measure/host.py)
    Column("cpus_allowed", "CPUs", "CPUs the measuring process could run on (measure.cpu_affinity pins it)."),
    Column("cpu_mhz_start", "MHz", "Mean current clock of those CPUs just before the measured reps."),
    Column("cpu_mhz_end", "MHz", "Mean current clock of those CPUs just after the measured reps."),
    Column("load_1m_start", "", "One-minute load average of the machine just before the measured reps."),
    Column("load_1m_end", "", "One-minute load average just after the measured reps."),
    Column("steal_s", "s", "CPU time stolen from the machine (by a hypervisor) during the measured reps, all CPUs together."),
    # memory
    Column("vram_allocated_mb", "MiB", "Peak memory allocated by PyTorch tensors on the GPU during the measured reps."),
    Column("device_used_mb", "MiB", "Peak device memory in use according to NVML during the measured reps (all processes)."),
    Column("peak_rss_mb", "MiB", "Peak resident set size of the measuring process during the measured reps (CPU); with isolation shared it includes what the worker keeps from earlier cells (a few percent more)."),
    Column("predicted_memory_mb", "MiB", "Predicted peak: weights + KV cache + kept logits + activation estimate."),
    Column("kv_cache_mb", "MiB", "Predicted KV cache at the end of generation (GQA formula)."),
    Column("weights_mb", "MiB", "Parameter bytes of the model as built."),
    Column("placement_pad_mb", "MiB", "Device memory the replicate held while its model and backend were allocated, then freed before its warmup (measure.placement by_replicate: 0 for replicate 1; the median over replicates)."),
    Column(
        "peak_rss_covers_measured_reps_only",
        "",
        "True when the kernel's peak-RSS counter could be reset after warmup (else peak_rss_mb is the process peak).",
    ),
    # host overhead (CUDA): GPU kernel time from an unmeasured, profiled request, against the measured time
    Column("kernel_time_request", "", "The unmeasured request the kernel time comes from: `warmup<i>`, warmup request i (counted from 0; the second to last, with 3 or more warmup requests), or `after_reps`, a pass after the measured reps (a prefill, then a request stopped after its window)."),
    Column("prefill_kernel_ms", "ms", "GPU time of the prefill's kernels (profiled once, in kernel_time_request; the union of their intervals, so overlapping kernels count once)."),
    Column("decode_kernel_ms_per_step", "ms/step", "GPU time of one decode step's kernels (profiled once, averaged over kernel_time_decode_steps steps in the middle of kernel_time_request; overlapping kernels count once)."),
    Column("kernel_time_decode_steps", "steps", "Decode steps profiled for the kernel time: min(gen_tokens - 1, 3), from decode step kernel_time_first_step on."),
    Column("kernel_time_first_step", "step", "The first decode step profiled for the kernel time (counted from 0): the window is centred in the request's gen_tokens - 1 steps, where the median step lies."),
    Column("prefill_gpu_busy", "ratio", "prefill_kernel_ms / prefill_p50_ms: the share of the prefill the GPU was working."),
    Column("decode_gpu_busy", "ratio", "decode_kernel_ms_per_step / decode_p50_ms_per_tok: the share of a decode step the GPU was working. The kernel time comes from decode steps in the middle of one unmeasured profiled request (kernel_time_request, kernel_time_first_step, kernel_time_decode_steps; after a compute-bound prefill the first steps run a few percent slower, see benchmarks/sweep_cost/NOTES.md) and the step time from the measured median, so a GPU busy throughout can read slightly above 1 (up to 1.03 in the H100 grid)."),
    Column(
        "prefill_regime",
        "",
        "`launch-bound` when prefill_gpu_busy < 0.5 (the GPU waits on the host), else the roofline bound: "
        "`memory-bound` or `compute-bound`.",
    ),
    Column("decode_regime", "", "As prefill_regime, for a decode step."),
    # cost of setting up the cell
    Column("startup_s", "s", "Time to import transformers and the model's code, read its config, import the compiler (compiled backend) and create the CUDA context."),
    Column("model_code_s", "s", "Part of startup_s: importing the model's transformers code and reading its config (about 0 in a shared worker, which did it at its start)."),
    Column("compiler_import_s", "s", "Part of startup_s, compiled backend only: importing torch's compiler and the runtime a compiled or loaded step runs on, which a process pays once, at its first compiled step otherwise (about 0 in a shared worker, which did it at its start; 0 for the other backends)."),
    Column("cuda_init_s", "s", "Part of startup_s: creating the CUDA context (0 on the CPU and in a shared worker, which did it at its start)."),
    Column("import_s", "s", "Importing torch and the measuring modules before startup_s (0 in a shared worker)."),
    Column("environment_s", "s", "Recording the cell's environment (versions, device, driver) before startup_s."),
    Column("model_build_s", "s", "Time to build (random weights) or load the model onto the device, imports excluded; about 0 where a worker's cell took the model its earlier cell built (the cell file's model_from: kept)."),
    Column("warmup_s", "s", "Wall time of the warmup requests (kept out of every metric), without the profiler's own seconds when one of them is profiled (kernel_time_s; the profiled request's GPU work, which the profiler waits for, is counted here)."),
    Column(
        "decode_attention",
        "",
        "How a decode step's attention ran: the attn_implementation as transformers runs it, or `sdpa, packed "
        "GQA` where the graph backend runs a one-token query on the KV heads because the installed transformers "
        "would copy the static cache's keys and values once per query head (versions without `pack_gqa`), or "
        "`decode kernel, packed GQA` where the compiled backend's rewritten layers run it as the Triton decode "
        "attention kernel (batch 1 on CUDA).",
    ),
    Column(
        "backend_setup_s",
        "s",
        "Time the backend's per-cell setup took before the warmup reps (graph: static KV cache, warm-up steps "
        "and CUDA graph capture; compiled: the same, and torch.compile or, at batch 1, the Triton kernels' "
        "autotuning (cached on disk after the first cell); eager: none), kept out of every metric. Its parts, "
        "the device synchronized between them, are in backend_info setup_parts (the model changes, the static "
        "cache with the compiled step found or kept, the cache's allocation (a prefill where transformers cannot "
        "allocate it ahead), the step run as Python, warm-up steps, capture, a "
        "replay, the reset).",
    ),
    Column(
        "backend_compile_s",
        "s",
        "The compiled backend's first decode step, where its compiled step is made (part of backend_setup_s). "
        "With compiled_step saved (the default) the first process that needs a step compiles it ahead of time "
        "and saves it under results/cache/compile/, and every later process loads it there without tracing "
        "the model; with compiled_step traced torch.compile traces the step in each process (inductor's on-disk "
        "cache shortens the compile, not the trace). A shared worker keeps its compiled step, so its later "
        "cells of the same shapes (with compile_shapes dynamic_batch: any batch of 2 or more) run it as it is. "
        "backend_info compile_stats step says which happened: compiled and saved, loaded, kept, traced. Empty "
        "for other backends, and for compiled cells whose decoder layers were rewritten (batch 1 on CUDA), "
        "which are not compiled.",
    ),
)

ROOFLINE_NOTE = Column(
    "roofline_note", "", "Why a cell has no roofline columns, or a warning that it measured faster than its floor."
)


# Roofline floors per cell (roofline.py computes them against the calibrated ceilings).
ROOFLINE_COLUMNS: tuple[Column, ...] = (
    Column("prefill_gflop", "GFLOP", "Matmul FLOPs of one prefill forward (linear layers, last-token LM head, causal attention)."),
    Column("prefill_gbytes", "GB", "Fewest bytes one prefill forward must move: weights once, embedding rows, KV written, kept logits."),
    Column("prefill_floor_ms", "ms", "Roofline lower bound on prefill time: the larger of FLOPs / matmul ceiling and bytes / bandwidth ceiling."),
    Column("prefill_bound", "", "Which ceiling sets the prefill floor: `compute` or `memory`."),
    Column("prefill_efficiency", "ratio", "prefill_floor_ms / prefill_p50_ms: the fraction of the roofline the measured prefill reaches."),
    Column("decode_gflop_per_step", "GFLOP", "Matmul FLOPs of one decode step, averaged over the gen_tokens - 1 steps."),
    Column("decode_gbytes_per_step", "GB", "Fewest bytes of one decode step (weights, cached KV read, new KV and logits written), averaged over the steps."),
    Column("decode_floor_ms", "ms/step", "Roofline lower bound on one decode step's time, averaged over the steps."),
    Column("decode_bound", "", "Which ceiling sets the decode floor over the steps: `compute` or `memory`."),
    Column("decode_efficiency", "ratio", "decode_floor_ms / decode_p50_ms_per_tok: the fraction of the roofline the measured decode reaches."),
    Column("prefill_floor_peak_ms", "ms", "prefill_floor_ms against the device's theoretical peak (bandwidth from NVML's memory clock and bus width, tensor FLOP/s from SM count, clock and architecture) instead of the measured ceilings; empty on the CPU."),
    Column("decode_floor_peak_ms", "ms/step", "decode_floor_ms against the device's theoretical peak; empty on the CPU."),
)

# GPU telemetry summaries over the measured reps (telemetry.py samples NVML).
TELEMETRY_COLUMNS: tuple[Column, ...] = (
    Column(
        "gpu_util_p50_pct",
        "%",
        "Median NVML GPU utilisation (share of time at least one kernel ran) over the samples of the measured reps.",
    ),
    Column("gpu_util_max_pct", "%", "Highest NVML GPU utilisation seen in any sample of the measured reps."),
    Column("sm_clock_p50_mhz", "MHz", "Median SM clock over the samples of the measured reps."),
    Column("sm_clock_min_mhz", "MHz", "Lowest SM clock seen in any sample (a drop hints at thermal or power throttling)."),
    Column("sm_clock_start_mhz", "MHz", "SM clock read when sampling started, before the measured reps."),
    Column("sm_clock_end_mhz", "MHz", "SM clock read when sampling stopped, after the measured reps."),
    Column("mem_clock_p50_mhz", "MHz", "Median memory clock over the samples of the measured reps."),
    Column(
        "power_p50_w",
        "W",
        "Median board power draw reported by NVML (on recent GPUs itself an average over about a second).",
    ),
    Column("power_max_w", "W", "Highest board power draw seen in any sample of the measured reps."),
    Column("temperature_max_c", "°C", "Highest GPU core temperature seen in any sample of the measured reps."),
    Column(
        "device_used_max_mb",
        "MiB",
        "Highest device memory in use according to NVML in any sample (all processes on the GPU).",
    ),
    Column(
        "energy_j",
        "J",
        "Energy the board used while sampling ran, from NVML's total-energy counter (stop minus start; Volta or newer).",
    ),
    Column("n_samples", "samples", "Number of telemetry samples taken (0 when NVML was not available)."),
    Column("energy_j_per_token", "J/token", "energy_j divided by the tokens processed in the measured reps."),
)


ALL_COLUMNS: tuple[Column, ...] = REFERENCE_COLUMNS + EXTRA_COLUMNS + ROOFLINE_COLUMNS + (ROOFLINE_NOTE,) + TELEMETRY_COLUMNS
COLUMNS_BY_NAME: dict[str, Column] = {c.name: c for c in ALL_COLUMNS}
REFERENCE_NAMES: list[str] = [c.name for c in REFERENCE_COLUMNS]

# Lower is better for these per-token latencies; higher is better for these throughputs. Collapse
# detection looks at both kinds along a sweep's axis.
LATENCY_METRICS: tuple[str, ...] = ("prefill_ms_per_tok", "decode_p50_ms_per_tok")
THROUGHPUT_METRICS: tuple[str, ...] = ("prefill_tok_s", "decode_tok_s", "total_tok_s")


def order_columns(names: list[str]) -> list[str]:
    """Known columns in their defined order, then any others (e.g. telemetry, roofline) in the given order."""
    known = [c.name for c in ALL_COLUMNS if c.name in names]
    return known + [n for n in names if n not in COLUMNS_BY_NAME]


def markdown_table(columns: tuple[Column, ...] = ALL_COLUMNS) -> str:
    """The metrics table printed in the README (tests keep the two in step)."""
    lines = ["| column | unit | meaning |", "| --- | --- | --- |"]
    for c in columns:
        lines.append(f"| `{c.name}` | {c.unit} | {c.description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m latency_sensitivity.columns
    print(markdown_table(), end="")
