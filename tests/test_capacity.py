"""Capacity demonstration (atlas_search.bench.capacity): the op-write reasoning is exact, the
quick sweep runs, and the measured recall follows ATLAS Proposition 1/2 and Theorem 1."""

from __future__ import annotations

import json

import pytest
import torch

from atlas_search.bench import capacity as cap

DK = 8


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("capacity")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = cap.main(["--quick", "--out", str(out), "--dk", str(DK)])
    finally:
        torch.set_num_threads(n)
    return res, out


def _row(res: dict, name: str, n: int) -> dict:
    mem = next(m for m in res["memories"] if m["name"] == name)
    return next(r for r in mem["rows"] if r["n"] == n)


@pytest.mark.parametrize("optimizer", ["gd", "momentum"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_op_write_is_full_batch_recurrence(optimizer, backend, monkeypatch):
    """c = b = N over repeated epochs: each chunk is one full-batch GD (or heavy-ball) step."""
    monkeypatch.setattr(cap, "MAX_BLOCK", 1)  # one epoch per op call: exercises state carry
    keys, values = cap.sample_pairs(5, 6, 3, trials=2, seed=1)
    phi = cap.features(keys, 2)
    epochs = 7
    got = cap.write_linear(phi, values, epochs=epochs, optimizer=optimizer, backend=backend)
    big, mu = cap._spectrum(phi, 1e5)
    if optimizer == "gd":
        want = cap.full_batch_gd(phi, values, 2.0 / (big + mu), epochs)
    else:
        h, beta = cap.heavy_ball_params(big, mu)
        want = cap.full_batch_heavy_ball(phi, values, h, beta, epochs)
    assert torch.isfinite(got).all()
    assert ((got - want).norm() / want.norm()).item() < 1e-10


def test_sphere_rank_matches_features():
    """On the unit sphere the poly features span C(d+p,p) - C(d+p-2,p-2) dimensions."""
    keys, _ = cap.sample_pairs(400, 4, 1, trials=1, seed=0)
    for p in (1, 2, 3):
        rank = torch.linalg.matrix_rank(cap.features(keys[0], p)).item()
        assert rank == cap.sphere_rank(4, p)
    assert cap.sphere_rank(4, 2) == 14 and cap.sphere_rank(4, 3) == 30


def test_capacity_from_curve():
    assert cap.capacity_from_curve([2, 4, 8, 16], [1.0, 0.995, 0.5, 1.0]) == (4, 8)
    assert cap.capacity_from_curve([2, 4], [None, 1.0]) == (4, None)
    assert cap.capacity_from_curve([2, 4], [0.2, 1.0]) == (None, 2)


def test_quick_mode_writes_outputs(quick):
    res, out = quick
    data = json.loads((out / "capacity.json").read_text())
    assert [m["name"] for m in data["memories"]] == [m["name"] for m in res["memories"]]
    assert (out / "capacity.txt").read_text().startswith("capacity:")
    for m in data["memories"]:
        for r in m["rows"]:
            for key in ("recall_op", "recall_opt"):
                assert r[key] is None or 0.0 <= r[key] <= 1.0


def test_identity_memory_saturates_at_dk(quick):
    """Proposition 1: ~all pairs up to dk/2, clear failure at 2 dk (op write and lstsq)."""
    res, _ = quick
    small, big = _row(res, "linear identity", DK // 2), _row(res, "linear identity", 2 * DK)
    assert small["recall_op"] >= 0.99 and small["recall_opt"] >= 0.99
    assert big["recall_op"] <= 0.1 and big["recall_opt"] <= 0.1


def test_poly2_stores_more_than_identity(quick):
    """Proposition 2: at the same dk, degree-2 features hold 2 dk pairs; identity does not."""
    res, _ = quick
    poly, ident = _row(res, "linear poly2", 2 * DK), _row(res, "linear identity", 2 * DK)
    assert poly["recall_op"] >= ident["recall_op"] + 0.8
    assert poly["recall_opt"] >= ident["recall_opt"] + 0.8
    # and it saturates too, past the rank on the sphere (lstsq only)
    over = _row(res, "linear poly2", 2 * cap.sphere_rank(DK, 2))
    assert over["recall_opt"] <= 0.1


def test_op_write_reaches_lstsq_when_well_posed(quick):
    """Well below capacity the op write converges to the minimum-norm lstsq memory."""
    res, _ = quick
    for name, n in (("linear identity", DK // 2), ("linear poly2", DK), ("linear poly2", 2 * DK)):
        assert _row(res, name, n)["rel_dist_to_lstsq"] < 1e-8


def test_mlp_memory_stores_more_than_dk(quick):
    """Theorem 1 (qualitative): the 2-layer MLP written by the op holds 2 dk pairs."""
    res, _ = quick
    row = _row(res, "mlp 2-layer", 2 * DK)
    assert row["diverged_trials"] == 0
    assert row["recall_op"] >= 0.9
