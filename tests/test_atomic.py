import json

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
