# Config validation, cell enumeration and input functions shared by every rule.

import os
import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The workflow and its jobs run the package from this checkout, whatever else is installed.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from latency_sensitivity import config as lsconfig  # noqa: E402
from latency_sensitivity import measurement_jobs, vocabulary
from latency_sensitivity.analysis import run_summary  # noqa: E402
from latency_sensitivity.analysis.merge import cell_problem  # noqa: E402
from latency_sensitivity.analysis.profiling import NSYS_REPORTS  # noqa: E402
from latency_sensitivity.measure import compile_cache  # noqa: E402
from latency_sensitivity.vocabulary import tokenizer_file  # noqa: E402

lsconfig.use_source_tree(SRC)

# Checked before any job starts. Our checks come first: their messages name the key and the value, and
# they cover what a schema cannot (model files exist, sequences fit the model's positions).
try:
    lsconfig.validate_workflow(config, workflow)
except lsconfig.ConfigError as exc:
    raise WorkflowError(f"invalid configuration: {exc}")
validate(config, workflow.source_path("../schemas/config.schema.yaml"))

MEASURE = config["measure"]
SWEEPS = list(config["sweeps"])
# What a measurement job needs from the machine: on CUDA one GPU (the resource a scheduler such as SLURM
# allocates; the runner then claims a device of its own), on the CPU a `cpu_measurement` token. The default
# workflow profile caps both at 1, so measurements never run two at a time on one machine.
MEASURE_RESOURCES = (
    {"gpu": 1, "cpu_measurement": 0} if MEASURE["device"] == "cuda" else {"gpu": 0, "cpu_measurement": 1}
)
# The tokenizer every cell times (a local one, or trained once by rule train_tokenizer).
TOKENIZER = config["tokenizer"]
TOKENIZER_FILE = (
    str(tokenizer_file(TOKENIZER["path"])) if "path" in TOKENIZER else "results/tokenizer/tokenizer.json"
)
LOADING = config["loading"]
PROFILE = config["profile"]
PROFILE_CELLS = lsconfig.profile_cells(config)
MODEL_SOURCES = {
    name: lsconfig.resolve_model(name, config["models"][name], ".")
    for name in dict.fromkeys([*MEASURE["models"], *(cell.model for cell in PROFILE_CELLS)])
}
CELLS = lsconfig.all_cells(config)


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    dtype="fp32|fp16|bf16",
    backend="eager|graph|compiled",
    device="cpu|cuda",
    seq="[0-9]+",
    batch="[0-9]+",
    replicate="[1-9][0-9]*",
    sweep="[A-Za-z0-9][A-Za-z0-9_-]*",


