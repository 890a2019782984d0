"""The package's layers (pyproject.toml, [tool.importlinter]): a layer imports only the layers below it, analysis
and report import no torch and nothing of the engine or the measurement, and no modules import each other."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: install the test extra (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 3


def test_no_module_is_much_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in (REPO / "src").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 520}
    assert not long, long
