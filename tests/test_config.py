import copy
import json

import pytest

from latency_sensitivity import config as lsconfig
from latency_sensitivity.config import ConfigError

from conftest import REPO


def check(cfg):
    return lsconfig.validate(copy.deepcopy(cfg), base_dir=".")


def test_default_config_is_valid_and_defaults_are_filled(default_config):
    cfg = copy.deepcopy(default_config)
    del cfg["measure"]["seed"]
    out = check(cfg)
    assert out["measure"]["seed"] == 0
    assert lsconfig.sweep_axis(out, "seq_sweep") == "seq_len"
    assert lsconfig.sweep_axis(out, "batch_sweep") == "batch"


@pytest.mark.parametrize(
    "mutate, key, value",
    [
        (lambda c: c["sweeps"]["seq_sweep"]["seq"].__setitem__(0, 0), "sweeps.seq_sweep.seq[0]", "0"),
        (lambda c: c["sweeps"]["batch_sweep"]["batch"].__setitem__(1, -1), "sweeps.batch_sweep.batch[1]", "-1"),
        (lambda c: c["measure"].__setitem__("dtypes", ["fp8"]), "measure.dtypes[0]", "'fp8'"),
        (lambda c: c["measure"].__setitem__("device", "tpu"), "measure.device", "'tpu'"),
        (lambda c: c["measure"].__setitem__("backends", ["eager", "tensorrt"]), "measure.backends[1]", "'tensorrt'"),
        (lambda c: c["measure"].__setitem__("reps", 0), "measure.reps", "0"),
        (lambda c: c.__setitem__("collapse_factor", 1), "collapse_factor", "1"),
        (lambda c: c.__setitem__("collapse_factor", 0.5), "collapse_factor", "0.5"),
        (lambda c: c["measure"].__setitem__("gen_tokens", 1), "measure.gen_tokens", "1"),
        (lambda c: c["measure"].__setitem__("models", ["nope"]), "measure.models[0]", "'nope'"),
        (lambda c: c["models"]["tiny-qwen2"].__setitem__("architecture", "missing-arch"),
         "models.tiny-qwen2.architecture", "'missing-arch'"),
        (lambda c: c["sweeps"]["seq_sweep"]["seq"].append(4090), "sweeps.seq_sweep.seq[5]", "4090"),
        (lambda c: c.__setitem__("bogus", 1), "config key bogus", "not a known key"),
        (lambda c: c.pop("sweeps"), "config key sweeps", "required, but not given"),
        (lambda c: c.__setitem__("sweps", c.pop("sweeps")), "config key sweps", "did you mean sweeps?"),
        (lambda c: c["measure"].__setitem__("rep", 5), "config key measure.rep", "did you mean measure.reps?"),
        (lambda c: c["sweeps"]["seq_sweep"].__setitem__("batches", [1]), "sweeps.seq_sweep.batches",
         "did you mean sweeps.seq_sweep.batch?"),
        (lambda c: c["tokenizer"].__setitem__("path", "no/such/tokenizer.json"), "tokenizer.path",
         "'no/such/tokenizer.json'"),
    ],
)
def test_bad_values_name_key_and_value(default_config, mutate, key, value):
    cfg = copy.deepcopy(default_config)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        check(cfg)
    assert key in str(err.value)
    assert value in str(err.value)


def test_graph_backend_is_a_valid_backend_with_its_own_cells(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["measure"]["backends"] = ["eager", "graph"]
    cells = lsconfig.all_cells(check(cfg))
    assert {c.backend for c in cells} == {"eager", "graph"}
    assert "results/cells/tiny-qwen2/fp32/graph/seq32_batch1.json" in {c.path for c in cells}


def test_gpu_config_measures_both_backends():
    import yaml

    gpu = yaml.safe_load((REPO / "config" / "gpu.yaml").read_text())
    assert gpu["measure"]["backends"] == ["eager", "graph"]


def test_model_needs_exactly_one_source(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["models"]["tiny-qwen2"]["path"] = "/somewhere"
    with pytest.raises(ConfigError, match="exactly one of"):
        check(cfg)


def test_local_checkpoint_path(tmp_path, default_config):
    ckpt = tmp_path / "ckpt"
    cfg = copy.deepcopy(default_config)
    cfg["models"]["local"] = {"path": str(ckpt)}
    cfg["measure"]["models"] = ["local"]
    with pytest.raises(ConfigError, match="models.local.path"):
        check(cfg)
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "qwen2", "max_position_embeddings": 128}))
    with pytest.raises(ConfigError, match=r"models.local.path: .* has no weights"):
        check(cfg)
    (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="max positions 128"):
        check(cfg)  # seq 512 does not fit
    cfg["sweeps"] = {"s": {"seq": [64], "batch": [1]}}
    with pytest.raises(ConfigError, match=r"profile.cells\[1\].seq: seq 512"):
        check(cfg)  # the profiled cells are checked too
    cfg["profile"]["cells"] = [{"seq": 64, "batch": 2}]
    out = check(cfg)
    source = lsconfig.resolve_model("local", out["models"]["local"])
    assert source.kind == "path" and source.config_json == (ckpt / "config.json").resolve()


