"""Build an :class:`~atlas_search.models.lm.LM` from a spec (DESIGN.md §1: spec -> builder)."""

from __future__ import annotations

import torch

from ..spec.config import Config
from ..spec.model import ModelSpec
from .lm import LM


def build_model(
    config: Config | ModelSpec,
    *,
    vocab_size: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LM:
    """The LM of a concrete ``Config`` (vocabulary ``config.vocab_size()`` unless
    ``vocab_size`` is given) or of a ``ModelSpec`` (``vocab_size`` argument, else the spec's;
    one of them is required). Parameters are created in float32 on CPU, then moved to
    ``device``/``dtype``."""
    if isinstance(config, Config):
        spec = config.model
        vocab = vocab_size or config.vocab_size()
    elif isinstance(config, ModelSpec):
        spec = config
        vocab = vocab_size or spec.vocab_size
        if vocab is None:
            raise ValueError("build_model(ModelSpec) needs vocab_size (or spec.vocab_size)")
    else:
        raise TypeError(f"build_model takes a Config or a ModelSpec, got {type(config).__name__}")
    model = LM(spec, int(vocab))
    return model.to(device=device, dtype=dtype)
