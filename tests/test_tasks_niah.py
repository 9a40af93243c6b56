"""S-NIAH task generator: shapes, label masks, needle/answer consistency (parsed from the
sequences themselves), depth spread, haystack properties per variant, seeding, disjointness."""

from __future__ import annotations

import time

import pytest
import torch

from atlas_search.spec.task import SNIAHTask
from atlas_search.tasks import make_task
from atlas_search.tasks.base import IGNORE, generator, row_digests
from atlas_search.tasks.niah import (
    END,
    IS,
    NEEDLE,
    QUERY,
    VALUE_LEN,
    essay_chain,
    layout,
    make_niah,
    min_seq_len,
    niah_examples,
)

VARIANTS = ("passkey", "number", "uuid")


def _spec(variant: str, **kw) -> SNIAHTask:
    base = dict(variant=variant, num_train=400, num_test=150, test_lengths=[128, 256, 512])
    return SNIAHTask(**(base | kw))


@pytest.fixture(scope="module", params=VARIANTS)
def task(request):
    return make_niah(_spec(request.param))


def _parse(inputs: torch.Tensor, targets: torch.Tensor, variant: str, vocab_size: int = 256):
    """Parse every row by hand: the full token sequence is the inputs plus the last target.
    Returns per row (key, needle value, answer, filler, needle position)."""
    lay = layout(variant, vocab_size)
    m = VALUE_LEN[variant]
    klo, khi = lay["keys"]
    rows = []
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        s = x + [y[-1]]
        needles = [p for p, t in enumerate(s) if t == NEEDLE]
        queries = [p for p, t in enumerate(s) if t == QUERY]
        assert len(needles) == 1 and len(queries) == 1
        p, q = needles[0], queries[0]
        assert q == len(s) - (m + 3)  # the query closes the sequence
        key = s[p + 1]
        assert klo <= key < khi and s[p + 2] == IS and s[p + 3 + m] == END
        value = s[p + 3:p + 3 + m]
        assert s[q + 1] == key and s[q + 2] == IS
        answer = [t for t in y if t != IGNORE]
        filler = s[:p] + s[p + m + 4:q]
        rows.append((key, value, answer, filler, p))
    return rows


def test_shapes_and_eval_order(task):
    spec = _spec(task.info["variant"])
    assert task.name == "s_niah" and task.kind == "recall" and task.vocab_size == 256
    assert task.train.inputs.shape == (spec.num_train, spec.seq_len)
    assert list(task.evals) == ["test@128", "test@256", "test@512"]
    assert task.main_eval == "test@128"
    for length in spec.test_lengths:
        ds = task.evals[f"test@{length}"]
        assert ds.inputs.shape == ds.targets.shape == (spec.num_test, length)
        assert ds.inputs.dtype == ds.targets.dtype == torch.long
        assert int(ds.inputs.min()) >= 0 and int(ds.inputs.max()) < 256


def test_eval_order_follows_test_lengths():
    task = make_niah(_spec("passkey", test_lengths=[512, 128, 256], num_test=20))
    assert list(task.evals) == ["test@512", "test@128", "test@256"]
    assert task.main_eval == "test@512"


def test_label_mask_is_exactly_the_answer(task):
    m = VALUE_LEN[task.info["variant"]]
    assert task.info["value_len"] == m
    for ds in (task.train, *task.evals.values()):
        t = ds.seq_len
        scored = ds.targets != IGNORE
        expected = (torch.arange(t) >= t - m).expand_as(scored)
        assert torch.equal(scored, expected)
        # teacher forcing: every answer token but the last is the next input token
        assert torch.equal(ds.targets[:, t - m:t - 1], ds.inputs[:, t - m + 1:])
        assert (ds.inputs[:, t - m] == IS).all()  # v_1 is predicted at the query's IS
        assert (ds.inputs[:, t - m - 2] == QUERY).all()


