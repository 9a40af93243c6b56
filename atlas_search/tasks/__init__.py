"""Tasks: seeded generators with disjoint train/test splits, selected by ``name``:
MQAR, the six MAD tasks, S-NIAH and Penn Treebank (word and character level)."""

from __future__ import annotations

from importlib import import_module

from ..spec.task import TaskSpec
from .base import IGNORE, Task, TokenDataset

_MAKERS = {
    "mqar": ("mqar", "make_mqar"),
    "in_context_recall": ("mad", "make_mad"),
    "fuzzy_in_context_recall": ("mad", "make_mad"),
    "noisy_in_context_recall": ("mad", "make_mad"),
    "selective_copying": ("mad", "make_mad"),
    "compression": ("mad", "make_mad"),
    "memorization": ("mad", "make_mad"),
    "s_niah": ("niah", "make_niah"),
    "ptb": ("ptb", "make_ptb"),
}


def make_task(spec: TaskSpec) -> Task:
    """Generate (or load) the task a spec names."""
    module, func = _MAKERS[spec.name]
    return getattr(import_module(f".{module}", __name__), func)(spec)


__all__ = ["IGNORE", "Task", "TokenDataset", "make_task"]
