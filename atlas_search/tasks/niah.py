"""S-NIAH: RULER's single needle in a haystack (Hsieh et al., 2024), token-level and tiny.

Every example is one token sequence: a haystack of filler with a single needle inserted at a
uniformly random depth, followed by a query that asks for the needle's value::

    f_0 .. f_{d-1}  NEEDLE key IS v_1 .. v_L END  f_d .. f_{F-1}  QUERY key IS v_1 .. v_L

The model is a causal LM, so ``inputs`` is that sequence without its last token and
``targets`` is it shifted left by one. Only the ``L`` answer value tokens at the very end are
scored (``targets`` is ``IGNORE`` everywhere else). Scoring is **teacher-forced**: the model
sees the true previous answer token when predicting the next one (v_1 is predicted at the
``IS`` after the query key, v_2 with v_1 in the input, and so on), so the metric is per-token
accuracy over the answer digits, not exact match of a free-running generation.

Vocabulary layout, in order from token 0 (``V = vocab_size``; ``A`` = value alphabet size)::

    0 NEEDLE   opens the needle    ("One of the special magic numbers for")
    1 IS       key/value separator ("is:"), in the needle and in the query
    2 QUERY    opens the query     ("What is the special magic number for")
    3 END      closes the needle   (".")
    [4, 4+A)            value alphabet: 10 digits (passkey, number) or 16 hex symbols (uuid)
    [4+A, 4+A+K)        keys, K = max(1, (V-4-A) // 8): one random key per example
    [4+A+K, V)          filler words (the haystack alphabet)

Only the variant's own value alphabet is allocated, so ``V = 32`` still leaves room for keys
and filler. The alphabets are disjoint, so the value (and the key and the markers) can never
occur in the filler; the needle is the only place besides the answer where the value occurs.

Variants (RULER's three single-needle tasks, ``niah_single_1/2/3``):

* ``passkey`` (S-NIAH-1): the haystack is a fixed pattern of 8 distinct filler words
  (RULER's "The grass is green. The sky is blue. ..."), repeated from the start of the
  sequence; the value is a 5-digit number 10000-99999 (pass-key retrieval).
* ``number`` (S-NIAH-2): an "essay" haystack, fresh random text per example from a fixed
  first-order Markov chain over the filler words (each word has at most 8 possible
  successors, chosen with a Zipf-like bias, with random transition probabilities in steps of
  1/32), so it has local structure but never a copy of the value; the value is a 7-digit
  number 1000000-9999999 (RULER's 7 digits).
* ``uuid`` (S-NIAH-3): the same essay haystack; the value is an 8-symbol uuid-like string
  over the 16 hex tokens (the first block of a UUID; all 16 symbols uniform).

The pattern and the chain are drawn from ``seed`` (shared by train and test). The needle
depth ``d`` is uniform over the ``F + 1`` gaps of the ``F`` filler tokens (0 = at the start,
``F`` = right before the query), independently per example, for training and evaluation.
The filler count follows from the length: ``F = T + 1 - (L + 4) - (L + 3)``. Evaluation sets
use the same generator at each test length (train at ``seq_len``, test at every entry of
``test_lengths``, one ``test@<T>`` set each, in that order). Train and test sets come from
different seeds, and a test set at the training length drops any sequence found in training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..spec.task import SNIAHTask
from .base import IGNORE, Task, TaskError, TokenDataset, drop_overlap, generator

NEEDLE, IS, QUERY, END = 0, 1, 2, 3
NUM_SPECIAL = 4
PATTERN_LEN = 8  # passkey filler period
CHAIN_DEGREE = 8  # successors per word in the essay chain
ZIPF_S = 1.0  # Zipf exponent of the successor choice (frequent and rare words)
CHAIN_SLOTS = 32  # transition probabilities in multiples of 1/32

VALUE_LEN = {"passkey": 5, "number": 7, "uuid": 8}
VALUE_ALPHABET = {"passkey": 10, "number": 10, "uuid": 16}
HAYSTACK = {"passkey": "repeated pattern", "number": "markov essay", "uuid": "markov essay"}


def layout(variant: str, vocab_size: int) -> dict[str, object]:
    """The token ranges (half-open ``[lo, hi)``) of a variant at ``vocab_size``."""
    a = VALUE_ALPHABET[variant]
    rest = vocab_size - NUM_SPECIAL - a
    k = max(1, rest // 8)
    if rest - k < 2:
        raise TaskError(f"S-NIAH {variant} needs vocab_size >= {NUM_SPECIAL + a + 3} "
                         f"(got {vocab_size})")
    values = (NUM_SPECIAL, NUM_SPECIAL + a)
    keys = (values[1], values[1] + k)
    filler = (keys[1], vocab_size)
    return {"NEEDLE": NEEDLE, "IS": IS, "QUERY": QUERY, "END": END,
            "values": values, "keys": keys, "filler": filler,
            "value_kind": "hex" if variant == "uuid" else "digits",
            "value_len": VALUE_LEN[variant]}


def lengths(variant: str) -> tuple[int, int]:
    """(needle, query) token counts: ``NEEDLE key IS v.. END`` and ``QUERY key IS v..``."""
    n = VALUE_LEN[variant]
    return n + 4, n + 3


def min_seq_len(variant: str) -> int:
    """Shortest input length that leaves at least one filler token."""
    needle, query = lengths(variant)
    return needle + query  # T + 1 = needle + query + F with F >= 1


def passkey_pattern(seed: int, lay: dict[str, object]) -> Tensor:
    """The fixed filler pattern (distinct words) repeated through the passkey haystack."""
    lo, hi = lay["filler"]
    gen = generator(seed, "s_niah", "pattern", hi)
    p = min(PATTERN_LEN, hi - lo)
    return torch.randperm(hi - lo, generator=gen)[:p] + lo


def essay_chain(seed: int, lay: dict[str, object]) -> Tensor:
    """The essay Markov chain over filler words, as a table ``[W, 32]`` of word indices
    ``0..W-1``: the next word after ``w`` is ``table[w, r]`` with ``r`` uniform. Each word's
    row holds at most 8 distinct successors (chosen with a Zipf-like bias over a random
    ranking of the words), repeated in proportion to random (Dirichlet(1)) weights."""
    lo, hi = lay["filler"]
    w = hi - lo
    k = min(CHAIN_DEGREE, w)
    gen = generator(seed, "s_niah", "essay", hi)
    zipf = torch.arange(1, w + 1, dtype=torch.float64) ** -ZIPF_S
    zipf = zipf[torch.randperm(w, generator=gen)]  # which words are frequent: random
    gumbel = -(-torch.rand(w, w, generator=gen, dtype=torch.float64).log()).log()
    succ = (zipf.log() + gumbel).topk(k, dim=1).indices  # k draws without replacement
    weights = -torch.rand(w, k, generator=gen, dtype=torch.float64).log()  # Dirichlet(1)
    slots = torch.multinomial(weights, CHAIN_SLOTS, replacement=True, generator=gen)
    return succ.gather(1, slots.sort(1).values)


def _essay(n: int, f: int, lay: dict[str, object], table: Tensor,
           gen: torch.Generator) -> Tensor:
    lo, hi = lay["filler"]
    flat = table.reshape(-1)
    slots = table.shape[1]
    out = torch.empty(f, n, dtype=torch.long)
    out[0] = torch.randint(0, hi - lo, (n,), generator=gen)
    r = torch.randint(0, slots, (f, n), generator=gen)
    for t in range(1, f):
        torch.index_select(flat, 0, out[t - 1] * slots + r[t], out=out[t])
    return out.t() + lo


def _values(n: int, variant: str, lay: dict[str, object], gen: torch.Generator) -> Tensor:
    lo, hi = lay["values"]
    m = VALUE_LEN[variant]
    v = torch.randint(0, hi - lo, (n, m), generator=gen)
    if variant != "uuid":  # a real m-digit number: no leading zero
        v[:, 0] = torch.randint(1, hi - lo, (n,), generator=gen)
    return v + lo


def niah_examples(n: int, *, variant: str, vocab_size: int, seq_len: int, seed: int,
                  gen: torch.Generator) -> tuple[TokenDataset, Tensor]:
    """``n`` S-NIAH sequences of input length ``seq_len`` and the needle depth of each
    (filler tokens before the needle, ``0..F``). ``seed`` fixes the haystack language."""
    lay = layout(variant, vocab_size)
    needle_len, query_len = lengths(variant)
    m = VALUE_LEN[variant]
    f = seq_len + 1 - needle_len - query_len
    if f < 1:
        raise TaskError(f"S-NIAH {variant} needs seq_len >= {min_seq_len(variant)} "
                         f"(got {seq_len}): needle and query take {needle_len + query_len - 1}")
    if variant == "passkey":
        pattern = passkey_pattern(seed, lay)
        filler = pattern.repeat(f // pattern.numel() + 1)[:f].expand(n, f)
    else:
        filler = _essay(n, f, lay, essay_chain(seed, lay), gen)
    klo, khi = lay["keys"]
    key = torch.randint(klo, khi, (n, 1), generator=gen)
    value = _values(n, variant, lay, gen)
    depth = torch.randint(0, f + 1, (n,), generator=gen)

    def const(tok: int) -> Tensor:
        return torch.full((n, 1), tok, dtype=torch.long)

    needle = torch.cat([const(NEEDLE), key, const(IS), value, const(END)], 1)
    query = torch.cat([const(QUERY), key, const(IS), value], 1)
    parts = torch.cat([needle, filler, query], 1)  # [n, needle + F + query] = [n, T + 1]
    j = torch.arange(seq_len + 1).expand(n, -1)
    d = depth[:, None]
    # filler before the needle, then the needle, then the rest of the filler and the query
    idx = torch.where(j < d, j + needle_len, torch.where(j < d + needle_len, j - d, j))
    seq = parts.gather(1, idx)
    inputs = seq[:, :-1].contiguous()
    targets = torch.full_like(inputs, IGNORE)
    targets[:, seq_len - m:] = seq[:, seq_len + 1 - m:]
    return TokenDataset(inputs, targets), depth


def _depth_summary(depth: Tensor, f: int) -> dict[str, object]:
    """Needle depth as a fraction of the filler: mean/min/max and the share of examples in
    the early, middle and late thirds."""
    frac = depth.double() / f
    thirds = torch.bincount((frac * 3).floor().long().clamp(max=2), minlength=3) / len(frac)
    return {"mean": round(float(frac.mean()), 4), "min": round(float(frac.min()), 4),
            "max": round(float(frac.max()), 4), "thirds": [round(float(t), 4) for t in thirds]}


def make_niah(spec: SNIAHTask) -> Task:
    """Train set at ``seq_len``; one ``test@<T>`` set per test length (the first is the main
    evaluation), from another seed, without sequences that occur in the training set."""
    variant, v = spec.variant, spec.vocab_size
    lay = layout(variant, v)
    needle_len, query_len = lengths(variant)
    train, train_depth = niah_examples(spec.num_train, variant=variant, vocab_size=v,
                                       seq_len=spec.seq_len, seed=spec.seed,
                                       gen=generator(spec.seed, "s_niah", variant, "train"))
    evals: dict[str, TokenDataset] = {}
    depths = {"train": _depth_summary(train_depth, spec.seq_len + 1 - needle_len - query_len)}
    for length in dict.fromkeys(spec.test_lengths):
        test, depth = niah_examples(spec.num_test, variant=variant, vocab_size=v,
                                    seq_len=length, seed=spec.seed,
                                    gen=generator(spec.seed, "s_niah", variant, "test", length))
        if length == spec.seq_len:
            test = drop_overlap(test, train, "s_niah")
        evals[f"test@{length}"] = test
        depths[f"test@{length}"] = _depth_summary(depth, length + 1 - needle_len - query_len)
    info: dict[str, object] = {
        "variant": variant,
        "haystack": HAYSTACK[variant],
        "layout": lay,
        "value_len": VALUE_LEN[variant],
        "needle": "NEEDLE key IS value END", "query": "QUERY key IS value",
        "needle_len": needle_len, "query_len": query_len,
        "scored": "the value tokens of the answer (last value_len positions), teacher-forced",
        "seq_len": spec.seq_len, "test_lengths": list(evals),
        "filler_len": {name: ds.seq_len + 1 - needle_len - query_len
                       for name, ds in {"train": train, **evals}.items()},
        "depth": "uniform over the F+1 filler gaps (fraction of filler before the needle)",
        "depth_stats": depths,
    }
    if variant == "passkey":
        info["pattern"] = passkey_pattern(spec.seed, lay).tolist()
    else:
        info["chain"] = {"order": 1, "max_successors": CHAIN_DEGREE, "slots": CHAIN_SLOTS,
                         "zipf_s": ZIPF_S}
    return Task(name="s_niah", vocab_size=v, train=train, evals=evals, kind="recall",
                info=info)