def test_answer_is_the_needle_value(task):
    variant = task.info["variant"]
    lo, hi = task.info["layout"]["values"]
    flo, fhi = task.info["layout"]["filler"]
    for ds in (task.train, *task.evals.values()):
        rows = _parse(ds.inputs, ds.targets, variant)
        for _, value, answer, filler, _ in rows:
            assert answer == value
            assert all(lo <= t < hi for t in value)
            # the filler is filler words only: it never contains a value token
            assert all(flo <= t < fhi for t in filler)
        # the value sequence occurs exactly twice (needle and answer), never elsewhere
        for x, y, (_, value, _, _, _) in list(zip(ds.inputs.tolist(), ds.targets.tolist(),
                                                 rows, strict=True))[:50]:
            s = x + [y[-1]]
            m = len(value)
            hits = sum(s[i:i + m] == value for i in range(len(s) - m + 1))
            assert hits == 2


def test_values_keys_vary_and_match_variant(task):
    variant = task.info["variant"]
    rows = _parse(task.train.inputs, task.train.targets, variant)
    values = [tuple(v) for _, v, _, _, _ in rows]
    keys = {k for k, _, _, _, _ in rows}
    lo, hi = task.info["layout"]["values"]
    assert len(set(values)) > 0.95 * len(values)
    assert len(keys) > 10
    used = {t for v in values for t in v}
    if variant == "uuid":
        assert hi - lo == 16 and used == set(range(lo, hi))  # all 16 hex symbols appear
        assert task.info["layout"]["value_kind"] == "hex"
    else:
        assert hi - lo == 10 and used == set(range(lo, hi))  # the 10 digits
        assert all(v[0] != lo for v in values)  # no leading zero: a real number
    assert all(len(v) == {"passkey": 5, "number": 7, "uuid": 8}[variant] for v in values)


def test_needle_depth_varies(task):
    variant = task.info["variant"]
    for ds in (task.train, task.evals["test@512"]):
        rows = _parse(ds.inputs, ds.targets, variant)
        fill = len(rows[0][3])
        assert all(len(r[3]) == fill for r in rows)
        assert fill == task.info["filler_len"]["train" if ds is task.train else "test@512"]
        depth = torch.tensor([p / fill for *_, p in rows])
        assert (depth < 0.2).any() and ((depth > 0.4) & (depth < 0.6)).any()
        assert (depth > 0.8).any()
        assert len(set(depth.tolist())) > 0.25 * min(len(rows), fill)
        assert 0.4 < float(depth.mean()) < 0.6
    stats = task.info["depth_stats"]["train"]
    assert stats["min"] < 0.1 and stats["max"] > 0.9
    assert all(0.2 < s < 0.47 for s in stats["thirds"])


def _period(seq: list[int], max_period: int) -> int | None:
    for p in range(1, max_period + 1):
        if seq[p:] == seq[:-p]:
            return p
    return None


def test_passkey_filler_is_a_repeated_pattern():
    task = make_niah(_spec("passkey"))
    pattern = task.info["pattern"]
    assert 2 <= len(pattern) <= 8 and len(set(pattern)) == len(pattern)
    for ds in (task.train, *task.evals.values()):
        fillers = {tuple(r[3]) for r in _parse(ds.inputs, ds.targets, "passkey")}
        assert len(fillers) == 1  # the same haystack in every example
        filler = list(fillers.pop())
        assert _period(filler, 8) == len(pattern)
        assert filler[:len(pattern)] == pattern


