"""What every task provides to the trainer: token datasets with label masks, and metrics.

A dataset is a pair of ``[N, T]`` long tensors: ``inputs`` and ``targets``, where
``targets`` holds the token to predict at each position or ``IGNORE`` (-100) where the
position is not scored (MQAR: only the answers). Language-modelling tasks score every
position. Train and test sets are generated from different seeds and never share a
sequence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

IGNORE = -100


class TaskError(ValueError):
    """A task setting its generator cannot produce (too few distinct sequences, a layout
    that does not fit): bad input, which the CLI reports without a traceback."""


@dataclass
class TokenDataset:
    """``inputs``/``targets`` ``[N, T]`` (targets ``IGNORE`` where unscored)."""

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape or self.inputs.dim() != 2:
            raise ValueError(f"inputs {tuple(self.inputs.shape)} and targets "
                             f"{tuple(self.targets.shape)} must be equal [N, T] shapes")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]


@dataclass
class Task:
    """A generated (or loaded) task: a training set, named evaluation sets and the kind of
    metric. ``kind="recall"`` reports accuracy on scored positions; ``kind="lm"`` reports
    perplexity (``unit="word"``) or bits per character (``unit="char"``)."""

    name: str
    vocab_size: int
    train: TokenDataset
    evals: dict[str, TokenDataset]
    kind: Literal["recall", "lm"] = "recall"
    unit: Literal["token", "word", "char"] = "token"
    info: dict[str, object] = field(default_factory=dict)

    @property
    def main_eval(self) -> str:
        """The evaluation set whose metrics a study optimises (the first one)."""
        return next(iter(self.evals))


def row_digests(x: Tensor) -> list[bytes]:
    """A digest per row of a 2-D integer tensor (to prove train/test disjointness)."""
    arr = x.to(torch.int64).contiguous().numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in arr]


def drop_overlap(test: TokenDataset, train: TokenDataset, name: str = "task") -> TokenDataset:
    """``test`` without the rows whose input sequence also occurs in ``train`` (TaskError
    when none is left)."""
    seen = set(row_digests(train.inputs))
    keep = torch.tensor([d not in seen for d in row_digests(test.inputs)], dtype=torch.bool)
    if len(test) and not bool(keep.any()):
        raise TaskError(f"{name}: every test sequence also occurs in the training set "
                        f"(num_train {len(train)}); the setting has too few distinct sequences")
    return TokenDataset(test.inputs[keep], test.targets[keep])


def generator(seed: int, *salt: object) -> torch.Generator:
    """A torch generator seeded from ``seed`` and a salt (e.g. the split name)."""
    digest = hashlib.blake2b(repr((seed, *salt)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