def test_cells_are_shared_between_sweeps(default_config):
    cfg = check(default_config)
    cells = lsconfig.all_cells(cfg)
    seq = lsconfig.sweep_cells(cfg, "seq_sweep")
    batch = lsconfig.sweep_cells(cfg, "batch_sweep")
    assert len(cells) == len(seq) + len(batch) - 1  # seq 32 x batch 1 is in both
    assert cells[0].path == "results/cells/tiny-qwen2/fp32/eager/seq32_batch1.json"


def test_grid_axis_and_alias(default_config):
    cfg = check(default_config)
    cfg["sweeps"]["g"] = {"seq": [16, 32], "batch": [1, 2]}
    assert lsconfig.sweep_axis(cfg, "g") == "grid"
    assert lsconfig.find_model_by_alias(cfg, "Qwen/Qwen2.5-3B-Instruct") == "qwen2.5-3b"
    assert lsconfig.find_model_by_alias(cfg, "tiny-qwen2") == "tiny-qwen2"
    assert lsconfig.find_model_by_alias(cfg, "unknown/model") is None


def test_shipped_qwen_architecture_matches_published_shape():
    arch = json.loads((lsconfig.MODELS_DIR / "qwen2.5-3b.json").read_text())
    assert (arch["num_hidden_layers"], arch["hidden_size"], arch["num_attention_heads"]) == (36, 2048, 16)
    assert (arch["num_key_value_heads"], arch["intermediate_size"], arch["vocab_size"]) == (2, 11008, 151936)
    assert arch["tie_word_embeddings"] is True


def test_reference_study_checked(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["reference_study"] = {"csv": "config/reference_study/rtx5070_qwen2.5-3b_fp16.csv", "label": "x",
                              "model": "qwen2.5-3b", "dtype": "fp16"}
    check(cfg)
    cfg["reference_study"]["model"] = "nope"
    with pytest.raises(ConfigError, match="reference_study.model"):
        check(cfg)
    cfg["reference_study"].update(model="qwen2.5-3b", csv="missing.csv")
    with pytest.raises(ConfigError, match="reference_study.csv: no such file"):
        check(cfg)


def test_compare_devices_checked(default_config, tmp_path):
    cfg = copy.deepcopy(default_config)
    cfg["compare_devices"] = [{"label": "H200", "results": str(tmp_path)}]
    with pytest.raises(ConfigError, match=r"compare_devices\[0\].results: no sweep.csv of this config's sweeps"):
        check(cfg)
    (tmp_path / "batch_sweep").mkdir()
    (tmp_path / "batch_sweep" / "sweep.csv").write_text("seq_len,batch\n")
    check(cfg)
    cfg["compare_devices"] = [{"label": "H200"}]
    with pytest.raises(ConfigError, match="results"):
        check(cfg)


def test_unknown_key_message_does_not_dump_the_config(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["sweps"] = cfg.pop("sweeps")
    with pytest.raises(ConfigError) as err:
        check(cfg)
    assert "seq_sweep" not in str(err.value) and "tiny-qwen2" not in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_attention_heads": 5}, "num_attention_heads 5 does not divide hidden_size"),
        ({"num_key_value_heads": 3}, "num_key_value_heads 3 does not divide num_attention_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer (value: 0)"),
        ({"max_position_embeddings": 39}, "sweeps.seq_sweep.seq[0]: seq 32 + gen_tokens 8 exceeds"),
    ],
)
def test_inconsistent_architecture_is_rejected(default_config, tmp_path, change, message):
    arch = json.loads((lsconfig.MODELS_DIR / "tiny-qwen2.json").read_text())
    assert arch["hidden_size"] % 5 and arch["num_attention_heads"] % 3  # the changes below are inconsistent
    arch.update(change)
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    cfg = copy.deepcopy(default_config)
    cfg["models"]["tiny-qwen2"]["architecture"] = str(tmp_path / "arch.json")
    with pytest.raises(ConfigError) as err:
        check(cfg)
    assert message in str(err.value) and ("models.tiny-qwen2" in str(err.value) or "sweeps" in message)


