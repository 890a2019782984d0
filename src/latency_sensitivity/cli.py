"""`latency-sensitivity`: the reference study's command line, as a thin front of the Snakemake pipeline.

    latency-sensitivity sweep --model Qwen/Qwen2.5-3B-Instruct --dtype fp16 --device cuda \\
        --seq 128,256,512 --batch-sizes 1 --gen-tokens 32 --warmup 3 --reps 7 --collapse-factor 2 --out x.csv

writes a complete config into a work folder (by default beside --out), runs the same Snakefile there (so a
rerun measures only the cells that changed) and copies the sweep's CSV to --out. The work folder keeps the
per-cell results, plots and report. It ends with the run's summary (cells ok, oom, error) and exits 1 when a
cell failed with an error (its row is in the CSV all the same); an existing --out is replaced only with --force.

    latency-sensitivity failed-cells [--results results]   # cells that ran out of memory, failed or are unreadable
    latency-sensitivity columns                             # the metrics table (as in the README)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from latency_sensitivity import config as lsconfig
from latency_sensitivity import vocabulary
from latency_sensitivity.analysis import run_summary
from latency_sensitivity.atomic import write_text

SWEEP_NAME = "sweep"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _positive_int_list(text: str) -> list[int]:
    values = _int_list(text)
    bad = [v for v in values if v < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"every value must be at least 1, got {bad[0]} in {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a value is given twice in {text!r}")
    return values


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def _factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 1:
        raise argparse.ArgumentTypeError(f"must be greater than 1, got {text}")
    return value


# The config key each sweep flag sets (sweep_config), to speak of the flag in a message about the key.
FLAGS = (
    ("models.", "--model"),
    ("measure.models", "--model"),
    ("measure.dtypes", "--dtype"),
    ("measure.backends", "--backends"),
    ("measure.device", "--device"),
    ("measure.attn_implementation", "--attn-implementation"),
    ("measure.gen_tokens", "--gen-tokens"),
    ("measure.warmup", "--warmup"),
    ("measure.reps", "--reps"),
    ("measure.seed", "--seed"),
    ("measure.threads", "--threads"),
    ("measure.replicates", "--replicates"),
    ("measure.isolation", "--isolation"),
    ("measure.compile_shapes", "--compile-shapes"),
    ("measure.compiled_step", "--compiled-step"),
    ("collapse_factor", "--collapse-factor"),
    (f"sweeps.{SWEEP_NAME}.seq", "--seq"),
    (f"sweeps.{SWEEP_NAME}.batch", "--batch-sizes"),
    ("loading", "--loading"),
)


def flag_message(exc: lsconfig.ConfigError) -> str:
    """A config error as the user of the command line sees it: naming the flag instead of the config key."""
    key, text = exc.key, str(exc)
    if key is None:
        return text
    for prefix, flag in FLAGS:
        if key.startswith(prefix):
            return f"{flag}: {text.split(': ', 1)[1]}"
    return text


def check_out(out: Path, force: bool) -> str | None:
    """Why --out cannot be written (checked before anything is measured), or None."""
    if out.is_dir():
        return f"--out {out}: is a directory; give the CSV file to write"
    if out.exists() and not force:
        return f"--out {out}: exists; give --force to replace it, or another path"
    parent = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        return f"--out {out}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"--out {out}: cannot write in {parent}"
    return None


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def resolve_model_arg(model: str, repo_config: dict, root: Path | None = None) -> tuple[str, dict]:
    """--model as a local checkpoint folder, an architecture JSON, or a name/alias from config/config.yaml."""
    p = Path(model)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise lsconfig.ConfigError(f"--model {model!r}: folder has no config.json (not a local checkpoint)")
        return _safe_name(p.name), {"path": str(p.resolve())}
    if p.is_file() and p.suffix == ".json":
        return _safe_name(p.stem), {"architecture": str(p.resolve())}
    key = lsconfig.find_model_by_alias(repo_config, model)
    if key is None:
        known = sorted(set(repo_config["models"]) | {a for e in repo_config["models"].values() for a in e.get("aliases", [])})
        raise lsconfig.ConfigError(
            f"--model {model!r}: not a local checkpoint folder, an architecture JSON, or a model name or alias "
            f"of config/config.yaml (known: {', '.join(known)}). Nothing is downloaded."
        )
    entry = dict(repo_config["models"][key])
    if "architecture" in entry:
        entry["architecture"] = str(lsconfig.resolve_model(key, entry, root or Path.cwd()).location)
    elif not Path(entry["path"]).is_absolute():
        entry["path"] = str(((root or Path.cwd()) / entry["path"]).resolve())
    return key, entry


def _backend_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in vocabulary.BACKENDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"backends must be a comma-separated subset of "
                                         f"{', '.join(vocabulary.BACKENDS)} (got {text!r})")
    return list(dict.fromkeys(names))


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-")
    return name or "model"


def sweep_config(args: argparse.Namespace) -> dict:
    root = lsconfig.workflow_root(args.workflow)
    repo_config = lsconfig.load_yaml(root / "config" / "config.yaml")
    name, entry = resolve_model_arg(args.model, repo_config, root)
    return {
        "models": {name: entry},
        "measure": {
            "models": [name],
            "dtypes": [args.dtype],
            "backends": list(args.backends),
            "device": args.device or _default_device(),
            "attn_implementation": args.attn_implementation,
            "gen_tokens": args.gen_tokens,
            "warmup": args.warmup,
            "reps": args.reps,
            "seed": args.seed,
            "threads": args.threads,
            "replicates": args.replicates,
            "isolation": args.isolation,
            "compile_shapes": args.compile_shapes,
            "compiled_step": args.compiled_step,
        },
        "collapse_factor": args.collapse_factor,
        "loading": {"enabled": bool(args.loading)},
        "sweeps": {SWEEP_NAME: {"seq": args.seq, "batch": args.batch_sizes}},
    }


def cmd_sweep(args: argparse.Namespace) -> int:
    out = Path(args.out)
    workdir = Path(args.workdir) if args.workdir else out.parent / f"{out.stem}.work"
    problem = None if args.dry_run else check_out(out, args.force)
    try:
        if problem:
            raise lsconfig.ConfigError(problem)
        cfg = sweep_config(args)
        checked = lsconfig.validate(json.loads(json.dumps(cfg)), base_dir=workdir)
        if not args.dry_run:
            lsconfig.check_device(cfg["measure"]["device"], key="--device")
    except lsconfig.ConfigError as exc:
        print(f"latency-sensitivity: {flag_message(exc)}", file=sys.stderr)
        return 2
    config_path = workdir / "config" / "config.yaml"
    write_text(config_path, yaml.safe_dump(cfg, sort_keys=False))
    produced = workdir / "results" / SWEEP_NAME / "sweep.csv"
    report = workdir / "results" / "report.md"
    cmd = [
        sys.executable, "-m", "snakemake", "--snakefile", str(lsconfig.workflow_root(args.workflow) / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(config_path.resolve()), "--cores", str(args.cores),
    ]
    if args.dry_run:
        cmd.append("--dry-run")
    # The sweep's products rather than `all`: the summary and the exit status for failed cells come from here.
    cmd += [str(produced.relative_to(workdir)), str(report.relative_to(workdir))]
    print("running:", " ".join(cmd), file=sys.stderr)
    rc = subprocess.call(cmd)
    if rc != 0 or args.dry_run:
        return rc
    write_text(out, produced.read_text())
    print(f"wrote {out} (report: {report})", file=sys.stderr)
    results = [workdir / cell.path for cell in lsconfig.all_cells(checked)]
    if checked["loading"]["enabled"]:
        results += [workdir / f"results/loading/{m}/{d}/{checked['measure']['device']}.json"
                    for m in checked["measure"]["models"] for d in checked["measure"]["dtypes"]]
    summary = run_summary.read_results(results)
    print(summary.text(), end="", file=sys.stderr)
    return 1 if summary.errors else 0


def failed_cells(results: Path) -> list[tuple[Path, str]]:
    """Result files to measure again, with why: a cell's status (oom, error) or `unreadable: <problem>`."""
    from latency_sensitivity.analysis.merge import UnreadableCell, read_cell

    out = []
    for path in sorted(results.glob("cells/**/*.json")):
        try:
            status = read_cell(path)["status"]
        except UnreadableCell as exc:
            status = f"unreadable: {exc.problem}"
        if status != "ok":
            out.append((path, status))
    return out


