"""MAD tasks: shapes, label masks, seeding, train/test disjointness, and each task's defining
property checked from the generated tokens alone (parsing rows with plain Python)."""

from __future__ import annotations

import pytest
import torch

from atlas_search.spec.task import (
    CompressionTask,
    FuzzyInContextRecallTask,
    InContextRecallTask,
    MemorizationTask,
    NoisyInContextRecallTask,
    SelectiveCopyingTask,
    mad_row_len,
)
from atlas_search.tasks import make_task
from atlas_search.tasks.base import IGNORE, TaskError, generator
from atlas_search.tasks.mad import (
    MAD_BASELINES,
    MAD_GRID,
    distinct_inputs,
    mad_settings,
    make_mad,
    memorization_map,
)

SMALL = {"num_train": 1500, "num_test": 300}
CLASSES = {
    "in_context_recall": InContextRecallTask,
    "fuzzy_in_context_recall": FuzzyInContextRecallTask,
    "noisy_in_context_recall": NoisyInContextRecallTask,
    "selective_copying": SelectiveCopyingTask,
    "compression": CompressionTask,
    "memorization": MemorizationTask,
}
EXPECTED_LEN = {  # row length at the spec defaults (MAD baselines)
    "in_context_recall": 127, "fuzzy_in_context_recall": 128, "noisy_in_context_recall": 127,
    "selective_copying": 256, "compression": 62, "memorization": 32,
}

_CACHE: dict = {}


