# Config validation, cell enumeration and input functions shared by every rule.

import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The workflow and its jobs run the package from this checkout, whatever else is installed.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from latency_sensitivity import config as lsconfig  # noqa: E402
from latency_sensitivity.profiling import NSYS_REPORTS  # noqa: E402
from latency_sensitivity.tokenization import tokenizer_file  # noqa: E402

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


def all_cell_files():
    return [cell.path for cell in CELLS]


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
    targets = []
    for sweep in SWEEPS:
        targets.append(f"results/{sweep}/sweep.csv")
        targets.extend(sweep_figures(sweep))
    targets.append("results/report.md")
    targets.extend(loading_files())
    return targets


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
    return [f"results/profiles/summary/{tool}/{lsconfig.profile_stem(cell)}.json" for tool in tools for cell in PROFILE_CELLS]


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


# The runner's command line: the measure rule runs it and the profile rules (profile.smk) wrap it.
RUNNER = (
    "python3 -m latency_sensitivity.runner"
    " --model {wildcards.model} --model-kind {params.model_kind} --model-location {params.model_location:q}"
    " --dtype {wildcards.dtype} --backend {wildcards.backend} --device {params.device}"
    " --attn-implementation {params.attn_implementation}"
    " --seq {wildcards.seq} --batch {wildcards.batch}"
    " --gen-tokens {params.gen_tokens} --warmup {params.warmup} --reps {params.reps}"
    " --seed {params.seed} --threads {threads} --tokenizer {input.tokenizer:q}"
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
)
