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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices (ndim >= 2) except the (tied) embedding; no
    decay on vectors, gains, biases, gate constants, feature coefficients or embeddings."""
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and id(p) not in embed_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
