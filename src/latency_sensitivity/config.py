"""Configuration: schema validation with messages that name the key, model resolution, cell enumeration.

Used by the workflow (workflow/rules/common.smk) before any job starts, and by the command-line front.
"""

from __future__ import annotations

import difflib
import json
import jsonschema
import os
import sys
import yaml
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from latency_sensitivity.vocabulary import ARCHITECTURE_SUMMARY, Cell


# The schema and the shipped model architectures are package data (the workflow's workflow/schemas/ and
# config/models/ link to them), so that validation and model names work wherever the package is installed.
DATA_DIR = Path(__file__).resolve().parent / "data"
SCHEMA_PATH = DATA_DIR / "config.schema.yaml"
MODELS_DIR = DATA_DIR / "models"


def workflow_root(start: Path | str | None = None) -> Path:
    """The checkout whose Snakefile runs the sweeps: the one this package lives in when it is installed from a
    checkout (editable), else the first folder with a Snakefile and workflow/ from `start` (default: the
    working directory) upwards."""
    candidates = [Path(__file__).resolve().parents[2]]
    here = Path(start or Path.cwd()).resolve()
    candidates += [here, *here.parents]
    for folder in candidates:
        if (folder / "Snakefile").is_file() and (folder / "workflow" / "rules").is_dir():
            return folder
    raise ConfigError(f"no latency-sensitivity workflow (a Snakefile beside workflow/rules/) in {here} or above it; "
                      "run the command inside a checkout of the project or pass --workflow DIR")


class ConfigError(ValueError):
    """A configuration value that cannot be run. The message names the key and the value."""

    @property
    def key(self) -> str | None:
        """The config key the message names (`measure.reps`, `sweeps.s.seq[0]`), if it names one."""
        text = str(self)
        if text.startswith("config key "):
            return text[len("config key "):].split(":", 1)[0].split(" ", 1)[0]
        return None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error, not last-one-wins."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"duplicate key {key!r} (first given at line {first.line + 1}); a second value would "
                        f"silently replace the first",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def load_yaml(path: str | os.PathLike) -> dict:
    """A config file (YAML or JSON) as a dict. ConfigError naming the file and the line on a syntax error or
    a duplicate key, and when the file cannot be read or is not a mapping."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_StrictLoader)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"config file {path}{where}: {what}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of config keys "
                          f"(found {type(data).__name__})")
    return data


def _typed(value: Any) -> Any:
    """A --config value with its strings read as YAML scalars (Snakemake leaves nested values as strings)."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, str):
        try:
            return yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            return value
    return value


def _merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def command_line_overrides(overrides: dict) -> dict:
    """`snakemake --config key=value` values, typed: `measure='{reps: 5}'` gives measure.reps the integer 5.

    ConfigError for a value that looks like a YAML mapping or list but does not parse (Snakemake would then
    replace the whole section by that string).
    """
    out = {}
    for key, value in overrides.items():
        if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
            try:
                yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(
                    f"config key {key}: --config {key}={value!r} is not valid YAML ({exc.problem or exc}); write "
                    f"nested values in YAML flow style, e.g. --config measure='{{reps: 5}}', or put them in a file "
                    f"given with --configfile"
                ) from None
        out[key] = _typed(value)
    return out


def validate_workflow(config: dict, workflow) -> dict:
    """What the workflow checks before any job starts (workflow/rules/common.smk), on Snakemake's `config`.

    The config files are read again strictly (duplicate keys, with file and line), `--config` values are typed
    (Snakemake passes nested ones as strings), the config is validated, and on a local run the measurement
    device is checked: CUDA present, and at least `--resources gpu=N` devices of it.
    """
    for path in workflow.configfiles:
        load_yaml(path)
    _merge(config, command_line_overrides(dict(workflow.config_settings.config)))
    validate(config, base_dir=".")
    if getattr(workflow, "local_exec", True) and getattr(workflow, "is_main_process", True):
        gpus = workflow.global_resources.get("gpu")
        check_device(config["measure"]["device"], getattr(gpus, "value", gpus))
    return config


def check_device(device: str, gpus: int | None = None, key: str = "config key measure.device") -> None:
    """The measurement device exists here: with `cuda`, torch sees a CUDA device, and at least `gpus` of them.

    torch is imported only for `cuda` (it takes a second or two).
    """
    if device != "cuda":
        return
    try:
        import torch
    except ImportError as exc:
        raise ConfigError(f"{key}: 'cuda' needs torch, which cannot be imported here ({exc})") from exc
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key}: torch sees no CUDA device on this machine (value: 'cuda'; torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}); measure on the CPU (cpu) or on a machine with a GPU"
        )
    count = torch.cuda.device_count()
    if isinstance(gpus, int) and gpus > count:
        raise ConfigError(
            f"resources gpu={gpus}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); give --resources gpu={count} "
            f"or fewer"
        )


