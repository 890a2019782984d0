"""Tokenisation stages: the generated corpus, the trained tokenizer, texts of an exact shape, the timings,
the runner's request total and the report's request anatomy."""

import pandas as pd
import pytest

from conftest import cell_spec
from latency_sensitivity.report import tables
from latency_sensitivity.measure import cell
from latency_sensitivity.measure import tokenization


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenization.train_tokenizer(path, vocab_size=600, corpus_chars=60_000, seed=1)
    return path


def test_corpus_is_deterministic_and_long_enough():
    a, b = tokenization.generate_corpus(5000, seed=3), tokenization.generate_corpus(5000, seed=3)
    assert a == b and len(a) >= 5000 and a != tokenization.generate_corpus(5000, seed=4)


def test_trained_tokenizer_round_trips_and_texts_have_the_exact_shape(tokenizer_file):
    tok = tokenization.load_tokenizer(tokenizer_file.parent)  # a folder with a tokenizer.json works too
    assert tok.get_vocab_size() == 600
    text = "Kalomi ter, 42 anduve."
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: lossless
    texts = tokenization.texts_of_shape(tok, batch=3, seq_len=50, seed=0)
    assert len(set(texts)) == 3
    assert [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)] == [50, 50, 50]


def _text_one_at_a_time(tok, b, seq_len, seed):
    """A text of texts_of_shape made alone: its corpus encoded by itself, doubled until long enough, then cut."""
    chars = max(64, seq_len * 8)
    while len(ids := tok.encode(tokenization.generate_corpus(chars, seed=seed * 1_000_003 + b),
                                add_special_tokens=False).ids) < seq_len + 8:
        chars *= 2
    for cut in range(seq_len, len(ids)):
        text = tok.decode(ids[:cut])
        if len(tok.encode(text, add_special_tokens=False).ids) == seq_len:
            return text


def test_texts_made_in_batches_and_kept_are_the_texts_made_one_at_a_time(tokenizer_file):
    fresh = tokenization.load_tokenizer(tokenizer_file)
    expected = [_text_one_at_a_time(fresh, b, 30, 2) for b in range(5)]
    assert tokenization.texts_of_shape(fresh, 5, 30, seed=2) == expected
    tok = tokenization.tokenizer_for(tokenizer_file)
    assert tokenization.texts_of_shape(tok, 2, 30, seed=2) == expected[:2]
    assert tokenization.texts_of_shape(tok, 5, 30, seed=2) == expected  # the first two kept, three more made
    assert tokenization._Loaded.texts[(30, 2)] == expected
    assert tokenization.texts_of_shape(tok, 3, 30, seed=2) == expected[:3]
    assert tokenization.texts_of_shape(tok, 2, 31, seed=2) != expected[:2]


def test_a_process_loads_a_tokenizer_once_per_version_of_its_file(tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    tokenization.train_tokenizer(path, vocab_size=300, corpus_chars=20_000, seed=1)
    loads = []
    real_load = tokenization.load_tokenizer
    monkeypatch.setattr(tokenization, "load_tokenizer", lambda p: loads.append(p) or real_load(p))
    first = tokenization.tokenizer_for(path)
    tokenization.texts_of_shape(first, 2, 20)
    assert tokenization.tokenizer_for(tmp_path) is first and len(loads) == 1
    tokenization.train_tokenizer(path, vocab_size=400, corpus_chars=20_000, seed=1)  # a new version of the file
    second = tokenization.tokenizer_for(path)
    assert second is not first and second.get_vocab_size() == 400 and len(loads) == 2
    assert tokenization._Loaded.texts == {}  # texts of the old tokenizer are not this one's


def test_the_timed_calls_start_from_an_empty_word_cache(tokenizer_file):
    """Whatever the process encoded before (other cells' texts, or this cell's while making them), the word
    cache is emptied after the texts are made and before the untimed first call and the timed ones."""
    log = []
    tok = tokenization.load_tokenizer(tokenizer_file)

    class Model:
        def _clear_cache(self):
            log.append("clear")
            tok.model._clear_cache()

    class Logged:
        model = Model()

        def __getattr__(self, name):
            def call(*args, **kwargs):
                log.append(name)
                return getattr(tok, name)(*args, **kwargs)

            return call

    tokenization.measure(Logged(), batch=2, seq_len=30, gen_tokens=4, reps=3)
    assert log.count("clear") == 1 and "encode_batch" in log[:log.index("clear")]  # the texts were made before it
    after = [name for name in log[log.index("clear") + 1:] if name != "get_vocab_size"]
    assert after == ["encode_batch"] * 4 + ["decode_batch"] * 4


def test_measure_reports_medians_and_rates(tokenizer_file):
    tok = tokenization.load_tokenizer(tokenizer_file)
    m = tokenization.measure(tok, batch=2, seq_len=40, gen_tokens=5, reps=3)
    assert len(m["samples"]["tokenize_ms"]) == 3 and m["tokenize_p50_ms"] > 0 and m["detokenize_p50_ms"] > 0
    assert m["tokenize_tok_s"] == pytest.approx(2 * 40 * 1000 / m["tokenize_p50_ms"])


def test_missing_tokenizer_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        tokenization.load_tokenizer(tmp_path)


def test_runner_adds_the_host_stages_to_a_request(tokenizer_file):
    r = cell.measure(cell_spec(seq_len=16, batch=2, gen_tokens=3, reps=2), tokenizer=tokenizer_file)
    assert r["status"] == "ok", r["error"]
    m = r["metrics"]
    assert m["request_p50_ms"] == pytest.approx(m["tokenize_p50_ms"] + m["e2e_p50_ms"] + m["detokenize_p50_ms"])
    assert r["tokenizer"]["vocab_size"] == 600 and len(r["samples"]["tokenize_ms"]) == 2
    broken = cell.measure(cell_spec(seq_len=16, batch=1, gen_tokens=3, reps=1), tokenizer=tokenizer_file.parent / "x")
    assert broken["status"] == "ok" and "tokenization_error" in broken and "request_p50_ms" not in broken["metrics"]


def test_report_request_anatomy_hand_computed():
    frame = pd.DataFrame({"seq_len": [128, 4096], "batch": [1, 1], "status": ["ok", "ok"], "flag": ["ok", "ok"],
                          "tokenize_p50_ms": [0.1, 2.0], "ttft_p50_ms": [30.0, 60.0], "e2e_p50_ms": [100.0, 1060.0],
                          "detokenize_p50_ms": [0.1, 0.1]})
    table, finding = tables.anatomy_table(frame, "seq_len")
    assert "| 128 | 0.10 | 30.00 | 70.00 | 0.10 | 100.20 | decode |" in table
    assert "| 4096 | 2.00 | 60.00 | 1000.00 | 0.10 | 1062.10 | decode |" in table
    assert finding.startswith("tokenising and detokenising take 0.20% of a request")
    assert tables.anatomy_table(frame.drop(columns=["tokenize_p50_ms"]), "seq_len") is None
