"""Learning-rate schedule and optimizer parameter groups."""

from __future__ import annotations

import math

from torch import nn

from ..spec.train import TrainSpec


def lr_factor(step: int, spec: TrainSpec) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup over
    ``warmup`` steps, then cosine or linear decay to ``min_lr_ratio`` at ``steps``, or
    constant."""
    if spec.warmup and step < spec.warmup:
        return (step + 1) / spec.warmup
    if spec.schedule == "constant":
        return 1.0
    span = max(1, spec.steps - spec.warmup)
    frac = min(1.0, (step - spec.warmup) / span)
    floor = spec.min_lr_ratio
    if spec.schedule == "linear":
        return floor + (1 - floor) * (1 - frac)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))


NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in (getattr(nn, n, None) for n in ("LayerNorm", "RMSNorm", "GroupNorm",
                                               "LocalResponseNorm"))
    if t is not None) + (nn.modules.batchnorm._NormBase,)
"""Torch's normalisation modules; any other module whose class name ends in ``Norm`` (the
project's ``models.norm.RMSNorm``) counts as one too (:func:`is_norm`)."""


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (its parameters are gains/shifts)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight tensors with ``ndim >= 2`` (linear weights, the
    depthwise conv kernels and the learned initial fast weights of deep memories, which are
    weights of the model like any matrix); no decay on vectors, biases, gate constants,
    feature coefficients, the (tied) embedding, or any parameter of a normalisation module
    (:func:`is_norm`) whatever its ndim, e.g. the per-head ``[n_heads, head_dim]`` gains of
    the memory mixer's output norm."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    skip |= {id(p) for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in skip else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