@pytest.mark.parametrize("variant", ["number", "uuid"])
def test_essay_filler_is_markov_text(variant):
    task = make_niah(_spec(variant))
    lay = task.info["layout"]
    flo, fhi = lay["filler"]
    table = essay_chain(0, lay)
    allowed = {(a + flo, b + flo) for a, row in enumerate(table.tolist()) for b in row}
    successors: dict[int, set[int]] = {}
    fillers = []
    for ds in (task.train, task.evals["test@512"]):
        for *_, filler, _ in _parse(ds.inputs, ds.targets, variant):
            fillers.append(tuple(filler))
            assert _period(filler, 16) is None  # not a short repetition
            for a, b in zip(filler, filler[1:], strict=False):
                successors.setdefault(a, set()).add(b)
    # text: fresh per example, over most of the word alphabet, yet structured
    assert len(set(fillers)) == len(fillers)
    assert len(successors) > 0.8 * (fhi - flo)
    assert max(len(s) for s in successors.values()) <= 8
    # the needle is spliced into one chain run: every adjacent filler pair is a transition
    pairs = {(a, b) for a, bs in successors.items() for b in bs}
    assert pairs <= allowed


def test_determinism_and_seed():
    for variant in VARIANTS:
        small = dict(num_train=100, num_test=30, test_lengths=[128, 256])
        a, b = make_niah(_spec(variant, **small)), make_niah(_spec(variant, **small))
        c = make_niah(_spec(variant, seed=1, **small))
        for name in ("train", *a.evals):
            da = a.train if name == "train" else a.evals[name]
            db = b.train if name == "train" else b.evals[name]
            dc = c.train if name == "train" else c.evals[name]
            assert torch.equal(da.inputs, db.inputs) and torch.equal(da.targets, db.targets)
            assert not torch.equal(da.inputs, dc.inputs)
        assert a.info == b.info


def test_train_test_disjoint():
    task = make_niah(_spec("number", num_train=2000, num_test=500))
    seen = set(row_digests(task.train.inputs))
    for ds in task.evals.values():
        assert not seen & set(row_digests(ds.inputs))
    # a tiny space forces collisions: the test set at the training length drops them
    t = min_seq_len("passkey")
    spec = SNIAHTask(variant="passkey", vocab_size=32, seq_len=t, test_lengths=[t, 2 * t],
                     num_train=20000, num_test=2000)
    small = make_niah(spec)
    test = small.evals[f"test@{t}"]
    assert 1500 < len(test) < 2000  # collisions happened and were removed
    assert len(small.evals[f"test@{2 * t}"]) == 2000
    assert not set(row_digests(small.train.inputs)) & set(row_digests(test.inputs))


@pytest.mark.parametrize("variant", VARIANTS)
def test_small_vocab_and_min_length(variant):
    t = min_seq_len(variant)
    task = make_task(SNIAHTask(variant=variant, vocab_size=32, seq_len=t,
                               test_lengths=[t, 64], num_train=200, num_test=50))
    assert task.train.inputs.shape == (200, t)
    assert int(task.train.inputs.max()) < 32
    lay = task.info["layout"]
    ranges = [range(*lay[k]) for k in ("values", "keys", "filler")]
    assert sum(len(r) for r in ranges) + 4 == 32  # specials + disjoint alphabets tile V
    assert all(len(r) >= 1 for r in ranges)
    rows = _parse(task.evals["test@64"].inputs, task.evals["test@64"].targets, variant, 32)
    assert all(answer == value for _, value, answer, _, _ in rows)
    assert {len(r[3]) for r in _parse(task.train.inputs, task.train.targets, variant, 32)} == {1}
    # the spec refuses lengths the generator cannot fill (min_seq_len agrees with it)
    with pytest.raises(ValueError, match=f"at least {t} tokens"):
        make_niah(SNIAHTask(variant=variant, vocab_size=32, seq_len=t - 1,
                            test_lengths=[t], num_train=10, num_test=10))
    with pytest.raises(ValueError, match=f"at least {t} tokens"):
        make_niah(SNIAHTask(variant=variant, vocab_size=32, seq_len=t,
                            test_lengths=[t - 1], num_train=10, num_test=10))


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_is_fast(variant):
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        ds, _ = niah_examples(12000, variant=variant, vocab_size=256, seq_len=128, seed=0,
                              gen=generator(0, "speed"))
        best = min(best, time.perf_counter() - start)
    assert ds.inputs.shape == (12000, 128)
    assert best < 2.0
