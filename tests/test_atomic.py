import json
import os
import stat

import pytest

from latency_sensitivity import atomic


def test_write_json_keeps_old_file_on_failure(tmp_path):
    out = tmp_path / "a.json"
    atomic.write_json(out, {"x": 1})
    with pytest.raises(TypeError):
        atomic.write_json(out, {"x": object()})
    assert json.loads(out.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_write_text_creates_parents(tmp_path):
    out = tmp_path / "deep" / "er" / "f.txt"
    atomic.write_text(out, "hello")
    assert out.read_text() == "hello"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_respect_the_umask(tmp_path, umask):
    """An atomically written file has the mode a plain open() would give it, not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        assert atomic.current_umask() == umask
        atomic.write_text(tmp_path / "a.txt", "x")
        atomic.write_json(tmp_path / "b.json", {"x": 1})
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for name in ("a.txt", "b.json", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_a_path_writer_replaces_the_file_whole_or_leaves_it(tmp_path):
    """replacing(): a writer that takes a path (a library's save function) replaces the file when it finishes, and
    where it fails the old file stays and nothing is left beside it."""
    out = tmp_path / "step.bin"
    with atomic.replacing(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        tmp.write_bytes(b"first")
    with pytest.raises(RuntimeError), atomic.replacing(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert out.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["step.bin"]
