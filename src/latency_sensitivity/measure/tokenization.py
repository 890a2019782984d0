"""Tokenisation and detokenisation: the host-side stages of a request around prefill and decode.

A request starts as text and ends as text. The runner times both ends on texts of exactly the cell's shape:
encoding `batch` texts of `seq_len` tokens each (one batched call, as a server tokenises a batch) and
decoding `batch` sequences of `gen_tokens` generated ids. The model itself is still fed seeded random ids:
latency depends on shapes, not on which tokens.

The tokenizer is either a local one (a `tokenizer.json` or a folder with one, given in the config: nothing
is downloaded) or, by default, a byte-level BPE tokenizer trained with the `tokenizers` library on text this
module generates (`generate_corpus`), so every machine gets the same tokenizer without a download.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from latency_sensitivity.vocabulary import tokenizer_file

SPECIAL_TOKENS = ["<|endoftext|>"]
# Syllables that combine into pseudo-words: varied enough for BPE to learn merges of several lengths.
_SYLLABLES = ("ka", "lo", "mi", "ter", "an", "du", "ve", "si", "ro", "pel", "qu", "ix", "on", "ar", "est", "ul",
              "bra", "che", "no", "ti", "sha", "ing", "tion", "pre", "com", "ly", "er", "str", "au", "eo")
_PUNCTUATION = (",", ".", ";", ":", "?", "!")


def generate_corpus(n_chars: int, seed: int = 0) -> str:
    """Deterministic pseudo-text (words, punctuation, numbers, line breaks) of at least n_chars characters."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < n_chars:
        r = rng.random()
        if r < 0.04:
            token = str(rng.randint(0, 10_000))
        else:
            token = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
            if r > 0.9:
                token = token.capitalize()
        if rng.random() < 0.08:
            token += rng.choice(_PUNCTUATION)
        parts.append(token)
        size += len(token) + 1
        if rng.random() < 0.01:
            parts.append("\n")
    return " ".join(parts)


def train_tokenizer(out_file: str | Path, vocab_size: int = 32000, corpus_chars: int = 2_000_000, seed: int = 0):
    """Train a byte-level BPE tokenizer on generate_corpus(corpus_chars, seed); write it as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from latency_sensitivity.atomic import write_text

    text = generate_corpus(corpus_chars, seed)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator((text[i:i + 10_000] for i in range(0, len(text), 10_000)), trainer=trainer)
    write_text(out_file, tokenizer.to_str())
    return tokenizer


def load_tokenizer(path: str | Path):
    """A `tokenizers.Tokenizer` from a tokenizer.json, or from a local folder holding one."""
    from tokenizers import Tokenizer

    path = tokenizer_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path} (a local tokenizer is needed; nothing is downloaded)")
    return Tokenizer.from_file(str(path))


class _Loaded:
    """The tokenizer a process loaded last, the file version it came from, and the texts made with it."""

    key: tuple | None = None
    tokenizer = None
    texts: dict = {}  # (seq_len, seed) -> the texts made so far, in order (text b depends on b, not on the batch)


def tokenizer_for(path: str | Path):
    """load_tokenizer's tokenizer, loaded once per process and version of the file (its path, size and change
    time), as a worker measures cell after cell with the same one (measure empties its word cache before it times
    anything). Where the tokenizer cannot empty its cache, it is loaded again on every call."""
    file = tokenizer_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {file} (a local tokenizer is needed; nothing is downloaded)")
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if _Loaded.key != key:
        tokenizer = load_tokenizer(file)
        if not hasattr(tokenizer.model, "_clear_cache"):
            return tokenizer
        _Loaded.key, _Loaded.tokenizer, _Loaded.texts = key, tokenizer, {}
    return _Loaded.tokenizer


def texts_of_shape(tokenizer, batch: int, seq_len: int, seed: int = 0) -> list[str]:
    """`batch` different texts that each encode to exactly `seq_len` tokens (checked). Text b is cut from
    generate_corpus(seed=seed * 1_000_003 + b), so a larger batch's texts begin with a smaller one's; with the
    tokenizer of tokenizer_for, the texts made once are kept for the process's later cells."""
    made = _Loaded.texts.setdefault((seq_len, seed), []) if tokenizer is _Loaded.tokenizer else []
    chars = {b: max(64, seq_len * 8) for b in range(len(made), batch)}
    long_enough: dict[int, list[int]] = {}
    while chars:  # every text still too short in one batched call, its corpus doubled
        order = sorted(chars)
        encoded = tokenizer.encode_batch([generate_corpus(chars[b], seed=seed * 1_000_003 + b) for b in order],
                                         add_special_tokens=False)
        for b, e in zip(order, encoded):
            if len(e.ids) >= seq_len + 8:
                long_enough[b] = e.ids
                del chars[b]
            else:
                chars[b] *= 2
    made += [_cut_to_length(tokenizer, long_enough[b], seq_len) for b in sorted(long_enough)]
    return made[:batch]


