"""The six MAD synthetic tasks (Poli et al., 2024, "Mechanistic Design and Scaling of Hybrid
Architectures"; reference code athms/mad-lab, ``mad/data/instances.py``), generated here in
vectorised torch from our own reading of MAD's definitions.

Every task produces ``[N, T]`` ``inputs`` and ``targets`` for a causal LM (logits at position
``t`` are scored against ``targets[t]``; ``IGNORE`` = -100 where unscored). Token layouts
(``V`` = ``spec.vocab_size``, which is the whole model vocabulary, special tokens included):

* **in_context_recall** (multi_query): keys ``[0, V/2)``, values ``[V/2, V)``, no special
  token. ``seq_len/2`` key-value pairs; each key is drawn uniformly with replacement and bound
  to a value drawn uniformly on its first appearance in the sequence (a fresh map per
  sequence; two keys may share a value). The last pair re-presents a key already in the
  sequence (uniform over the distinct keys presented). Rows are the raw ``seq_len``-token
  stream shifted by one, so ``T = seq_len - 1`` as in MAD. Scored (test): the value after
  every key that already occurred earlier in the sequence. Without ``multi_query``: ``V-1``
  is a copy token put before the final pair, keys ``[0, (V-1)//2)``, values up to ``V-2``,
  and only the final value is scored (``T = seq_len``).
* **noisy_in_context_recall**: as above with ``ns = V - noise_vocab_size`` content tokens
  (keys ``[0, ns/2)``, values ``[ns/2, ns)``) and noise tokens ``[ns, V)``. Each pair slot
  (except the final query and one guaranteed pair) is replaced by two noise tokens with
  probability ``frac_noise``. Noise is never a target in the test mask.
* **fuzzy_in_context_recall**: keys and values are *motifs*: ordered tuples of distinct
  tokens, key length uniform in ``1..k_motif_size`` and value length uniform in
  ``1..v_motif_size`` (test keys are always ``k_motif_size`` long, as in MAD). ``ns = V-1``:
  keys ``[0, ns//2)``, values ``[ns//2, ns)``, ``V-1`` is a pad token (multi_query). A
  probe pair is placed at a random point of the context and repeated at the end; pairs are
  appended while the context is shorter than ``seq_len - |probe| - (k_motif + v_motif)``;
  the row is left-padded to ``seq_len + 1`` tokens and shifted (``T = seq_len``). Scored
  (test): every token of the value motif of a key motif that already occurred (with
  ``k_motif_size``-token test keys few keys repeat, so the final query dominates the score,
  as in MAD). Train rows draw key lengths from ``1..k_motif_size`` (so shorter keys can be
  prefixes of longer ones: the "fuzzy" part); key and value vocabularies are disjoint, so
  motif boundaries are always recoverable.
* **selective_copying**: data tokens ``[0, V-2)``, blank ``V-2``, copy token ``V-1``.
  ``num_tokens_to_copy`` data tokens with ``seq_len - 2*copy - 1`` blanks scattered among
  them (each blank lands before a uniformly chosen data token, as MAD's ``np.insert`` does,
  so the last data token always sits right before the copy token), then the copy token,
  then ``copy`` blanks; the targets at those last ``copy`` positions are the data tokens in
  order (``T = seq_len``, not shifted, as in MAD: the model emits the copy while its inputs
  are blanks, without seeing its own outputs).
* **compression** (causal re-definition, see below): data ``[0, V-1)``, marker ``V-1``.
* **memorization**: keys ``[0, (V-1)//2)``, values ``[(V-1)//2, V-1)``, insert token ``V-1``.
  One fixed random injective key->value map (seeded by ``spec.seed``) shared by the whole
  task. Rows are ``seq_len//2`` pairs ``key, insert`` with the target at the insert token
  being the key's value; values never appear in the inputs, so they must be stored in the
  weights. Train and test query the *same* map with different sequences (that is the task).

**Training targets.** MAD trains the three recall tasks on every next token (``targets =
inputs`` shifted, keys, first-seen values, pad and noise included) and scores the test set
only on the recalled values; selective copying, compression and memorization use the same
mask for train and test. ``make_mad`` follows that by default (``train_targets="all"``);
``train_targets="answers"`` puts the test mask on the training set too.

**Compression.** MAD encodes ``seq_len - 1`` random tokens plus a compression token with the
architecture under test, keeps only the last position's vector, and decodes every token from
that vector plus a position embedding with a small per-position MLP (an auto-encoder, so every
architecture — attention included — must pass the sequence through one ``d``-dim vector). A
causal LM has no separate decoder, so here the row is ``x_1..x_L, C, C, ..., C`` (``L =
seq_len - 1`` data tokens, then ``L`` copies of the marker ``C = V-1``; ``T = 2L``) and the
target at the ``i``-th marker is ``x_i``. The inputs after the first marker carry no
information about ``x`` and the model never sees its own reconstruction, so everything it
emits must come from what it kept at the marker: for a recurrent/test-time-memory model that
is its fixed-size state — the bottleneck MAD measures. Difference from MAD: attention (or any
model with access to its whole past) can look back at ``x`` instead of compressing it, so for
those models this is a positional copy task; MAD's marker token is also reconstructed
(trivially), ours is not scored.

**Deviations from mad-lab, all deliberate:** seeded torch generators instead of per-instance
numpy draws (MAD's selective-copying blank positions even use the global unseeded numpy RNG);
the noisy-recall guaranteed pair is drawn among context slots (MAD's can fall on the final
query slot); the fuzzy probe pair is always inserted into the context (MAD occasionally ends the
context before the probe's position, leaving the final query unanswerable but scored); the
test set is regenerated until it has ``num_test`` rows none of whose input sequences occurs in
the training set (MAD only warns about leakage).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ..spec.task import (
    MAD_BASELINES,
    MAD_GRID,
    CompressionTask,
    FuzzyInContextRecallTask,
    InContextRecallTask,
    MemorizationTask,
    NoisyInContextRecallTask,
    SelectiveCopyingTask,
    mad_settings,
)
from .base import IGNORE, Task, TaskError, TokenDataset, generator, row_digests

TrainTargets = Literal["all", "answers"]

MAD_SOURCE = "athms/mad-lab mad/data/instances.py, mad/configs.py, configs/tasks/*.yml"


# --------------------------------------------------------------------------- helpers


def _distinct_tuples(pool: int, size: int, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """``[*shape, size]`` ordered tuples of distinct integers from ``[0, pool)``, uniform over
    all such tuples (any prefix of one is a uniform shorter tuple)."""
    picks: list[Tensor] = []
    for i in range(size):
        r = torch.randint(0, pool - i, shape, generator=gen)
        x = r
        for _ in range(i):  # x = the r-th integer not picked: fixed point of r + #{p <= x}
            x = r + sum((p <= x).long() for p in picks)
        picks.append(x)
    return torch.stack(picks, -1)


def _first_occurrence(codes: Tensor) -> Tensor:
    """For ``[N, S]`` codes: the index of the first slot in the same row with the same code."""
    n, s = codes.shape
    sorted_codes, order = torch.sort(codes, dim=1, stable=True)
    start = torch.ones(n, s, dtype=torch.bool)
    start[:, 1:] = sorted_codes[:, 1:] != sorted_codes[:, :-1]
    pos = torch.arange(s).expand(n, s)
    group_first = torch.where(start, pos, torch.zeros_like(pos)).cummax(dim=1).values
    first = torch.empty_like(order)
    first.scatter_(1, order, order.gather(1, group_first))
    return first


def _shifted(raw: Tensor, raw_targets: Tensor, scored_all: bool) -> TokenDataset:
    """A raw token stream as next-token data: inputs ``raw[:, :-1]``; targets the next token
    everywhere (``scored_all``) or the answer mask ``raw_targets[:, 1:]``."""
    targets = raw[:, 1:] if scored_all else raw_targets[:, 1:]
    return TokenDataset(raw[:, :-1].contiguous(), targets.contiguous())


def _check(ok: bool, task: str, message: str) -> None:
    if not ok:
        raise TaskError(f"{task}: {message}")


# --------------------------------------------------------------------------- recall


def _recall_layout(spec: InContextRecallTask | NoisyInContextRecallTask) -> dict[str, int]:
    # the noisy task reserves its noise vocabulary even at frac_noise 0 (as MAD does)
    noise = spec.noise_vocab_size if isinstance(spec, NoisyInContextRecallTask) else 0
    content = spec.vocab_size - (0 if spec.multi_query else 1) - noise
    return {"keys": content // 2, "content": content, "noise": noise}


def _recall_rows(spec: InContextRecallTask | NoisyInContextRecallTask, n: int,
                 gen: torch.Generator, *, scored_all: bool) -> TokenDataset:
    lay = _recall_layout(spec)
    nk, ns, n_noise = lay["keys"], lay["content"], lay["noise"]
    frac = getattr(spec, "frac_noise", 0.0)
    ctx = spec.seq_len // 2 - 1  # context pairs; one more pair is the final query
    keys = torch.randint(0, nk, (n, ctx), generator=gen)
    value_of = torch.randint(nk, ns, (n, nk), generator=gen)  # per-sequence map
    values = value_of.gather(1, keys)
    slot = torch.arange(ctx)
    if frac > 0:
        noise = torch.rand(n, ctx, generator=gen) < frac
        noise[torch.arange(n), torch.randint(0, ctx, (n,), generator=gen)] = False
        noise_tok = torch.randint(ns, ns + n_noise, (n, ctx, 2), generator=gen)
    else:
        noise = torch.zeros(n, ctx, dtype=torch.bool)
    presented = torch.zeros(n, nk + 1)
    presented.scatter_(1, torch.where(noise, nk, keys), 1.0)
    query = torch.multinomial(presented[:, :nk], 1, generator=gen)  # uniform over keys seen
    answer = value_of.gather(1, query)
    body = 2 * ctx
    raw = torch.empty(n, body + (2 if spec.multi_query else 3), dtype=torch.long)
    if frac > 0:
        raw[:, 0:body:2] = torch.where(noise, noise_tok[..., 0], keys)
        raw[:, 1:body:2] = torch.where(noise, noise_tok[..., 1], values)
    else:
        raw[:, 0:body:2], raw[:, 1:body:2] = keys, values
    if not spec.multi_query:
        raw[:, -3] = spec.vocab_size - 1  # copy token before the final query
    raw[:, -2:] = torch.cat([query, answer], 1)
    if scored_all:
        return _shifted(raw, raw, True)
    raw_t = torch.full_like(raw, IGNORE)
    if spec.multi_query:  # score the value of every key that already occurred
        codes = torch.where(noise, -1 - slot, keys)  # noise slots never match a key
        repeat = (_first_occurrence(codes) < slot) & ~noise
        raw_t[:, 1:body:2] = torch.where(repeat, values, IGNORE)
    raw_t[:, -1:] = answer
    return _shifted(raw, raw_t, scored_all)


def _check_recall(spec: InContextRecallTask | NoisyInContextRecallTask) -> dict[str, object]:
    lay = _recall_layout(spec)
    _check(spec.seq_len % 2 == 0, spec.name, f"seq_len must be even (got {spec.seq_len})")
    _check(lay["keys"] >= 1 and lay["content"] - lay["keys"] >= 1, spec.name,
           f"vocab_size {spec.vocab_size} leaves no room for keys and values")
    nk, ns = lay["keys"], lay["content"]
    info: dict[str, object] = {
        "key_tokens": [0, nk], "value_tokens": [nk, ns],
        "row_len": spec.seq_len - 1 if spec.multi_query else spec.seq_len,
        "multi_query": spec.multi_query,
    }
    if lay["noise"]:
        info["noise_tokens"] = [ns, ns + lay["noise"]]
        info["frac_noise"] = spec.frac_noise
    if not spec.multi_query:
        info["copy_token"] = spec.vocab_size - 1
    return info


# --------------------------------------------------------------------------- fuzzy recall


def _fuzzy_layout(spec: FuzzyInContextRecallTask) -> dict[str, int]:
    content = spec.vocab_size - (1 if spec.multi_query else 2)
    return {"keys": content // 2, "content": content,
            "pad": spec.vocab_size - 1 if spec.multi_query else spec.vocab_size - 2}


def _fuzzy_rows(spec: FuzzyInContextRecallTask, n: int, gen: torch.Generator, *,
                test: bool, scored_all: bool) -> TokenDataset:
    lay = _fuzzy_layout(spec)
    nk, ns, pad = lay["keys"], lay["content"], lay["pad"]
    km, vm, seq = spec.k_motif_size, spec.v_motif_size, spec.seq_len
    max_slots = (seq - 2 - (km + vm)) // 2 + 2  # > the most pairs (length >= 2) that fit
    radix = torch.tensor([(nk + 1) ** i for i in range(km)])
    rows = torch.arange(n)

    def sizes(top: int, shape: tuple[int, ...], fixed: bool) -> Tensor:
        if fixed:
            return torch.full(shape, top, dtype=torch.long)
        return torch.randint(1, top + 1, shape, generator=gen)

    def code(tokens: Tensor, size: Tensor) -> Tensor:  # unique id of a key motif
        live = torch.arange(km) < size.unsqueeze(-1)
        return (torch.where(live, tokens, nk) * radix).sum(-1)

    # the probe pair (queried at the end, planted once in the context)
    pk_size, pv_size = sizes(km, (n,), test), sizes(vm, (n,), False)
    pk = _distinct_tuples(nk, km, (n,), gen)
    pv = _distinct_tuples(ns - nk, vm, (n,), gen) + nk
    probe_len = pk_size + pv_size
    limit = seq - probe_len - (km + vm)
    probe_at = (torch.rand(n, generator=gen) * (seq - 2 * probe_len)).long()
    p_code = code(pk, pk_size)

    def lay_out(k_code: Tensor, k_size: Tensor, v_size: Tensor):
        first = _first_occurrence(k_code)
        v_len = v_size.gather(1, first)
        length = k_size + v_len
        cum = length.cumsum(1)
        return first, v_len, cum - length, cum[:, -1]

    def context(n_slots: int):
        """Candidate pairs for ``n_slots`` slots (a key's value is the one drawn at its first
        occurrence), the probe planted, and the pairs that fit the context."""
        k_size, v_size = sizes(km, (n, n_slots), test), sizes(vm, (n, n_slots), False)
        k_tok = _distinct_tuples(nk, km, (n, n_slots), gen)
        v_tok = _distinct_tuples(ns - nk, vm, (n, n_slots), gen) + nk
        k_code = code(k_tok, k_size)
        is_probe = k_code == p_code.unsqueeze(1)  # the probe key keeps the probe value
        v_tok = torch.where(is_probe.unsqueeze(-1), pv.unsqueeze(1), v_tok)
        v_size = torch.where(is_probe, pv_size.unsqueeze(1), v_size)
        _, _, start, _ = lay_out(k_code, k_size, v_size)
        # the probe replaces the first pair starting at or after probe_at (MAD's insertion
        # point), or the last pair of the context if the context ends before it
        last = (start < limit.unsqueeze(1)).sum(1) - 1
        p = torch.minimum((start < probe_at.unsqueeze(1)).sum(1), last)
        k_tok[rows, p], k_size[rows, p], k_code[rows, p] = pk, pk_size, p_code
        v_tok[rows, p], v_size[rows, p] = pv, pv_size
        first, v_len, start, total = lay_out(k_code, k_size, v_size)
        v_eff = v_tok.gather(1, first.unsqueeze(-1).expand(-1, -1, vm))
        used = start < limit.unsqueeze(1)
        repeat = (first < torch.arange(n_slots)) & used
        return k_tok, k_size, v_eff, v_len, start, used, repeat, bool((total >= limit).all())

    # usually ~1.25x the expected number of pairs suffices; else every slot that could fit
    mean_pair = (km if test else (km + 1) / 2) + (vm + 1) / 2
    guess = min(max_slots, int(1.25 * (seq - km - vm) / mean_pair) + 4)
    k_tok, k_size, v_eff, v_len, start, used, repeat, covered = context(guess)
    if not covered:
        k_tok, k_size, v_eff, v_len, start, used, repeat, _ = context(max_slots)

    n_used = used.sum(1)
    end = (start + k_size + v_len).gather(1, (n_used - 1).unsqueeze(1)).squeeze(1)
    extra = 0 if spec.multi_query else 1
    offset = seq + 1 - (end + extra + probe_len)  # left padding
    raw = torch.full((n, seq + 2), pad, dtype=torch.long)
    raw_t = torch.full((n, seq + 2), IGNORE, dtype=torch.long)
    trash = seq + 1  # an extra column that receives the writes of unused motif positions

    def put(dest: Tensor, pos: Tensor, live: Tensor, tokens: Tensor) -> None:
        dest.scatter_(1, torch.where(live, pos, trash).reshape(n, -1), tokens.reshape(n, -1))

    k_pos = offset.view(n, 1, 1) + start.unsqueeze(-1) + torch.arange(km)
    k_live = used.unsqueeze(-1) & (torch.arange(km) < k_size.unsqueeze(-1))
    put(raw, k_pos, k_live, k_tok)
    v_pos = offset.view(n, 1, 1) + (start + k_size).unsqueeze(-1) + torch.arange(vm)
    v_live = used.unsqueeze(-1) & (torch.arange(vm) < v_len.unsqueeze(-1))
    put(raw, v_pos, v_live, v_eff)
    if spec.multi_query:
        put(raw_t, v_pos, v_live & repeat.unsqueeze(-1), v_eff)
    # the final query: [copy token,] probe key, probe value (scored)
    q = offset + end
    if not spec.multi_query:
        raw[rows, q] = spec.vocab_size - 1
        q = q + 1
    put(raw, q.unsqueeze(1) + torch.arange(km), torch.arange(km) < pk_size.unsqueeze(1), pk)
    pv_pos = (q + pk_size).unsqueeze(1) + torch.arange(vm)
    pv_live = torch.arange(vm) < pv_size.unsqueeze(1)
    put(raw, pv_pos, pv_live, pv)
    put(raw_t, pv_pos, pv_live, pv)
    return _shifted(raw[:, :trash], raw_t[:, :trash], scored_all)


def _check_fuzzy(spec: FuzzyInContextRecallTask) -> dict[str, object]:
    lay = _fuzzy_layout(spec)
    nk, ns = lay["keys"], lay["content"]
    km, vm = spec.k_motif_size, spec.v_motif_size
    _check(nk >= km and ns - nk >= vm, spec.name,
           f"vocab_size {spec.vocab_size} gives {nk} key and {ns - nk} value tokens: too few "
           f"for motifs of {km} and {vm} distinct tokens")
    _check(spec.seq_len > 2 * (km + vm), spec.name,
           f"seq_len must exceed 2*(k_motif_size + v_motif_size) = {2 * (km + vm)}")
    _check((nk + 1) ** km < 2**62, spec.name, "key motif space too large")
    info: dict[str, object] = {
        "key_tokens": [0, nk], "value_tokens": [nk, ns], "pad_token": lay["pad"],
        "k_motif_size": km, "v_motif_size": vm, "row_len": spec.seq_len,
        "multi_query": spec.multi_query, "test_key_motif_size": km,
    }
    if not spec.multi_query:
        info["copy_token"] = spec.vocab_size - 1
    return info


# --------------------------------------------------------------------------- copying etc.


def _selective_copy_rows(spec: SelectiveCopyingTask, n: int, gen: torch.Generator
                         ) -> TokenDataset:
    v, seq, c = spec.vocab_size, spec.seq_len, spec.num_tokens_to_copy
    n_blank = seq - 2 * c - 1
    data = torch.randint(0, v - 2, (n, c), generator=gen)
    # each blank lands before one of the c data tokens, uniformly (as MAD's np.insert does,
    # so the last data token always sits right before the copy token)
    gap = torch.randint(0, c, (n, n_blank), generator=gen)
    before = torch.zeros(n, c, dtype=torch.long).scatter_add_(1, gap, torch.ones_like(gap))
    pos = torch.arange(c) + before.cumsum(1)
    inputs = torch.full((n, seq), v - 2, dtype=torch.long)
    inputs.scatter_(1, pos, data)
    inputs[:, seq - c - 1] = v - 1
    targets = torch.full((n, seq), IGNORE, dtype=torch.long)
    targets[:, seq - c:] = data
    return TokenDataset(inputs, targets)


def _compression_rows(spec: CompressionTask, n: int, gen: torch.Generator) -> TokenDataset:
    v, length = spec.vocab_size, spec.seq_len - 1
    data = torch.randint(0, v - 1, (n, length), generator=gen)
    inputs = torch.cat([data, torch.full((n, length), v - 1, dtype=torch.long)], 1)
    targets = torch.cat([torch.full((n, length), IGNORE, dtype=torch.long), data], 1)
    return TokenDataset(inputs, targets)


def memorization_map(spec: MemorizationTask) -> Tensor:
    """The task's fixed key->value map: ``map[k]`` is key ``k``'s value (a random injection
    of the ``(V-1)//2`` keys into the value tokens, seeded by ``spec.seed`` only)."""
    nk, ns = (spec.vocab_size - 1) // 2, spec.vocab_size - 1
    gen = generator(spec.seed, spec.name, "map")
    return torch.randperm(ns - nk, generator=gen)[:nk] + nk


def _memorization_rows(spec: MemorizationTask, kv: Tensor, n: int, gen: torch.Generator
                       ) -> TokenDataset:
    pairs = spec.seq_len // 2
    keys = torch.randint(0, kv.numel(), (n, pairs), generator=gen)
    insert = torch.full_like(keys, spec.vocab_size - 1)
    inputs = torch.stack([keys, insert], -1).reshape(n, 2 * pairs)
    targets = torch.stack([torch.full_like(keys, IGNORE), kv[keys]], -1).reshape(n, 2 * pairs)
    return TokenDataset(inputs, targets)


# --------------------------------------------------------------------------- splits


def distinct_inputs(spec) -> int | None:
    """The exact number of distinct input rows the task's generator can produce, where it
    is a closed form (compression, memorization, selective copying), else None."""
    v = spec.vocab_size
    if isinstance(spec, CompressionTask):
        return (v - 1) ** (spec.seq_len - 1)
    if isinstance(spec, MemorizationTask):
        return ((v - 1) // 2) ** (spec.seq_len // 2)
    if isinstance(spec, SelectiveCopyingTask):  # data tokens x where the blanks fall
        c = spec.num_tokens_to_copy
        return (v - 2) ** c * math.comb(spec.seq_len - 2 * c - 1 + c - 1, c - 1)
    return None


def _test_split(make: Callable[[int, torch.Generator], TokenDataset], train: TokenDataset,
                spec, rounds: int = 8) -> TokenDataset:
    """``num_test`` rows from the test seed whose input sequences do not occur in ``train``
    (rows that do are dropped and replaced by rows from further seeds)."""
    seen = set(row_digests(train.inputs))
    parts: list[TokenDataset] = []
    have = 0
    for attempt in range(rounds):
        salt = ("test",) if attempt == 0 else ("test", attempt)
        ds = make(spec.num_test - have, generator(spec.seed, spec.name, *salt))
        keep = torch.tensor([d not in seen for d in row_digests(ds.inputs)], dtype=torch.bool)
        parts.append(TokenDataset(ds.inputs[keep], ds.targets[keep]))
        have += int(keep.sum())
        if have >= spec.num_test:
            break
    if have == 0:
        n = distinct_inputs(spec)
        few = f"only {n:,} distinct input sequences" if n is not None else \
            "too few distinct sequences"
        raise TaskError(f"{spec.name}: every test sequence also occurs in the training set "
                        f"(num_train {spec.num_train}); the setting has {few}: raise vocab_size "
                        "or seq_len, or lower num_train")
    return TokenDataset(torch.cat([p.inputs for p in parts]),
                        torch.cat([p.targets for p in parts]))


def make_mad(spec, train_targets: TrainTargets = "all") -> Task:
    """Generate one MAD task from its spec: the training set from ``generator(seed, name,
    "train")``, the test set ("test") from ``generator(seed, name, "test")`` with no input
    sequence shared with the training set. ``train_targets`` ("all": MAD's next-token
    training on the recall tasks; "answers": the test mask) only affects the recall tasks."""
    if train_targets not in ("all", "answers"):
        raise ValueError(f"train_targets must be 'all' or 'answers' (got {train_targets!r})")
    scored_all = train_targets == "all"
    v = spec.vocab_size
    train_gen = generator(spec.seed, spec.name, "train")
    info: dict[str, object] = {"task": spec.name, "vocab_size": v, "seq_len": spec.seq_len,
                               "seed": spec.seed, "source": MAD_SOURCE}
    recall_family = isinstance(
        spec, InContextRecallTask | NoisyInContextRecallTask | FuzzyInContextRecallTask)

    if isinstance(spec, InContextRecallTask | NoisyInContextRecallTask):
        info.update(_check_recall(spec))

        def train_make(n, g):
            return _recall_rows(spec, n, g, scored_all=scored_all)

        def test_make(n, g):
            return _recall_rows(spec, n, g, scored_all=False)

    elif isinstance(spec, FuzzyInContextRecallTask):
        info.update(_check_fuzzy(spec))

        def train_make(n, g):
            return _fuzzy_rows(spec, n, g, test=False, scored_all=scored_all)

        def test_make(n, g):
            return _fuzzy_rows(spec, n, g, test=True, scored_all=False)

    elif isinstance(spec, SelectiveCopyingTask):
        c = spec.num_tokens_to_copy
        _check(v >= 3, spec.name, "vocab_size must be >= 3 (data, blank and copy tokens)")
        _check(spec.seq_len > 2 * c + 1, spec.name,
               f"seq_len must exceed 2*num_tokens_to_copy + 1 = {2 * c + 1}")
        info.update({"data_tokens": [0, v - 2], "blank_token": v - 2, "copy_token": v - 1,
                     "num_tokens_to_copy": c, "row_len": spec.seq_len})

        def train_make(n, g):
            return _selective_copy_rows(spec, n, g)

        test_make = train_make

    elif isinstance(spec, CompressionTask):
        info.update({"data_tokens": [0, v - 1], "marker_token": v - 1,
                     "compressed_len": spec.seq_len - 1, "row_len": 2 * (spec.seq_len - 1),
                     "causal": "x_1..x_L then L markers; target x_i at the i-th marker"})

        def train_make(n, g):
            return _compression_rows(spec, n, g)

        test_make = train_make

    elif isinstance(spec, MemorizationTask):
        kv = memorization_map(spec)
        nk = kv.numel()
        info.update({"key_tokens": [0, nk], "value_tokens": [nk, v - 1], "insert_token": v - 1,
                     "row_len": 2 * (spec.seq_len // 2), "kv_map_shared": True})

        def train_make(n, g):
            return _memorization_rows(spec, kv, n, g)

        test_make = train_make

    else:
        raise ValueError(f"not a MAD task spec: {type(spec).__name__}")

    train = train_make(spec.num_train, train_gen)
    test = _test_split(test_make, train, spec)
    info.update({"num_train": len(train), "num_test": len(test),
                 "train_targets": train_targets if recall_family else "answers"})
    return Task(name=spec.name, vocab_size=v, train=train, evals={"test": test},
                kind="recall", unit="token", info=info)


__all__ = ["MAD_BASELINES", "MAD_GRID", "distinct_inputs", "make_mad", "mad_settings",
           "memorization_map"]
