import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_config() -> dict:
    with open(REPO / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def snakemake(workdir: Path, *args: str, configfile: Path | None = None, check: bool = True):
    """Run the real snakemake on this repo's Snakefile in `workdir`."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def job_outputs(proc, rule: str) -> list[str]:
    """The outputs of the jobs of `rule` in the order Snakemake printed them (a run: the order it started them)."""
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:\s+input: .*\n)?\s+output: (.+)$", proc.stdout + proc.stderr, re.M)
    return [path for name, outputs in jobs if name == rule for path in outputs.split(", ")]


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def small_config(default: dict, **measure) -> dict:
    """The default config shrunk for fast tests."""
    cfg = {k: v for k, v in default.items()}
    cfg["measure"] = dict(default["measure"], gen_tokens=3, warmup=0, reps=2, **measure)
    # a smaller tokenizer trains in a tenth of the default's time; the texts a cell times still fit its shape
    cfg["tokenizer"] = dict(default["tokenizer"], vocab_size=2000, corpus_chars=200_000)
    cfg["sweeps"] = {
        "seq_sweep": {"seq": [16, 32, 64], "batch": [1]},
        "batch_sweep": {"seq": [16], "batch": [1, 2, 4]},
        "grid": {"seq": [16, 32], "batch": [1, 2]},  # adds one cell (seq32 x batch2); the rest are shared
    }
    return cfg


TINY_ARCHITECTURE = str(REPO / "config" / "models" / "tiny-qwen2.json")


def cell_spec(**kw):
    """A runner CellSpec of the tiny default model on the CPU; keywords override the defaults."""
    from latency_sensitivity.measure.model import CellSpec

    base = dict(model="tiny", model_kind="architecture", model_location=TINY_ARCHITECTURE, dtype="fp32",
                backend="eager", device="cpu", attn_implementation="sdpa", seq_len=8, batch=2, gen_tokens=4,
                warmup=1, reps=3, seed=0, threads=1)
    base.update(kw)
    return CellSpec(**base)

