"""The concrete layer: one fully specified experiment (model + task + train)."""

from __future__ import annotations

from pydantic import Field

from .base import Spec
from .model import ModelSpec
from .task import MQARTask, TaskSpec
from .train import TrainSpec


class Config(Spec):
    """A concrete config: every field a plain value. ``build``/``train`` load this."""

    name: str | None = Field(None, description="run name; default: the file name", min_length=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    task: TaskSpec = Field(default_factory=MQARTask)
    train: TrainSpec = Field(default_factory=TrainSpec)

    def vocab_size(self) -> int:
        """The model's vocabulary: explicit, else the task's."""
        return self.model.vocab_size or self.task.vocab_size
