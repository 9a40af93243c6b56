"""MQAR generator: shapes, label mask, determinism, disjoint splits, the recall property."""

from __future__ import annotations

import torch

from atlas_search.spec import MQARTask
from atlas_search.tasks import IGNORE, make_task
from atlas_search.tasks.base import row_digests


def _spec(**kw):
    base = dict(vocab_size=128, seq_len=48, num_kv_pairs=6, num_train=600, num_test=200)
    return MQARTask(**{**base, **kw})


def test_shapes_and_mask():
    task = make_task(_spec())
    x, y = task.train.inputs, task.train.targets
    assert x.shape == y.shape == (600, 48) and x.dtype == torch.long
    assert (x >= 0).all() and (x < 128).all()
    scored = y != IGNORE
    assert (scored.sum(1) == 6).all()  # one answer per key
    assert not scored[:, :12].any()  # nothing scored inside the key-value context
    assert ((y[scored] >= 64) & (y[scored] < 128)).all()  # answers are values


def test_every_answer_is_the_value_bound_earlier_to_the_queried_key():
    task = make_task(_spec(random_non_queries=True))
    for x, y in zip(task.train.inputs, task.train.targets, strict=True):
        kv = {int(x[i]): int(x[i + 1]) for i in range(0, 12, 2)}
        assert len(kv) == 6 and all(k < 64 for k in kv) and all(v >= 64 for v in kv.values())
        positions = (y != IGNORE).nonzero().flatten().tolist()
        queried = [int(x[p]) for p in positions]
        assert sorted(queried) == sorted(kv)  # every key queried exactly once
        for p in positions:
            assert int(y[p]) == kv[int(x[p])]


def test_determinism_and_seed_dependence():
    a, b, c = make_task(_spec()), make_task(_spec()), make_task(_spec(seed=1))
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert torch.equal(a.evals["test"].targets, b.evals["test"].targets)
    assert not torch.equal(a.train.inputs, c.train.inputs)


def test_train_and_test_never_overlap():
    task = make_task(_spec(vocab_size=16, seq_len=8, num_kv_pairs=2, num_train=3000,
                           num_test=500, random_non_queries=False))
    # a tiny space (forces collisions): the filter must remove every shared sequence
    train = set(row_digests(task.train.inputs))
    test = row_digests(task.evals["test"].inputs)
    assert 0 < len(test) < 500
    assert not train.intersection(test)


def test_query_gaps_follow_a_power_law():
    task = make_task(_spec(seq_len=256, num_kv_pairs=4, num_train=2000))
    pos = (task.train.targets != IGNORE).nonzero()[:, 1]
    gaps = (pos - 8) // 2  # query slot index after the context
    early = (gaps < 30).float().mean()
    late = (gaps >= 90).float().mean()
    assert early > late  # p(g) decreases with g


def test_extrapolation_test_set_uses_the_test_sizes():
    task = make_task(_spec(test_seq_len=96, test_num_kv_pairs=12))
    test = task.evals["test"]
    assert test.inputs.shape[1] == 96
    assert ((test.targets != IGNORE).sum(1) == 12).all()
    assert task.train.inputs.shape[1] == 48
