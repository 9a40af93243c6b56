"""The concrete layer: one fully specified experiment (model + task + train)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

from .base import Spec, rule_error
from .model import ModelSpec
from .task import MQARTask, TaskSpec
from .train import TrainSpec

NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
"""A run name: it names the run folder ``runs/<name>``, so no ``/``, no leading dot."""


def _check_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(
            "a run name names the folder runs/<name>: use only letters, digits, '-', '_' "
            "and '.' (not first), at most 128 characters")
    return name


RunName = Annotated[str, AfterValidator(_check_name),
                    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN})]


class Config(Spec):
    """A concrete config: every field a plain value. ``build``/``train`` load this."""

    name: RunName | None = Field(
        None, description="run name (the folder runs/<name>); default: the file name")
    model: ModelSpec = Field(default_factory=ModelSpec)
    task: TaskSpec = Field(default_factory=MQARTask)
    train: TrainSpec = Field(default_factory=TrainSpec)

    @model_validator(mode="after")
    def _rules(self) -> Config:
        given, need = self.model.vocab_size, self.task.vocab_size
        if given is not None and given < need:
            raise rule_error(
                "model.vocab_size",
                f"{given} is below the task's vocabulary of {need} tokens; raise it, or "
                "leave it unset to use the task's")
        return self

    def vocab_size(self) -> int:
        """The model's vocabulary: explicit (validated to hold the task's), else the
        task's. ``build``, ``train``, ``eval`` and the search all build at this size (the MAD
        suite's is its largest setting's; each of its trainings builds at its own setting's
        vocabulary unless ``model.vocab_size`` is given)."""
        return self.model.vocab_size or self.task.vocab_size

