# Config validation, cell enumeration and input functions shared by every rule.

from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The workflow and its jobs run the package from this checkout, whatever else is installed.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from latency_sensitivity import config as lsconfig  # noqa: E402

lsconfig.use_source_tree(SRC)

# Checked before any job starts. Our checks come first: their messages name the key and the value, and
# they cover what a schema cannot (model files exist, sequences fit the model's positions).
try:
    lsconfig.validate(config, base_dir=".")
except lsconfig.ConfigError as exc:
    raise WorkflowError(f"invalid configuration: {exc}")
validate(config, workflow.source_path("../schemas/config.schema.yaml"))

MEASURE = config["measure"]
SWEEPS = list(config["sweeps"])
MODEL_SOURCES = {
    name: lsconfig.resolve_model(name, config["models"][name], ".") for name in MEASURE["models"]
}
CELLS = lsconfig.all_cells(config)


wildcard_constraints:
    model="[A-Za-z0-9][A-Za-z0-9._-]*",
    dtype="fp32|fp16|bf16",
    backend="eager",
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
    figures = [f"results/{sweep}/combined.png"]
    if lsconfig.sweep_axis(config, sweep) == "grid":
        figures.append(f"results/{sweep}/heatmap.png")
    return figures


def all_targets():
    targets = []
    for sweep in SWEEPS:
        targets.append(f"results/{sweep}/sweep.csv")
        targets.extend(sweep_figures(sweep))
    targets.append("results/report.md")
    return targets


# The runner's command line: the measure rule runs it; a profiler rule is meant to wrap this same line.
RUNNER = (
    "python3 -m latency_sensitivity.runner"
    " --model {wildcards.model} --model-kind {params.model_kind} --model-location {params.model_location:q}"
    " --dtype {wildcards.dtype} --backend {wildcards.backend} --device {params.device}"
    " --attn-implementation {params.attn_implementation}"
    " --seq {wildcards.seq} --batch {wildcards.batch}"
    " --gen-tokens {params.gen_tokens} --warmup {params.warmup} --reps {params.reps}"
    " --seed {params.seed} --threads {threads}"
)
