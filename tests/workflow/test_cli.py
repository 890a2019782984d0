"""The sweep command's checks before anything is measured, and its end: summary and exit status."""

import pandas as pd
import pytest
import torch

from latency_sensitivity import cli

BASE = ["sweep", "--model", "tiny-qwen2", "--dtype", "fp32", "--device", "cpu", "--seq", "16",
        "--gen-tokens", "3", "--warmup", "0", "--reps", "1", "--replicates", "1"]


@pytest.mark.parametrize(
    "args, flag, text",
    [
        (["--batch-sizes", "-1"], "argument --batch-sizes", "at least 1, got -1"),
        (["--seq", "0"], "argument --seq", "at least 1, got 0"),
        (["--seq", "16,16"], "argument --seq", "given twice"),
        (["--gen-tokens", "1"], "argument --gen-tokens", "at least 2"),
        (["--reps", "0"], "argument --reps", "at least 1"),
        (["--collapse-factor", "1"], "argument --collapse-factor", "greater than 1"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path, capsys, args, flag, text):
    with pytest.raises(SystemExit):
        cli.main([*BASE, "--out", str(tmp_path / "x.csv"), *args])
    err = capsys.readouterr().err
    assert flag in err and text in err and "config key" not in err
    assert not (tmp_path / "x.work").exists()


def test_config_errors_are_told_by_flag(tmp_path, capsys):
    rc = cli.main([*BASE, "--seq", "5000", "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "--seq: seq 5000" in err and "config key" not in err
    assert not (tmp_path / "x.work").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_cuda_stops_before_measuring(tmp_path, capsys):
    rc = cli.main([*BASE, "--device", "cuda", "--out", str(tmp_path / "x.csv")])
    assert rc == 2 and "--device: torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.work").exists()


def test_out_is_checked_before_measuring(tmp_path, capsys):
    assert cli.main([*BASE, "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    existing = tmp_path / "old.csv"
    existing.write_text("keep me\n")
    assert cli.main([*BASE, "--out", str(existing)]) == 2
    assert "exists; give --force" in capsys.readouterr().err
    assert existing.read_text() == "keep me\n" and not (tmp_path / "old.work").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main([*BASE, "--out", str(blocker / "x.csv")]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.e2e
def test_error_cells_still_write_the_csv_then_fail_the_command(tmp_path, capsys):
    """A cell that fails at run time (flash_attention_2 is not installed on the CPU) is a row of the CSV and
    the report; the command lists it in its summary and exits 1. --force replaces an existing CSV."""
    out = tmp_path / "x.csv"
    out.write_text("old\n")
    rc = cli.main([*BASE, "--attn-implementation", "flash_attention_2", "--out", str(out), "--force"])
    err = capsys.readouterr().err
    assert rc == 1
    df = pd.read_csv(out)
    assert list(df["seq_len"]) == [16] and list(df["flag"]) == ["error"]
    assert "cells: 0 ok, 0 oom, 1 error" in err and "seq16_batch1.json: replicate 1: ImportError during model_build" in err
    assert err.rindex("cells: 0 ok") > err.rindex(f"wrote {out}")  # the summary is the last word
    assert (tmp_path / "x.work" / "results" / "report.md").is_file()