def task_for(name: str, **kw):
    key = (name, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = make_mad(CLASSES[name](**{**SMALL, **kw}))
    return _CACHE[key]


def rows(x: torch.Tensor, k: int = 120) -> list[list[int]]:
    return x[:k].tolist()


# ----------------------------------------------------------------- common properties


@pytest.mark.parametrize("name", list(CLASSES))
def test_shapes_vocab_and_dispatch(name):
    task = make_task(CLASSES[name](num_train=64, num_test=32))
    assert task.name == name and task.kind == "recall" and list(task.evals) == ["test"]
    test = task.evals["test"]
    assert task.train.inputs.shape == (64, EXPECTED_LEN[name])
    assert test.inputs.shape == (32, EXPECTED_LEN[name])
    assert task.train.inputs.dtype == torch.long and test.targets.dtype == torch.long
    assert task.vocab_size == CLASSES[name]().vocab_size
    for ds in (task.train, test):
        assert int(ds.inputs.min()) >= 0 and int(ds.inputs.max()) < task.vocab_size
        scored = ds.targets[ds.targets != IGNORE]
        assert scored.numel() > 0
        assert int(scored.min()) >= 0 and int(scored.max()) < task.vocab_size
    assert task.info["num_test"] == 32 and task.info["row_len"] == EXPECTED_LEN[name]


@pytest.mark.parametrize("name", list(CLASSES))
def test_seed_determinism(name):
    spec = CLASSES[name](num_train=200, num_test=50, seed=3)
    a, b = make_mad(spec), make_mad(spec)
    c = make_mad(spec.model_copy(update={"seed": 4}))
    for x, y in ((a.train, b.train), (a.evals["test"], b.evals["test"])):
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert not torch.equal(a.evals["test"].inputs, c.evals["test"].inputs)
    assert not torch.equal(a.train.inputs[:50], a.evals["test"].inputs)  # train != test seed


@pytest.mark.parametrize("name", list(CLASSES))
def test_no_train_test_overlap(name):
    task = task_for(name)
    train = {tuple(r) for r in task.train.inputs.tolist()}
    test = [tuple(r) for r in task.evals["test"].inputs.tolist()]
    assert len(test) == SMALL["num_test"]
    assert not train.intersection(test)


def test_overlap_is_refilled_and_exhaustion_raises():
    # 3**7 = 2187 possible compression inputs: many test draws collide with training rows
    spec = CompressionTask(vocab_size=4, seq_len=8, num_train=1000, num_test=200)
    task = make_mad(spec)
    train = {tuple(r) for r in task.train.inputs.tolist()}
    test = [tuple(r) for r in task.evals["test"].inputs.tolist()]
    assert len(test) == 200 and not train.intersection(test)
    # 3**3 = 27 possible inputs, all in a 5000-row training set: no test set is possible
    with pytest.raises(TaskError, match="only 27 distinct input sequences"):
        make_mad(CompressionTask(vocab_size=4, seq_len=4, num_train=5000, num_test=10))


@pytest.mark.parametrize("name,fields,count", [
    ("compression", {"vocab_size": 4, "seq_len": 4}, 3**3),
    ("memorization", {"vocab_size": 8, "seq_len": 5}, 3**2),
    # 3 data tokens from 2 symbols, 1 blank before any of them: 2**3 * 3
    ("selective_copying", {"vocab_size": 4, "seq_len": 8, "num_tokens_to_copy": 3}, 24),
])
def test_distinct_inputs_is_the_generators_count(name, fields, count):
    from atlas_search.tasks import mad

    spec = CLASSES[name](**fields, num_train=3000, num_test=1)
    assert distinct_inputs(spec) == count
    gen = generator(0, "count")  # make_mad would raise: 3000 draws cover every sequence
    rows = (mad._memorization_rows(spec, memorization_map(spec), 3000, gen)
            if name == "memorization" else
            {"compression": mad._compression_rows,
             "selective_copying": mad._selective_copy_rows}[name](spec, 3000, gen))
    assert len({tuple(r) for r in rows.inputs.tolist()}) == count


def test_train_targets_option_and_errors():
    spec = InContextRecallTask(num_train=100, num_test=20)
    full, answers = make_mad(spec), make_mad(spec, train_targets="answers")
    assert torch.equal(full.train.inputs, answers.train.inputs)
    assert (full.train.targets != IGNORE).all()  # MAD: every next token on the recall tasks
    assert torch.equal(full.train.targets[:, :-1], full.train.inputs[:, 1:])
    assert (answers.train.targets != IGNORE).float().mean() < 0.5
    assert full.info["train_targets"] == "all" and answers.info["train_targets"] == "answers"
    with pytest.raises(ValueError, match="train_targets"):
        make_mad(spec, train_targets="keys")
    with pytest.raises(ValueError, match="even"):
        make_mad(InContextRecallTask(seq_len=33, num_train=10, num_test=10))
    with pytest.raises(ValueError, match="motif"):
        make_mad(FuzzyInContextRecallTask(vocab_size=6, num_train=10, num_test=10))
    with pytest.raises(ValueError, match="num_tokens_to_copy"):
        make_mad(SelectiveCopyingTask(seq_len=20, num_tokens_to_copy=10, num_train=10,
                                      num_test=10))


# ----------------------------------------------------------------- in-context recall


def check_recall_row(inp, tgt, *, nk, ns, noise_lo=None, final_only=False):
    """Walk a recall row's pairs: keys at even positions; a scored target must be the value
    first bound to that key earlier in the row, and every repeated key must be scored."""
    bound: dict[int, int] = {}
    for t in range(0, len(inp), 2):
        k = inp[t]
        if noise_lo is not None and k >= noise_lo:  # a noise slot: two noise tokens
            assert inp[t + 1] >= noise_lo and tgt[t] == IGNORE and tgt[t + 1] == IGNORE
            continue
        assert 0 <= k < nk, (t, k)
        nxt = inp[t + 1] if t + 1 < len(inp) else tgt[t]
        assert nk <= nxt < ns
        repeated = k in bound
        should_score = (t == len(inp) - 1) if final_only else repeated
        if should_score:
            assert repeated and tgt[t] == bound[k] == nxt
        else:
            assert tgt[t] == IGNORE
        bound.setdefault(k, nxt)
        if t + 1 < len(inp):
            assert tgt[t + 1] == IGNORE  # the position after a value is never scored


def test_in_context_recall_property():
    task = task_for("in_context_recall")
    test = task.evals["test"]
    for inp, tgt in zip(rows(test.inputs), rows(test.targets), strict=True):
        check_recall_row(inp, tgt, nk=8, ns=16)
    answers = make_mad(InContextRecallTask(**SMALL), train_targets="answers").train
    for inp, tgt in zip(rows(answers.inputs), rows(answers.targets), strict=True):
        check_recall_row(inp, tgt, nk=8, ns=16)
    # the final position always asks for a key seen before; keys repeat often at V=16
    assert (test.targets[:, -1] != IGNORE).all()
    assert (test.targets != IGNORE).sum(1).float().mean() > 40


def test_in_context_recall_single_query():
    spec = InContextRecallTask(multi_query=False, **SMALL)
    task = make_mad(spec, train_targets="answers")
    assert task.train.inputs.shape[1] == 128 and task.info["copy_token"] == 15
    for ds in (task.train, task.evals["test"]):
        assert ((ds.targets != IGNORE).sum(1) == 1).all()
        assert (ds.inputs[:, -2] == 15).all()  # copy token before the query key
        for inp, tgt in zip(rows(ds.inputs), rows(ds.targets), strict=True):
            k = inp[-1]
            firsts = [inp[t + 1] for t in range(0, len(inp) - 2, 2) if inp[t] == k]
            assert 0 <= k < 7 and firsts and tgt[-1] == firsts[0]


def test_noisy_recall_property():
    task = task_for("noisy_in_context_recall")
    ns = 16  # 32 - 16 noise tokens; keys [0, 8), values [8, 16), noise [16, 32)
    assert task.info["noise_tokens"] == [16, 32]
    test = task.evals["test"]
    for inp, tgt in zip(rows(test.inputs), rows(test.targets), strict=True):
        check_recall_row(inp, tgt, nk=8, ns=ns, noise_lo=ns)
    answers = make_mad(NoisyInContextRecallTask(**SMALL), train_targets="answers").train
    for ds in (test, answers):
        noise = ds.inputs >= ns
        assert noise.any()
        assert (ds.targets[noise] == IGNORE).all()  # noise positions are never scored
        scored = ds.targets[ds.targets != IGNORE]
        assert ((scored >= 8) & (scored < ns)).all()  # no target is a noise token
    slots = task.train.inputs[:, 0:-1:2] >= ns  # key position of each context slot
    assert torch.equal(slots, task.train.inputs[:, 1::2] >= ns)  # noise comes in pairs
    assert abs(slots.float().mean().item() - 0.2) < 0.02
    heavy = make_mad(NoisyInContextRecallTask(frac_noise=0.8, **SMALL)).train
    assert abs((heavy.inputs[:, 0:-1:2] >= ns).float().mean().item() - 0.8) < 0.02


# ----------------------------------------------------------------- fuzzy recall


def parse_fuzzy(inp, last, *, nk, ns, pad):
    """Split a fuzzy row (inputs + the final target token) into (key, value) motifs by the
    key/value vocabularies; returns the motifs and each value token's input position."""
    raw = [*inp, last]
    i = 0
    while raw[i] == pad:
        i += 1
    pairs, cls = [], [0 if x < nk else 1 if x < ns else 2 for x in raw]
    while i < len(raw):
        j = i
        while j < len(raw) and cls[j] == 0:
            j += 1
        m = j
        while m < len(raw) and cls[m] == 1:
            m += 1
        assert j > i and m > j, f"no key/value motif at {i}: {raw[i:i + 8]}"
        pairs.append((tuple(raw[i:j]), tuple(raw[j:m]), list(range(j - 1, m - 1))))
        i = m
    return pairs


def check_fuzzy(ds, *, km, vm, test_keys):
    nk, ns, pad = 7, 15, 15  # V=16 (multi_query): 15 content tokens, pad 15
    key_sizes: list[int] = []
    value_sizes: list[int] = []
    for inp, tgt in zip(rows(ds.inputs), rows(ds.targets), strict=True):
        pairs = parse_fuzzy(inp, tgt[-1], nk=nk, ns=ns, pad=pad)
        bound: dict[tuple, tuple] = {}
        expected = [IGNORE] * len(inp)
        for n, (key, value, where) in enumerate(pairs):
            assert len(set(key)) == len(key) and len(set(value)) == len(value)
            assert 1 <= len(key) <= km and 1 <= len(value) <= vm
            key_sizes.append(len(key))
            value_sizes.append(len(value))
            if key in bound:
                assert bound[key] == value  # a key motif keeps its value motif
                for pos, tok in zip(where, value, strict=True):
                    expected[pos] = tok
            else:
                assert n < len(pairs) - 1  # the final query key was presented before
            bound.setdefault(key, value)
        assert tgt == expected  # exactly the repeated keys' value motifs are scored
    # motif lengths: values uniform in 1..vm; keys uniform in 1..km (train) or all km (test)
    assert fractions(value_sizes, vm) == pytest.approx([1 / vm] * vm, abs=0.05)
    expected_keys = [0.0] * (km - 1) + [1.0] if test_keys else [1 / km] * km
    assert fractions(key_sizes, km) == pytest.approx(expected_keys, abs=0.05)


def fractions(sizes: list[int], top: int) -> list[float]:
    return [sizes.count(s) / len(sizes) for s in range(1, top + 1)]


def test_fuzzy_recall_property():
    task = task_for("fuzzy_in_context_recall")
    check_fuzzy(task.evals["test"], km=3, vm=3, test_keys=True)
    answers = make_mad(FuzzyInContextRecallTask(**SMALL), train_targets="answers").train
    check_fuzzy(answers, km=3, vm=3, test_keys=False)
    assert torch.equal(task.train.targets[:, :-1], task.train.inputs[:, 1:])
    assert (task.train.inputs[:, 0] == 15).all()  # rows are left-padded


def test_fuzzy_other_motif_sizes_and_single_query():
    spec = FuzzyInContextRecallTask(vocab_size=32, k_motif_size=2, v_motif_size=4, **SMALL)
    task = make_mad(spec, train_targets="answers")
    nk, ns = 15, 31
    sizes = {"k": set(), "v": set()}
    for inp, tgt in zip(rows(task.train.inputs), rows(task.train.targets), strict=True):
        for key, value, _ in parse_fuzzy(inp, tgt[-1], nk=nk, ns=ns, pad=31):
            sizes["k"].add(len(key))
            sizes["v"].add(len(value))
    assert sizes == {"k": {1, 2}, "v": {1, 2, 3, 4}}
    single = make_mad(FuzzyInContextRecallTask(multi_query=False, **SMALL)).evals["test"]
    for inp, tgt in zip(rows(single.inputs), rows(single.targets), strict=True):
        scored = [t for t, y in enumerate(tgt) if y != IGNORE]
        assert scored == list(range(scored[0], len(tgt)))  # only the final value motif
        assert inp[scored[0] - 3] == 15  # copy token, then the 3-token query key


# ----------------------------------------------------------------- selective copying


def test_selective_copying_property():
    task = task_for("selective_copying")
    blank, copy, c = 14, 15, 16
    for ds in (task.train, task.evals["test"]):
        assert (ds.targets[:, :-c] == IGNORE).all() and (ds.targets[:, -c:] != IGNORE).all()
        assert (ds.inputs[:, -c - 1] == copy).all() and (ds.inputs[:, -c:] == blank).all()
        for inp, tgt in zip(rows(ds.inputs), rows(ds.targets), strict=True):
            data = [x for x in inp[:-c - 1] if x != blank]
            assert data == tgt[-c:]  # the targets are the non-blank tokens, in order
            assert all(0 <= x < blank for x in data) and copy not in inp[:-c - 1]
    # blanks are scattered: data positions vary across rows
    first = (task.train.inputs != blank).float().argmax(1)
    assert first.unique().numel() > 10


# ----------------------------------------------------------------- compression


def test_compression_property():
    task = task_for("compression")
    length, marker = 31, 15
    for ds in (task.train, task.evals["test"]):
        x, y = ds.inputs, ds.targets
        assert (x[:, :length] < marker).all() and (x[:, length:] == marker).all()
        assert (y[:, :length] == IGNORE).all()
        assert torch.equal(y[:, length:], x[:, :length])  # reproduce the sequence after C
    assert task.info["marker_token"] == marker and task.info["compressed_len"] == length


# ----------------------------------------------------------------- memorization


def test_memorization_property():
    task = task_for("memorization", num_train=256)
    insert, nk = 255, 127
    value_of: dict[int, int] = {}
    for ds in (task.train, task.evals["test"]):
        assert (ds.inputs[:, 1::2] == insert).all() and (ds.inputs[:, 0::2] < nk).all()
        assert (ds.targets[:, 0::2] == IGNORE).all()
        assert ((ds.targets[:, 1::2] >= nk) & (ds.targets[:, 1::2] < insert)).all()
        for k, v in zip(ds.inputs[:, 0::2].flatten().tolist(),
                        ds.targets[:, 1::2].flatten().tolist(), strict=True):
            assert value_of.setdefault(k, v) == v  # one value per key, train and test alike
    assert len(value_of) == nk  # every key occurs
    assert len(set(value_of.values())) == nk  # distinct keys have distinct values
    other = make_mad(MemorizationTask(seed=1, num_train=256, num_test=32))
    k = other.train.inputs[:, 0::2].flatten()
    v = other.train.targets[:, 1::2].flatten()
    assert any(value_of[a] != b for a, b in zip(k.tolist(), v.tolist(), strict=True))


# ----------------------------------------------------------------- protocol tables


def test_baselines_match_spec_defaults_and_grid():
    for name, cls in CLASSES.items():
        default = cls()
        for field, value in MAD_BASELINES[name].items():
            assert getattr(default, field) == value, (name, field)
    sizes = {name: len(changes) for name, changes in MAD_GRID.items()}
    assert sizes == {"in_context_recall": 10, "fuzzy_in_context_recall": 10,
                     "noisy_in_context_recall": 13, "selective_copying": 12,
                     "compression": 10, "memorization": 5}
    assert {"frac_noise": 0.8} in MAD_GRID["noisy_in_context_recall"]
    assert {"vocab_size": 8192} in MAD_GRID["memorization"]
    assert all(len(change) == 1 for changes in MAD_GRID.values() for change in changes)
    settings = mad_settings("selective_copying")
    assert settings[0] == MAD_BASELINES["selective_copying"] and len(settings) == 13
    assert settings[-1]["num_tokens_to_copy"] == 96 and settings[-1]["seq_len"] == 256


@pytest.mark.parametrize("name", list(CLASSES))
def test_every_grid_setting_generates(name):
    for setting in mad_settings(name):
        spec = CLASSES[name](**{**setting, "num_train": 16, "num_test": 8})
        task = make_mad(spec)
        assert len(task.evals["test"]) == 8 and task.vocab_size == setting["vocab_size"]
        assert task.train.seq_len == mad_row_len(name, setting) == task.info["row_len"]
        assert int(task.train.inputs.max()) < task.vocab_size
        assert (task.evals["test"].targets != IGNORE).any(1).all()