def _cut_to_length(tokenizer, ids: list[int], seq_len: int) -> str:
    """The text of ids cut at a token boundary, at the first cut whose text encodes back to seq_len tokens."""
    for cut in range(seq_len, len(ids)):
        text = tokenizer.decode(ids[:cut])
        if len(tokenizer.encode(text, add_special_tokens=False).ids) == seq_len:
            return text
    raise RuntimeError(f"could not make a text of exactly {seq_len} tokens")


def _p50_ms(fn, reps: int) -> tuple[float, list[float], object]:
    """The median and samples of reps timed calls of fn, after one untimed call (first-call allocations are not a
    request's cost), and what that call returned."""
    first = fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples), samples, first


def measure(tokenizer, batch: int, seq_len: int, gen_tokens: int, reps: int, seed: int = 0) -> dict:
    """Median host time of encoding the batch's texts and of decoding its generated ids, and token rates.

    The tokenizer's word cache is emptied once the texts are made, so the timed calls start from the state of a
    fresh load whatever the process encoded before (other cells, or nothing where the texts were kept): the
    untimed first call fills it as it would in a process of its own."""
    import random as _random

    texts = texts_of_shape(tokenizer, batch, seq_len, seed)
    clear_cache = getattr(tokenizer.model, "_clear_cache", None)
    if clear_cache is not None:
        clear_cache()
    rng = _random.Random(seed)
    vocab = tokenizer.get_vocab_size()
    generated = [[rng.randrange(len(SPECIAL_TOKENS), vocab) for _ in range(gen_tokens)] for _ in range(batch)]
    tok_ms, tok_samples, encoded = _p50_ms(lambda: tokenizer.encode_batch(texts, add_special_tokens=False), reps)
    lengths = {len(e.ids) for e in encoded}
    if lengths != {seq_len}:
        raise RuntimeError(f"texts encode to {sorted(lengths)} tokens, expected {seq_len}")
    detok_ms, detok_samples, _ = _p50_ms(lambda: tokenizer.decode_batch(generated), reps)
    return {
        "tokenize_p50_ms": tok_ms,
        "detokenize_p50_ms": detok_ms,
        "tokenize_tok_s": batch * seq_len * 1000.0 / tok_ms if tok_ms > 0 else float("nan"),
        "detokenize_tok_s": batch * gen_tokens * 1000.0 / detok_ms if detok_ms > 0 else float("nan"),
        "samples": {"tokenize_ms": tok_samples, "detokenize_ms": detok_samples},
        "tokenizer_vocab_size": vocab,
    }


def main(argv: list[str] | None = None) -> int:
    """python -m latency_sensitivity.measure.tokenization --out results/tokenizer/tokenizer.json [--vocab-size N ...]"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m latency_sensitivity.measure.tokenization", description=main.__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--corpus-chars", type=int, default=2_000_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    tok = train_tokenizer(a.out, a.vocab_size, a.corpus_chars, a.seed)
    print(f"trained a byte-level BPE tokenizer ({tok.get_vocab_size()} tokens) on {a.corpus_chars} generated "
          f"characters in {time.perf_counter() - t0:.1f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
