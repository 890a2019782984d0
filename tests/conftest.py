import atexit
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# The tests' CPU compiles (and those of the processes they start) make scalar C++ kernels: inductor then skips its
# probe of the CPU's vector instructions, which builds test programs into each new inductor cache (about 9 s a
# process on 2 cores, and the tests give their compiles caches of their own). What the tests check is this
# package's compile paths (one graph, the kept, saved and loaded step, the paths inside it), not inductor's
# vectorized code. A setting of the caller's is kept.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "0")

# The test files that take longest (their pipelines and compiles; benchmarks/sweep_cost/NOTES.md, "On the CPU"),
# longest first. pytest-xdist's `--dist loadfile` hands each worker a whole file at a time in the collection's
# order: with these first, the two workers finish together instead of one running the longest file at the end
# while the other waits. (pytest-xdist 3.6 and newer otherwise order the files by their number of tests.)
LONGEST_FILES = ("workflow/test_rerun.py", "measure/test_worker.py", "engine/test_backends.py",
                 "workflow/test_profile_pipeline.py", "workflow/test_pipeline_e2e.py", "workflow/test_cli.py",
                 "engine/test_saved_step.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.path.relative_to(REPO / "tests").as_posix() if item.path.is_relative_to(REPO / "tests") else ""
        return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: the rest keep their order, each file's tests theirs


@pytest.fixture
def default_config() -> dict:
    with open(REPO / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


_SERVER: list[subprocess.Popen] = []


def _snakemake_server() -> subprocess.Popen:
    """This test process's snakemake_server.py (started on first use, ended when the process ends)."""
    if not _SERVER or _SERVER[0].poll() is not None:
        server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("snakemake_server.py"))],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        _SERVER[:] = [server]
        atexit.register(lambda: (server.stdin.close(), server.wait()))
    return _SERVER[0]


def run_snakemake(args: list[str], cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m snakemake ARGS` in `cwd` (default here), with this environment; its output captured, as
    subprocess.run does (a process of its own, forked by snakemake_server.py from one that has imported
    Snakemake already)."""
    server = _snakemake_server()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        server.stdin.write(json.dumps({"argv": args, "env": dict(os.environ), "cwd": str(cwd or os.getcwd()),
                                       "stdout": str(out), "stderr": str(err), "timeout": timeout}) + "\n")
        server.stdin.flush()
        answer = server.stdout.readline()
        if not answer:
            raise RuntimeError(f"snakemake_server.py ended (exit status {server.wait()})")
        returncode = json.loads(answer)["returncode"]
        return subprocess.CompletedProcess([sys.executable, "-m", "snakemake", *args], returncode,
                                           out.read_text(), err.read_text())


def snakemake(workdir: Path, *args: str, configfile: Path | None = None, check: bool = True):
    """Run the real snakemake on this repo's Snakefile in `workdir`."""
    cmd = ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    proc = run_snakemake(cmd + list(args))
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

