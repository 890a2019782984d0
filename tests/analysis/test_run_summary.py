import json

from latency_sensitivity.analysis import run_summary


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_counts_and_names_each_failure(tmp_path, capsys):
    cells = tmp_path / "results" / "cells" / "m" / "fp32" / "eager"
    files = [
        write(cells / "seq16_batch1.json", {"status": "ok", "error": None}),
        write(cells / "seq16_batch2.json", {"status": "oom", "error": {"message": "OutOfMemoryError during decode: x"}}),
        write(cells / "seq16_batch4.json", {"status": "error",
                                            "error": {"message": "RuntimeError during prefill: bad\nmore lines"}}),
        write(cells / "seq16_batch8.json", "{ not json"),
        write(tmp_path / "results" / "loading" / "m" / "fp32" / "cpu.json", {"status": "error", "error": "OSError: gone"}),
        cells / "seq16_batch16.json",  # not measured
    ]
    summary = run_summary.read_results(files)
    text = summary.text()
    assert text.splitlines()[0] == "cells: 1 ok, 1 oom, 1 error"
    assert "model loading: 0 ok, 1 error" in text
    assert f"{cells / 'seq16_batch4.json'}: RuntimeError during prefill: bad\n" in text and "more lines" not in text
    assert f"{cells / 'seq16_batch2.json'}: OutOfMemoryError during decode: x" in text
    assert f"unreadable {cells / 'seq16_batch8.json'}: JSONDecodeError" in text
    assert "not measured: 1 cell" in text
    assert len(summary.errors) == 3 and "3 failed: the run exits non-zero" in text
    assert "allowed by the config" in summary.text(allow_errors=True)

    assert run_summary.main(["--results", str(tmp_path / "results")]) == 1
    assert run_summary.main(["--allow-errors", "--results", str(tmp_path / "results")]) == 0
    assert "cells: 1 ok, 1 oom, 1 error" in capsys.readouterr().out


def test_all_ok_and_oom_is_not_a_failure(tmp_path):
    cells = tmp_path / "cells" / "m" / "fp32" / "eager"
    files = [write(cells / f"seq{s}_batch1.json", {"status": "ok"}) for s in (16, 32)]
    files.append(write(cells / "seq64_batch1.json", {"status": "oom", "error": {"message": "OutOfMemoryError"}}))
    summary = run_summary.read_results(files)
    assert summary.text() == f"cells: 2 ok, 1 oom, 0 error\n  oom        {files[2]}: OutOfMemoryError\n"
    assert summary.errors == []
    assert run_summary.main([str(f) for f in files]) == 0