def _key(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def load_schema(schema_path: Path | str = SCHEMA_PATH) -> dict:
    with open(schema_path) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(config: dict, schema: dict) -> None:
    """Set the schema's defaults for absent keys (what Snakemake's validate does with set_default)."""
    for key, sub in schema.get("properties", {}).items():
        if key not in config and "default" in sub:
            config[key] = sub["default"]
        if isinstance(config.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(config[key], sub)


def _unknown_key(err) -> ConfigError | None:
    """For an additionalProperties failure: name the unknown key and suggest the nearest known one."""
    allowed = list(err.schema.get("properties", {}))
    if not allowed or not isinstance(err.instance, dict):
        return None
    unknown = [k for k in err.instance if k not in allowed]
    if not unknown:
        return None
    key = unknown[0]
    full = _key([*err.absolute_path, key])
    near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    hint = f"did you mean {_key([*err.absolute_path, near[0]])}? " if near else ""
    return ConfigError(f"config key {full}: not a known key ({hint}known here: {', '.join(allowed)})")


def check_schema(config: dict, schema_path: Path | str = SCHEMA_PATH) -> None:
    """Raise ConfigError naming the offending key and value for the first schema violation."""
    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        # An unknown key first: it is often a required one misspelled, and its message suggests the right one.
        for err in errors:
            unknown = _unknown_key(err) if err.validator == "additionalProperties" else None
            if unknown is not None:
                raise unknown
        err = jsonschema.exceptions.best_match(errors)
        if err.validator == "required" and isinstance(err.instance, dict):
            missing = [k for k in err.validator_value if k not in err.instance]
            raise ConfigError(f"config key {_key([*err.absolute_path, missing[0]])}: required, but not given")
        # A oneOf failure's own message dumps the whole object; say what the alternatives are instead.
        if err.validator == "oneOf" and err.absolute_path and err.absolute_path[0] == "models":
            msg = "give exactly one of `architecture` (random weights) or `path` (a local checkpoint)"
        else:
            msg = err.message
        raise ConfigError(f"config key {_key(err.absolute_path)}: {msg} (value: {err.instance!r})")
    _fill_defaults(config, schema)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: an architecture JSON (random weights) or a local checkpoint folder."""

    name: str
    kind: str  # "architecture" | "path"
    location: Path

    @property
    def config_json(self) -> Path:
        return self.location if self.kind == "architecture" else self.location / "config.json"

    def architecture(self) -> dict:
        with open(self.config_json) as fh:
            return json.load(fh)


def resolve_model(name: str, entry: dict, base_dir: Path | str = ".") -> ModelSource:
    """Turn a `models` entry into a ModelSource, checking that its files exist."""
    base = Path(base_dir)
    if "architecture" in entry:
        value = entry["architecture"]
        candidates = [base / value, Path(value)]
        if not value.endswith(".json"):
            candidates.append(MODELS_DIR / f"{value}.json")
        for c in candidates:
            if c.is_file():
                return ModelSource(name, "architecture", c.resolve())
        raise ConfigError(
            f"config key models.{name}.architecture: no such architecture file (value: {value!r}; "
            f"looked for it as a path and in {MODELS_DIR})"
        )
    value = entry["path"]
    p = Path(value) if Path(value).is_absolute() else base / value
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"config key models.{name}.path: not a local checkpoint folder with a config.json (value: {value!r})"
        )
    return ModelSource(name, "path", p.resolve())


WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


def check_checkpoint(name: str, source: ModelSource) -> None:
    """A local checkpoint folder holds readable weights (safetensors or PyTorch .bin files)."""
    if source.kind != "path":
        return
    key = f"config key models.{name}.path"
    weights = [f for pattern in WEIGHT_PATTERNS for f in source.location.glob(pattern)]
    if not weights:
        raise ConfigError(f"{key}: {source.location} has no weights ({', '.join(WEIGHT_PATTERNS)}) "
                          f"(value: {str(source.location)!r})")
    for f in [source.config_json, *weights]:
        if not os.access(f, os.R_OK):
            raise ConfigError(f"{key}: {f} is not readable (value: {str(source.location)!r})")


def max_positions(arch: dict) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(arch.get(key), int):
            return arch[key]
    return None


def validate(config: dict, base_dir: Path | str = ".", schema_path: Path | str = SCHEMA_PATH) -> dict:
    """Check a config completely (schema + semantics), fill defaults, and return it.

    Raises ConfigError with the key and the value on the first problem.
    """
    check_schema(config, schema_path)
    models = config["models"]
    measure = config["measure"]
    if measure.get("isolation") == "forked" and not sys.platform.startswith("linux"):
        raise ConfigError(f"config key measure.isolation: forked needs Linux (its fork server forks workers and "
                          f"reads /proc; this is {sys.platform}): use shared (value: 'forked')")
    for i, name in enumerate(measure["models"]):
        if name not in models:
            raise ConfigError(
                f"config key measure.models[{i}]: unknown model (value: {name!r}; defined: {sorted(models)})"
            )
    for name in measure["models"]:
        limit = max_positions(_architecture(name, models[name], base_dir))
        for sweep_name, sweep in config["sweeps"].items():
            for i, seq in enumerate(sweep["seq"]):
                _check_fits(f"sweeps.{sweep_name}.seq[{i}]", seq, measure["gen_tokens"], name, limit)
    tokenizer = config.get("tokenizer", {}).get("path")
    if tokenizer is not None:
        from latency_sensitivity.vocabulary import tokenizer_file

        given = Path(tokenizer)
        found = tokenizer_file(given if given.is_absolute() else Path(base_dir) / given)
        if not found.is_file():
            raise ConfigError(f"config key tokenizer.path: no tokenizer.json at {found} (value: {tokenizer!r})")
        if not os.access(found, os.R_OK):
            raise ConfigError(f"config key tokenizer.path: {found} is not readable (value: {tokenizer!r})")
    study = config.get("reference_study")
    if study:
        if study["model"] not in models:
            raise ConfigError(f"config key reference_study.model: unknown model (value: {study['model']!r}; "
                              f"defined: {sorted(models)})")
        csv_path = Path(study["csv"])
        if not (csv_path if csv_path.is_absolute() else Path(base_dir) / csv_path).is_file():
            raise ConfigError(f"config key reference_study.csv: no such file (value: {study['csv']!r})")
    for i, other in enumerate(config.get("compare_devices", [])):
        if not compare_device_sweeps(other, config["sweeps"], base_dir):
            raise ConfigError(f"config key compare_devices[{i}].results: no sweep.csv of this config's sweeps "
                              f"({', '.join(config['sweeps'])}) under {other['results']!r}")
    for i, entry in enumerate(config.get("profile", {}).get("cells", [])):
        cell = _profile_cell(config, entry)
        key = f"profile.cells[{i}]"
        if cell.model not in models:
            raise ConfigError(f"config key {key}.model: unknown model (value: {cell.model!r}; defined: {sorted(models)})")
        limit = max_positions(_architecture(cell.model, models[cell.model], base_dir))
        _check_fits(f"{key}.seq", cell.seq, measure["gen_tokens"], cell.model, limit)
    return config


def compare_device_folder(other: dict, base_dir: Path | str = ".") -> Path:
    """A compare_devices entry's results folder (relative to base_dir unless absolute)."""
    folder = Path(other["results"])
    return folder if folder.is_absolute() else Path(base_dir) / folder


def compare_device_sweeps(other: dict, sweeps: Iterable[str], base_dir: Path | str = ".") -> dict[str, Path]:
    """The sweep tables a compare_devices entry holds for these sweeps: {sweep name: its sweep.csv}."""
    folder = compare_device_folder(other, base_dir)
    return {s: folder / s / "sweep.csv" for s in sweeps if (folder / s / "sweep.csv").is_file()}


def _architecture(name: str, entry: dict, base_dir: Path | str) -> dict:
    """A configured model's architecture (config.json); ConfigError naming the key when it cannot be read."""
    source = resolve_model(name, entry, base_dir)
    check_checkpoint(name, source)
    try:
        arch = source.architecture()
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config key models.{name}: cannot read {source.config_json}: {exc}") from exc
    if "model_type" not in arch:
        raise ConfigError(f"config key models.{name}: {source.config_json} has no model_type")
    check_architecture(f"models.{name}", source.config_json, arch)
    return arch


def _arch_int(arch: dict, *names: str) -> tuple[str, Any] | None:
    """The first of these architecture keys that is set (transformers' names differ between model types)."""
    for n in names:
        if arch.get(n) is not None:
            return n, arch[n]
    return None


def check_architecture(key: str, source: Path | str, arch: dict) -> None:
    """The shapes a model is built with fit together: attention heads divide the hidden size (unless the
    architecture sets head_dim), key/value heads divide the attention heads, every size is a positive integer."""
    found = {
        "hidden": _arch_int(arch, "hidden_size", "n_embd", "d_model"),
        "heads": _arch_int(arch, "num_attention_heads", "n_head", "num_heads"),
        "kv": _arch_int(arch, "num_key_value_heads", "num_kv_heads"),
        "layers": _arch_int(arch, "num_hidden_layers", "n_layer", "num_layers"),
        "head_dim": _arch_int(arch, "head_dim"),
    }
    for item in found.values():
        if item is not None and (not isinstance(item[1], int) or isinstance(item[1], bool) or item[1] < 1):
            raise ConfigError(f"config key {key}: {source}: {item[0]} must be a positive integer (value: {item[1]!r})")
    hidden, heads, kv = found["hidden"], found["heads"], found["kv"]
    if hidden and heads and found["head_dim"] is None and hidden[1] % heads[1]:
        raise ConfigError(f"config key {key}: {source}: {heads[0]} {heads[1]} does not divide {hidden[0]} "
                          f"{hidden[1]} (value: {heads[1]})")
    if heads and kv and heads[1] % kv[1]:
        raise ConfigError(f"config key {key}: {source}: {kv[0]} {kv[1]} does not divide {heads[0]} {heads[1]} "
                          f"(value: {kv[1]})")


def _check_fits(key: str, seq: int, gen_tokens: int, model: str, limit: int | None) -> None:
    if limit is not None and seq + gen_tokens > limit:
        raise ConfigError(f"config key {key}: seq {seq} + gen_tokens {gen_tokens} exceeds model {model!r}'s max "
                          f"positions {limit} (value: {seq})")


def _profile_cell(config: dict, entry: dict) -> Cell:
    m = config["measure"]
    return Cell(entry.get("model", m["models"][0]), entry.get("dtype", m["dtypes"][0]),
                entry.get("backend", m["backends"][0]), entry["seq"], entry["batch"])


def profile_cells(config: dict) -> list[Cell]:
    """The cells of profile.cells, defaults filled in, each once."""
    seen: dict[Cell, None] = {}
    for entry in config.get("profile", {}).get("cells", []):
        seen.setdefault(_profile_cell(config, entry), None)
    return list(seen)


def sweep_cells(config: dict, sweep: str) -> list[Cell]:
    m = config["measure"]
    s = config["sweeps"][sweep]
    return [
        Cell(model, dtype, backend, seq, batch)
        for model in m["models"]
        for dtype in m["dtypes"]
        for backend in m["backends"]
        for batch in s["batch"]
        for seq in s["seq"]
    ]


def all_cells(config: dict) -> list[Cell]:
    seen: dict[Cell, None] = {}
    for sweep in config["sweeps"]:
        for cell in sweep_cells(config, sweep):
            seen.setdefault(cell, None)
    return list(seen)


def sweep_axis(config: dict, sweep: str) -> str:
    """'seq_len' when only seq varies, 'batch' when only batch varies, 'grid' when both do."""
    s = config["sweeps"][sweep]
    if len(s["seq"]) > 1 and len(s["batch"]) > 1:
        return "grid"
    if len(s["batch"]) > 1:
        return "batch"
    return "seq_len"


def find_model_by_alias(config: dict, name: str) -> str | None:
    """The `models` key matching a name or one of its aliases."""
    for key, entry in config["models"].items():
        if name == key or name in entry.get("aliases", []):
            return key
    return None


def settings_summary(config: dict) -> dict:
    """What the report's Settings take from the config: what no cell records (collapse_factor) and each measured
    model's architecture as configured. Every measurement setting (dtypes, backends, device, gen_tokens, warmup,
    reps, seed, threads, ...) and the architecture the cells were built from come from the cells' own records
    (report.cell_settings), so the report cannot show a value the cells were not measured with."""
    models = {}
    for name in config["measure"]["models"]:
        source = resolve_model(name, config["models"][name], ".")
        arch = source.architecture()
        summary = {k: arch[k] for k in ARCHITECTURE_SUMMARY if k in arch}
        summary["weights"] = "random (from architecture)" if source.kind == "architecture" else f"local: {source.location}"
        models[name] = summary
    return {"models": models, "collapse_factor": config["collapse_factor"]}


def use_source_tree(src: str) -> None:
    """Put a checkout's package first on PYTHONPATH, so that jobs (subprocesses) import the same code."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    os.environ["PYTHONPATH"] = os.pathsep.join([src, *parts])
