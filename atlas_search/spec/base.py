"""Shared base for every spec model: strict pydantic v2 models (``extra="forbid"``, no
type coercion), and the error type cross-field rules raise so the loader can point at the
field."""

from __future__ import annotations

import math
import operator
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


def unannotated(ann: Any) -> Any:
    """``ann`` without its ``Annotated[...]`` wrappers (``Optional`` is kept)."""
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    return ann


def relax(ann: Any, value: Any) -> Any:
    """``value`` as strict validation against ``ann`` should see it: the only conversions
    strict mode lacks that the spec language keeps are a whole-number float where only an
    integer fits (``steps: 1e3``, as JSON Schema's ``integer`` allows), a list where a
    tuple is expected (YAML has no tuples) and, for Python callers, a tuple where a list is
    expected and an integer-like number (``numpy.int64``) as a Python int. Booleans and text
    are never numbers, numbers never booleans: strict validation refuses them."""
    if not isinstance(value, int) and hasattr(type(value), "__index__"):
        try:
            value = operator.index(value)
        except TypeError:
            pass
    ann = unannotated(ann)
    origin = typing.get_origin(ann)
    if ann is int:
        if (isinstance(value, float) and math.isfinite(value) and value.is_integer()):
            return int(value)
        return value
    if origin in (Union, types.UnionType):
        members = [unannotated(a) for a in typing.get_args(ann)]
        if isinstance(value, float):
            if int in members and float not in members and Any not in members:
                return relax(int, value)
            return value
        if isinstance(value, list | tuple):
            seqs = [m for m in members if typing.get_origin(m) in (list, tuple)]
            return relax(seqs[0], value) if len(seqs) == 1 else value
        return value
    if origin is list and isinstance(value, list | tuple):
        (item,) = typing.get_args(ann) or (Any,)
        return [relax(item, v) for v in value]
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(ann)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(relax(args[0], v) for v in value)
        if len(args) == len(value):
            return tuple(relax(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    return value


class Spec(BaseModel):
    """Base of all spec models: unknown keys are errors, and values are never coerced
    across types (``true`` is no integer, ``"10"`` no number, ``1`` no boolean); see
    :func:`relax` for the conversions kept."""

    model_config = ConfigDict(
        extra="forbid", validate_default=True, protected_namespaces=(), strict=True
    )

    @model_validator(mode="before")
    @classmethod
    def _relax(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, f in cls.model_fields.items():
            for key in {name, f.alias or name}:
                if key in out:
                    out[key] = relax(f.annotation, out[key])
        return out


def rule_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field rule violation located at sibling ``field`` of the model being checked.

    The loader reads ``ctx["field"]`` to extend the error path to the offending field.
    """
    return PydanticCustomError("cross_field", "{message}", {"field": field, "message": message})