def _shown_path(path):
    """A path relative to the working directory when it lies below it (stable params across checkouts)."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def model_kind(wildcards):
    return MODEL_SOURCES[wildcards.model].kind


def model_location(wildcards):
    return _shown_path(MODEL_SOURCES[wildcards.model].location)


def model_config_file(wildcards):
    return _shown_path(MODEL_SOURCES[wildcards.model].config_json)


def sweep_cell_files(wildcards):
    return [cell.path for cell in lsconfig.sweep_cells(config, wildcards.sweep)]


def _forced(path):
    """Whether this run measures the cell again anyway (--forcerun of the file or of measure_cell, --forceall)."""
    dag = workflow.dag_settings
    forced = {os.path.normpath(str(t)) for t in dag.forcerun}
    producer = "measure_cell" if Path(path).parent.name.startswith("seq") else "combine_replicates"
    return dag.forceall or producer in forced or os.path.normpath(path) in forced


def readable_cells(wildcards):
    """An input function of `all` that stops the run before any job starts when a cell's result file exists
    but cannot be read (cut short, edited), naming the files and the remedy; a cell this run measures again
    anyway (--forcerun) passes. It adds no input. (Snakemake treats an existing file whose producing job
    fails to build as a plain input, so only the target rule's own input function can stop the run here.)"""
    unreadable = [
        (path, problem)
        for path in [*all_cell_files(), *all_replicate_files()]
        if not _forced(path) and (problem := cell_problem(path)) is not None
    ]
    if unreadable:
        listed = "\n".join(f"  {path}: {problem}" for path, problem in unreadable)
        names = " ".join(path for path, _ in unreadable)
        raise WorkflowError(
            f"{len(unreadable)} cell result file(s) cannot be read (cut short or edited by hand):\n{listed}\n"
            f"Make them again: delete them and rerun (a replicate file is measured again, a cell file is combined "
            f"again from its replicates; nothing else), or add "
            f"`--forcerun {names}`."
        )
    return []


def all_cell_files():
    return [cell.path for cell in CELLS]


def all_replicate_files():
    return [path for cell in CELLS for path in cell.replicate_paths(MEASURE["replicates"])]


def cell_replicate_files(wildcards):
    """The replicate result files one cell's result is combined from."""
    cell = vocabulary.Cell(wildcards.model, wildcards.dtype, wildcards.backend, int(wildcards.seq), int(wildcards.batch))
    return cell.replicate_paths(MEASURE["replicates"])


MEASUREMENT_ORDER = measurement_jobs.measurement_order(CELLS, MEASURE["replicates"])


def measurement_priority(wildcards):
    """The order of the measure jobs (measurement_jobs.measurement_order): replicate by replicate, worker by worker."""
    cell = vocabulary.Cell(wildcards.model, wildcards.dtype, wildcards.backend, int(wildcards.seq), int(wildcards.batch))
    return MEASUREMENT_ORDER.get((cell, int(wildcards.replicate)), 0)


def calibration_files():
    return [f"results/calibration/{MEASURE['device']}_{dtype}.json" for dtype in MEASURE["dtypes"]]


def sweep_axis(wildcards):
    return lsconfig.sweep_axis(config, wildcards.sweep)


def sweep_figures(sweep):
    figures = [f"results/{sweep}/combined.png", f"results/{sweep}/anatomy.png"]
    if lsconfig.sweep_axis(config, sweep) == "grid":
        figures.append(f"results/{sweep}/heatmap.png")
    return figures


def all_targets():
    """Everything `all` builds. Each measurement and intermediate is a target of its own: Snakemake does not
    remake a missing intermediate whose downstream outputs exist, so a deleted cell, calibration, tokenizer,
    checkpoint or merged table would otherwise never be made again. As targets, a missing one is made again, and
    everything downstream of it is rebuilt (its outputs are then older than their inputs)."""
    targets = []
    for sweep in SWEEPS:
        targets.extend([f"results/{sweep}/merged.csv", f"results/{sweep}/sweep.csv"])
        targets.extend(sweep_figures(sweep))
    targets.append("results/report.md")
    targets.extend(all_cell_files())
    targets.extend(all_replicate_files())
    targets.append(readable_cells)
    targets.extend(calibration_files())
    if "path" not in TOKENIZER:
        targets.append(TOKENIZER_FILE)
    targets.extend(loading_files())
    if LOADING["enabled"]:
        targets.extend(
            f"results/checkpoints/{m}/{d}"
            for m in MEASURE["models"]
            if MODEL_SOURCES[m].kind == "architecture"
            for d in MEASURE["dtypes"]
        )
    return targets


def stop_measurement_workers():
    from latency_sensitivity.measure import worker_pool

    worker_pool.stop_all()


_SUMMARY_SHOWN = []


def show_run_summary(fail_on_errors, log=None):
    """Print the summary of the cells and loading results (ok, oom, error with its message) once per run, by
    `all` or, when a job failed, by onerror, also into `log` when given; with fail_on_errors, fail on an error
    unless allow_errors is set."""
    if _SUMMARY_SHOWN:
        return
    _SUMMARY_SHOWN.append(True)
    summary = run_summary.read_results([*all_cell_files(), *loading_files()])
    text = summary.text(config["allow_errors"])
    print(text, end="", file=sys.stderr)
    if log is not None:
        Path(log).write_text(text)
    if fail_on_errors and summary.errors and not config["allow_errors"]:
        raise WorkflowError(f"{len(summary.errors)} failed cell or loading result(s), listed above")


def loading_checkpoint(wildcards):
    """The checkpoint a loading measurement reads: a local model's own folder, else the materialised one."""
    source = MODEL_SOURCES[wildcards.model]
    if source.kind == "path":
        return _shown_path(source.location)
    return f"results/checkpoints/{wildcards.model}/{wildcards.dtype}"


def loading_files():
    """One loading measurement per measured model and dtype, on the measurement device (when enabled)."""
    if not LOADING["enabled"]:
        return []
    return [f"results/loading/{m}/{d}/{MEASURE['device']}.json" for m in MEASURE["models"] for d in MEASURE["dtypes"]]


def profile_targets(tools):
    """The profile summaries of these tools, one per profiled cell (profile_all adds the profiles' report)."""
    return [f"results/profiles/summary/{tool}/{vocabulary.profile_stem(cell)}.json" for tool in tools for cell in PROFILE_CELLS]


def reference_study_files():
    """The reference study's CSV, when the config names one (an input: a changed CSV rebuilds the report)."""
    study = config.get("reference_study")
    return [study["csv"]] if study else []


def compare_device_files():
    """The other runs' sweep tables the report compares with (compare_devices): a changed one rebuilds it."""
    return [
        str(path)
        for other in config.get("compare_devices", [])
        for path in lsconfig.compare_device_sweeps(other, SWEEPS).values()
    ]


def report_profile_summaries():
    """The profile summaries the main report shows: those of profile.tools when profile.in_report is set."""
    return profile_targets(PROFILE["tools"]) if PROFILE["in_report"] else []


def named(**values):
    """Settings as one `key=value` string, for a rerun-trigger param. Snakemake compares a job's params with
    the recorded ones as a set of values without their names, so two scalar params that swap values, or one
    that takes a value another already has (seed 0 -> 1 beside threads 1), look unchanged; a single string
    that names each value does not."""
    return " ".join(f"{key}={values[key]!r}" for key in sorted(values))


def measurement(wildcards):
    """Everything besides the wildcards that a cell's numbers depend on, named (see `named`;
    measurement_jobs.measurement_settings says which measure.* keys those are for the cell's backend)."""
    source = MODEL_SOURCES[wildcards.model]
    settings = measurement_jobs.measurement_settings(MEASURE, wildcards.backend)
    return named(model_kind=source.kind, model_location=_shown_path(source.location), **settings)


def compile_shapes(wildcards):
    """The cell's --compile-shapes (measurement_jobs.compiling_setting)."""
    return measurement_jobs.compiling_setting(MEASURE, wildcards.backend, "compile_shapes")


def compiled_step(wildcards):
    """The cell's --compiled-step (measurement_jobs.compiling_setting)."""
    return measurement_jobs.compiling_setting(MEASURE, wildcards.backend, "compiled_step")


def placement(wildcards):
    """The cell's --placement (measurement_jobs.placement)."""
    return measurement_jobs.placement(MEASURE)


# measure.cpu_affinity on the runner's command line ("none": the CPUs the job was started with).
CPU_AFFINITY = ",".join(str(cpu) for cpu in MEASURE["cpu_affinity"]) or "none"


# Compiled code is kept under results/cache/compile/ (measure/compile_cache.py). Python's bytecode too, for every
# job, where Python writes none itself and torch was installed without it.
COMPILE_CACHE = "results/cache/compile"
compile_cache.bytecode_cache(COMPILE_CACHE)

# The runner's command line: the measure rule runs it and the profile rules (profile.smk) wrap it. Both keep
# compiled code in the compile cache, saved steps included.
RUNNER = (
    "python3 -m latency_sensitivity.measure.runner"
    " --model {wildcards.model} --model-kind {params.model_kind} --model-location {params.model_location:q}"
    " --dtype {wildcards.dtype} --backend {wildcards.backend} --device {params.device}"
    " --attn-implementation {params.attn_implementation}"
    " --seq {wildcards.seq} --batch {wildcards.batch}"
    " --gen-tokens {params.gen_tokens} --warmup {params.warmup} --reps {params.reps}"
    " --seed {params.seed} --threads {params.threads} --cpu-affinity {params.cpu_affinity}"
    " --compile-shapes {params.compile_shapes} --compiled-step {params.compiled_step} --placement {params.placement}"
    f" --tokenizer {{input.tokenizer:q}} --compile-cache {COMPILE_CACHE}"
)


# ------------------------------------------------------------------------------------ profiling

PROFILE_CELL = "{model}/{dtype}/{backend}/seq{seq}_batch{batch}"


wildcard_constraints:
    phase="prefill|decode",


def profiler_binary(tool):
    """An input function that fails the DAG, before any job runs, when the tool's binary is missing."""

    def check(wildcards):
        path = PROFILE[tool]["path"]
        if shutil.which(path) is None:
            raise WorkflowError(
                f"{tool} binary not found: config key profile.{tool}.path is {path!r}, which is neither an "
                f"executable file nor a command on PATH. Install it or set profile.{tool}.path; only the "
                f"profile targets need it."
            )
        return []

    return check


def _report_prefix(wildcards, output):
    return str(output.report).rsplit(".", 1)[0]


PROFILE_RUNNER_PARAMS = dict(
    model_kind=model_kind,
    model_location=model_location,
    device=MEASURE["device"],
    attn_implementation=MEASURE["attn_implementation"],
    gen_tokens=MEASURE["gen_tokens"],
    warmup=PROFILE["warmup"],
    reps=PROFILE["reps"],
    seed=MEASURE["seed"],
    threads=MEASURE["threads"],
    cpu_affinity=CPU_AFFINITY,
    compile_shapes=compile_shapes,
    compiled_step=compiled_step,
    placement=placement,
)