def test_explicit_head_dim_allows_heads_that_do_not_divide_hidden_size(default_config, tmp_path):
    arch = json.loads((lsconfig.MODELS_DIR / "tiny-qwen2.json").read_text())
    arch.update(num_attention_heads=arch["num_key_value_heads"] * 3, head_dim=16)
    assert arch["hidden_size"] % arch["num_attention_heads"]
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    cfg = copy.deepcopy(default_config)
    cfg["models"]["tiny-qwen2"]["architecture"] = str(tmp_path / "arch.json")
    check(cfg)


def test_yaml_duplicate_keys_and_syntax_errors_name_file_and_line(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("sweeps:\n  s:\n    seq: [16]\n    batch: [1]\n  s:\n    seq: [32]\n    batch: [1]\n")
    with pytest.raises(ConfigError) as err:
        lsconfig.load_yaml(dup)
    assert f"{dup}, line 5" in str(err.value) and "duplicate key 's' (first given at line 2)" in str(err.value)

    bad = tmp_path / "bad.yaml"
    bad.write_text("measure:\n  reps: 3\n  seq: [16, 32\nsweeps: {}\n")
    with pytest.raises(ConfigError) as err:
        lsconfig.load_yaml(bad)
    assert f"{bad}, line 4" in str(err.value)

    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        lsconfig.load_yaml(listed)
    with pytest.raises(ConfigError, match="cannot read it"):
        lsconfig.load_yaml(tmp_path / "missing.yaml")
    assert lsconfig.load_yaml(REPO / "config" / "config.yaml")["measure"]["device"] == "cpu"


def test_command_line_overrides_are_typed(default_config):
    # What snakemake's --config measure='{reps: 5, dtypes: [fp32]}' hands the workflow: strings throughout.
    raw = {"measure": {"reps": "5", "dtypes": ["fp32"]}, "collapse_factor": "3.5", "allow_errors": "true"}
    typed = lsconfig.command_line_overrides(raw)
    assert typed == {"measure": {"reps": 5, "dtypes": ["fp32"]}, "collapse_factor": 3.5, "allow_errors": True}
    cfg = copy.deepcopy(default_config)
    lsconfig._merge(cfg, typed)
    out = check(cfg)
    assert out["measure"]["reps"] == 5 and out["measure"]["models"] == ["tiny-qwen2"] and out["allow_errors"] is True
    with pytest.raises(ConfigError, match=r"config key measure: --config measure='\{reps: 5' is not valid YAML.*--configfile"):
        lsconfig.command_line_overrides({"measure": "{reps: 5"})


def test_cuda_without_a_cuda_device_is_rejected(monkeypatch):
    import torch

    lsconfig.check_device("cpu", 4)  # nothing to check on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"config key measure.device: torch sees no CUDA device .*value: 'cuda'"):
        lsconfig.check_device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    lsconfig.check_device("cuda", 2)
    with pytest.raises(ConfigError, match=r"resources gpu=3: this machine has 2 CUDA devices"):
        lsconfig.check_device("cuda", 3)


def test_report_settings_come_from_the_cells(default_config):
    """The config gives only what no cell records; the cells' own specs override it, differing values counted."""
    from latency_sensitivity.report.setup import cell_settings, settings_section

    summary = lsconfig.settings_summary(lsconfig.validate(default_config))
    assert set(summary) == {"models", "collapse_factor"}
    arch = json.loads((lsconfig.MODELS_DIR / "tiny-qwen2.json").read_text())
    assert summary["models"]["tiny-qwen2"]["hidden_size"] == arch["hidden_size"]

    def cell(threads, dtype="fp32", hidden=arch["hidden_size"]):
        spec = {"model": "tiny-qwen2", "model_kind": "architecture", "dtype": dtype, "backend": "eager",
                "device": "cpu", "attn_implementation": "sdpa", "gen_tokens": 8, "warmup": 1, "reps": 3,
                "seed": 0, "threads": threads}
        return {"cell": spec, "status": "ok", "architecture": dict(arch, hidden_size=hidden)}

    cells = [cell(1), cell(2, "bf16"), cell(1), cell(2, hidden=arch["hidden_size"] * 2), cell(2)]
    settings = cell_settings(cells, summary)
    assert settings["threads"] == "1 (2 cells), 2 (3 cells)"
    assert settings["dtypes"] == ["fp32", "bf16"] and settings["reps"] == 3
    assert settings["collapse_factor"] == summary["collapse_factor"]
    hidden = arch["hidden_size"]
    assert settings["models"]["tiny-qwen2"]["hidden_size"] == f"{hidden} (4 cells), {hidden * 2} (1 cell)"
    assert settings["models"]["tiny-qwen2"]["weights"] == "random (from architecture)"
    text = settings_section(settings)
    assert "| `threads` | 1 (2 cells), 2 (3 cells) |" in text.splitlines()
    # All cells agree: the plain value, whatever the config says.
    assert cell_settings([cell(4), cell(4)], summary)["threads"] == 4
    # A model whose cells recorded no architecture (failed before loading) keeps the configured one.
    failed = cell(1)
    del failed["architecture"]
    assert cell_settings([failed], summary)["models"]["tiny-qwen2"]["hidden_size"] == hidden
    # how the cells were measured: isolation from every cell, compile_shapes from the compiled ones only
    shared = [dict(c, cell=dict(c["cell"], isolation=iso, backend=backend, compile_shapes=shapes))
              for c, iso, backend, shapes in ((cell(1), "shared", "eager", "static"),
                                              (cell(1), "shared", "compiled", "dynamic_batch"),
                                              (cell(1), "process", "compiled", "dynamic_batch"))]
    settings = cell_settings(shared, summary)
    assert settings["isolation"] == "shared (2 cells), process (1 cell)"
    assert settings["compile_shapes"] == "dynamic_batch"
    assert "compile_shapes" not in cell_settings(shared[:1], summary)  # no compiled cell: nothing to say
    # a compiled cell recorded before compiled_step existed traced its step, whatever the config says now
    assert cell_settings(shared, {**summary, "compiled_step": "saved"})["compiled_step"] == "traced"
    shared[1]["cell"]["compiled_step"] = "saved"
    assert cell_settings(shared, summary)["compiled_step"] == "saved (1 cell), traced (1 cell)"


def test_schema_and_models_are_package_data_and_the_workflow_is_found(tmp_path, monkeypatch):
    """Validation and model names work from any directory (the schema and model JSONs ship in the package);
    the workflow's own paths link to the same files; the sweep command finds the checkout it runs."""
    assert lsconfig.SCHEMA_PATH.is_file() and (lsconfig.MODELS_DIR / "tiny-qwen2.json").is_file()
    assert lsconfig.SCHEMA_PATH.parent == lsconfig.DATA_DIR and DATA_IN_PACKAGE(lsconfig.DATA_DIR)
    assert (REPO / "workflow" / "schemas" / "config.schema.yaml").resolve() == lsconfig.SCHEMA_PATH.resolve()
    assert (REPO / "config" / "models" / "tiny-qwen2.json").resolve() == (lsconfig.MODELS_DIR / "tiny-qwen2.json").resolve()
    monkeypatch.chdir(tmp_path)
    assert lsconfig.resolve_model("tiny-qwen2", {"architecture": "tiny-qwen2"}, tmp_path).kind == "architecture"
    assert lsconfig.workflow_root(tmp_path) == REPO  # installed from this checkout
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"data/*.yaml", "data/models/*.json"' in pyproject  # shipped in the wheel too


def DATA_IN_PACKAGE(folder):
    import latency_sensitivity

    return folder.parent == __import__("pathlib").Path(latency_sensitivity.__file__).resolve().parent


def test_forked_workers_need_linux(default_config, monkeypatch):
    cfg = copy.deepcopy(default_config)
    cfg["measure"]["isolation"] = "forked"
    check(cfg)  # these machines run Linux
    monkeypatch.setattr(lsconfig.sys, "platform", "darwin")
    with pytest.raises(ConfigError, match="measure.isolation: forked needs Linux .* use shared"):
        check(cfg)
