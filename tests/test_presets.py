"""Every preset in spaces/presets builds, trains (finite, non-zero gradient on every
parameter) and its recurrent path equals its parallel forward (DESIGN.md §5-§6).

Presets run at their own d_model / n_layers / n_heads with ``head_dim`` 8 (instead of
d_model / n_heads = 32): poly features of degree 2 on 32 channels are 561 wide, and Muon
then orthogonalises a 561 x 128 matrix per token, too slow for a 2-core test budget.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SPACES

from atlas_search.models import build_model
from atlas_search.spec import ModelSpec, load

PRESETS = sorted((SPACES / "presets").glob("*.yaml"))
VOCAB = 64
HEAD_DIM = 8


def _spec(path) -> ModelSpec:
    spec = load(path).model
    return ModelSpec.model_validate({**spec.model_dump(), "head_dim": HEAD_DIM})


def test_presets_found():
    assert len(PRESETS) >= 22


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_trains(path):
    torch.manual_seed(0)
    model = build_model(_spec(path), vocab_size=VOCAB)
    tokens = torch.randint(0, VOCAB, (2, 64))
    logits = model(tokens)
    assert logits.shape == (2, 64, VOCAB)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.requires_grad
        assert p.grad is not None, f"{path.stem}: no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"{path.stem}: non-finite gradient on {name}"
        assert p.grad.abs().sum() > 0, f"{path.stem}: all-zero gradient on {name}"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_recurrent_equals_parallel(path):
    """Token-by-token ``step`` = parallel ``forward`` in float64 (T = 21: odd, crosses a
    chunk boundary of the default chunk_size 16 mid-chunk)."""
    torch.manual_seed(1)
    model = build_model(_spec(path), vocab_size=VOCAB, dtype=torch.float64)
    tokens = torch.randint(0, VOCAB, (2, 21))
    with torch.no_grad():
        ref = model(tokens)
        rec = model.generate_logits(tokens)
    assert rec.shape == ref.shape
    err = ((rec - ref).norm() / ref.norm()).item()
    assert err <= 1e-10, f"{path.stem}: recurrent vs parallel relative error {err:.3e}"
