"""Multi-query associative recall (MQAR), as Zoology defines it (Arora et al., 2023).

Each example writes ``num_kv_pairs`` key-value pairs (keys from ``[1, V/2)``, values from
``[V/2, V)``, keys distinct within an example), then queries every key once at
power-law distributed gaps (``p(g) ∝ g^(power_a - 1)``, g = 1..(T - 2K)/2). The target
after each query key is its value; every other position is unscored. Unused slots are
token 0, or random tokens from the whole vocabulary when ``random_non_queries``.
"""

from __future__ import annotations

import torch

from ..spec.task import MQARTask
from .base import IGNORE, Task, TaskError, TokenDataset, drop_overlap, generator

_BLOCK = 1024


def distinct_randint(m: int, k: int, lo: int, hi: int, gen: torch.Generator) -> torch.Tensor:
    """``[m, k]`` integers from ``[lo, hi)``, distinct within each row, uniformly."""
    n = hi - lo
    if 4 * k > n:  # dense: a random permutation per row
        return torch.rand(m, n, generator=gen).argsort(dim=1)[:, :k] + lo
    x = torch.randint(lo, hi, (m, k), generator=gen)
    while True:  # sparse: redraw rows with a repeat (rare)
        s, _ = x.sort(dim=1)
        bad = (s[:, 1:] == s[:, :-1]).any(dim=1)
        if not bool(bad.any()):
            return x
        x[bad] = torch.randint(lo, hi, (int(bad.sum()), k), generator=gen)


def mqar_examples(
    n: int, *, vocab_size: int, seq_len: int, num_kv_pairs: int, power_a: float,
    random_non_queries: bool, gen: torch.Generator,
) -> TokenDataset:
    """``n`` MQAR sequences of length ``seq_len`` with targets at the answer positions."""
    k = num_kv_pairs
    context = 2 * k
    if 4 * k > seq_len or 2 * k > vocab_size // 2:
        raise TaskError(f"MQAR needs seq_len >= 4*num_kv_pairs and a vocabulary with room "
                         f"for {k} distinct keys (vocab {vocab_size}, seq_len {seq_len})")
    half = vocab_size // 2
    space = (seq_len - context) // 2
    gaps_p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    inputs = torch.zeros(n, seq_len + 1, dtype=torch.long)
    targets = torch.full((n, seq_len + 1), IGNORE, dtype=torch.long)
    for s in range(0, n, _BLOCK):
        m = min(_BLOCK, n - s)
        keys = distinct_randint(m, k, 1, half, gen)
        values = distinct_randint(m, k, half, vocab_size, gen)
        gaps = torch.multinomial(gaps_p.expand(m, space), k, generator=gen)
        block = inputs[s:s + m]
        block[:, 0:context:2] = keys
        block[:, 1:context:2] = values
        block.scatter_(1, context + 2 * gaps, keys)
        targets[s:s + m].scatter_(1, context + 2 * gaps + 1, values)
    inputs, targets = inputs[:, :-1], targets[:, 1:]
    if random_non_queries:
        filler = torch.randint(vocab_size, inputs.shape, generator=gen)
        inputs = torch.where(inputs == 0, filler, inputs)
    return TokenDataset(inputs.contiguous(), targets.contiguous())


def make_mqar(spec: MQARTask) -> Task:
    """Train set at (seq_len, num_kv_pairs); test set at the test_* sizes when given
    (capacity/length extrapolation), generated from a different seed and filtered so that
    no test sequence occurs in the training set."""
    common = dict(vocab_size=spec.vocab_size, power_a=spec.power_a,
                  random_non_queries=spec.random_non_queries)
    train = mqar_examples(spec.num_train, seq_len=spec.seq_len, num_kv_pairs=spec.num_kv_pairs,
                          gen=generator(spec.seed, "mqar", "train"), **common)
    test_len = spec.test_seq_len or spec.seq_len
    test_kv = spec.test_num_kv_pairs or spec.num_kv_pairs
    test = mqar_examples(spec.num_test, seq_len=test_len, num_kv_pairs=test_kv,
                         gen=generator(spec.seed, "mqar", "test"), **common)
    if test_len == spec.seq_len:
        test = drop_overlap(test, train, "mqar")
    return Task(name="mqar", vocab_size=spec.vocab_size, train=train, evals={"test": test},
                kind="recall", info={"seq_len": spec.seq_len, "num_kv_pairs": spec.num_kv_pairs,
                                     "test_seq_len": test_len, "test_num_kv_pairs": test_kv})
