"""Build an :class:`~atlas_search.models.lm.LM` from a spec (DESIGN.md §1: spec -> builder)."""

from __future__ import annotations

import torch

from ..spec.config import Config
from ..spec.model import ModelSpec
from .lm import LM


class ModelTooLarge(MemoryError):
    """The model's weights cannot be allocated (bad input: the CLI exits 2 with this
    message, which gives the model's size)."""


def allocation_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure (Python's, or the CPU allocator's and
    CUDA's, which torch raises as RuntimeError)."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text
                                              or "out of memory" in text.lower())


def too_large(spec: ModelSpec, vocab: int, where: str = "here") -> ModelTooLarge:
    """The error for a model that cannot be allocated, with its parameter count (counted
    on the meta device: no memory, no initialisation) when that can be built."""
    size = ""
    try:
        from .summary import count_params

        with torch.device("meta"):
            n = count_params(LM(spec, int(vocab)))
        size = f" has {n:,} parameters ({n * 4 / 2**30:,.1f} GiB as float32) and"
    except Exception:  # noqa: BLE001  (the count is a courtesy; the message stands without)
        pass
    return ModelTooLarge(
        f"the model (d_model {spec.d_model}, {spec.n_layers} layers, {spec.n_heads} heads, "
        f"vocab {vocab}){size} cannot be allocated {where}: out of memory; make it smaller")


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
    ``device``/``dtype``. A model too large for memory raises :class:`ModelTooLarge`."""
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
    try:
        model = LM(spec, int(vocab))
        return model.to(device=device, dtype=dtype)
    except (MemoryError, RuntimeError) as exc:
        if not allocation_failed(exc):
            raise
        raise too_large(spec, int(vocab)) from None