def cmd_failed_cells(args: argparse.Namespace) -> int:
    """The paths on stdout (for `snakemake --forcerun $(latency-sensitivity failed-cells)`); an unreadable
    file's problem also on stderr (a failed cell's error is in its file)."""
    for path, status in failed_cells(Path(args.results)):
        if status.startswith("unreadable"):
            print(f"{path}: {status}", file=sys.stderr)
        print(path)
    return 0


def cmd_columns(args: argparse.Namespace) -> int:
    from latency_sensitivity.columns import markdown_table

    print(markdown_table(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latency-sensitivity", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="measure a seq_len x batch grid and write its CSV")
    s.add_argument("--model", required=True, help="local checkpoint folder, architecture JSON, or a name/alias")
    s.add_argument("--dtype", choices=vocabulary.DTYPES, default="fp16")
    s.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    s.add_argument("--seq", type=_positive_int_list, required=True, help="comma-separated prompt lengths")
    s.add_argument("--batch-sizes", type=_positive_int_list, default=[1], help="comma-separated batch sizes")
    s.add_argument("--backends", type=_backend_list, default=["eager"],
                   help=f"comma-separated (eager is the reference study's setup): {vocabulary.describe()}")
    s.add_argument("--loading", action="store_true",
                   help="also measure model loading stage by stage (writes the model's random weights once as a "
                        "safetensors checkpoint in the work folder: about 2 bytes per parameter in fp16)")
    s.add_argument("--gen-tokens", type=_int_at_least(2), default=32, help="tokens generated per sequence (>= 2)")
    s.add_argument("--warmup", type=_int_at_least(0), default=3)
    s.add_argument("--reps", type=_int_at_least(1), default=7)
    s.add_argument("--replicates", type=_int_at_least(1), default=3,
                   help="separate processes each cell is measured in (its value: the median of their medians)")
    s.add_argument("--isolation", choices=vocabulary.ISOLATIONS, default="process",
                   help="process: every cell in a process of its own (default); shared: the cells handed to one "
                        "measurement worker per replicate; forked: shared, the workers forked after the imports "
                        "(Linux); config key measure.isolation")
    s.add_argument("--compile-shapes", choices=vocabulary.COMPILE_SHAPES, default="dynamic_batch",
                   help="the compiled backend's step once with the batch dynamic (dynamic_batch, default) or per "
                        "batch size (static); config key measure.compile_shapes")
    s.add_argument("--compiled-step", choices=vocabulary.COMPILED_STEPS, default="saved",
                   help="the compiled backend's step compiled once, saved under results/cache/compile/ and loaded "
                        "by later processes (saved, default) or traced in each process (traced); config key "
                        "measure.compiled_step")
    s.add_argument("--collapse-factor", type=_factor, default=2.0)
    s.add_argument("--seed", type=_int_at_least(0), default=0)
    s.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    s.add_argument("--threads", type=_int_at_least(1), default=1, help="CPU threads of a measurement")
    s.add_argument("--cores", type=_int_at_least(1), default=1, help="snakemake --cores")
    s.add_argument("--workflow", type=Path, help="the latency-sensitivity checkout whose workflow runs the sweep "
                   "(default: the one the package is installed from, else the working directory or a folder above)")
    s.add_argument("--out", required=True, help="CSV to write (an existing file only with --force)")
    s.add_argument("--force", action="store_true", help="replace --out when it exists")
    s.add_argument("--workdir", help="where the pipeline runs (default: <out>.work beside --out)")
    s.add_argument("--dry-run", action="store_true", help="show what would be measured")
    s.set_defaults(func=cmd_sweep)

    f = sub.add_parser("failed-cells", help="list result files of cells that ran out of memory, failed or cannot be read (why: on stderr)")
    f.add_argument("--results", default="results")
    f.set_defaults(func=cmd_failed_cells)

    c = sub.add_parser("columns", help="print the metrics table")
    c.set_defaults(func=cmd_columns)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
