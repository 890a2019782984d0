import shutil
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


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def small_config(default: dict, **measure) -> dict:
    """The default config shrunk for fast tests."""
    cfg = {k: v for k, v in default.items()}
    cfg["measure"] = dict(default["measure"], gen_tokens=3, warmup=0, reps=2, **measure)
    cfg["sweeps"] = {
        "seq_sweep": {"seq": [16, 32, 64], "batch": [1]},
        "batch_sweep": {"seq": [16], "batch": [1, 2, 4]},
        "grid": {"seq": [16, 32], "batch": [1, 2]},  # adds one cell (seq32 x batch2); the rest are shared
    }
    return cfg
