"""Shared base for every spec model: strict (``extra="forbid"``) pydantic v2 models,
and the error type cross-field rules raise so the loader can point at the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class Spec(BaseModel):
    """Base of all spec models: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_default=True, protected_namespaces=())


def rule_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field rule violation located at sibling ``field`` of the model being checked.

    The loader reads ``ctx["field"]`` to extend the error path to the offending field.
    """
    return PydanticCustomError("cross_field", "{message}", {"field": field, "message": message})
