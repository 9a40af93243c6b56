"""Walking the spec classes by path: which model, field and allowed values live where."""

from __future__ import annotations

import types
import typing
from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter
from pydantic.fields import FieldInfo

from .base import relax, unannotated
from .errors import Path


def _strip(ann: Any) -> Any:
    """Remove ``Annotated``/``Optional`` wrappers around a single type."""
    ann = unannotated(ann)
    if typing.get_origin(ann) in (Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return ann


def union_members(ann: Any) -> list[type[BaseModel]]:
    """The spec classes of a (possibly discriminated) union, or of a single class."""
    ann = _strip(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    if typing.get_origin(ann) in (Union, types.UnionType):
        out = []
        for a in typing.get_args(ann):
            a = _strip(a)
            if isinstance(a, type) and issubclass(a, BaseModel):
                out.append(a)
        return out
    return []


def list_item_model(ann: Any) -> type[BaseModel] | None:
    """The spec class of a ``list[Model]`` field, else None."""
    ann = _strip(ann)
    if typing.get_origin(ann) is list:
        (item,) = typing.get_args(ann) or (None,)
        item = _strip(item)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def list_item_type(ann: Any) -> Any:
    """The item type of a ``list[...]`` annotation (None if it is not a list)."""
    ann = _strip(ann)
    if typing.get_origin(ann) is list:
        args = typing.get_args(ann)
        return args[0] if args else None
    return None


def tag_of(cls: type[BaseModel]) -> str | None:
    """The ``name`` literal of a tagged-union member (tasks, samplers, pruners)."""
    f = cls.model_fields.get("name")
    if f is None:
        return None
    args = typing.get_args(_strip(f.annotation))
    return args[0] if typing.get_origin(_strip(f.annotation)) is Literal and args else None


def literal_values(ann: Any) -> list[Any] | None:
    """Allowed values of a Literal field (None if the field is not a Literal)."""
    ann = _strip(ann)
    if typing.get_origin(ann) is Literal:
        return list(typing.get_args(ann))
    if typing.get_origin(ann) in (Union, types.UnionType):
        vals: list[Any] = []
        for a in typing.get_args(ann):
            lv = literal_values(a)
            if lv is None:
                return None
            vals += lv
        return vals
    return None


@cache
def adapter(cls: type[BaseModel], name: str) -> TypeAdapter:
    """A validator for a single field value, with the field's constraints, as strict as
    the model's own validation (:class:`~.base.Spec`: no coercion across types)."""
    f: FieldInfo = cls.model_fields[name]
    ann = f.annotation
    before = BeforeValidator(lambda value: relax(ann, value))
    strict = ConfigDict(strict=cls.model_config.get("strict", False))
    return TypeAdapter(Annotated[(ann, *f.metadata, before)], config=strict)


def field_at(root: type[BaseModel], path: Path, data: dict | None = None):
    """(owning class, field name) of the field at ``path`` below ``root``, or None.

    Tagged unions are resolved with the ``name`` found in ``data`` at that place (default:
    the first member)."""
    cls = root
    node: Any = data
    for i, part in enumerate(path):
        if not isinstance(part, str) or part not in cls.model_fields:
            return None
        if i == len(path) - 1:
            return cls, part
        members = union_members(cls.model_fields[part].annotation)
        if not members:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        cls = pick_member(members, node)
    return None


def pick_member(members: list[type[BaseModel]], raw: Any) -> type[BaseModel]:
    if len(members) > 1 and isinstance(raw, dict):
        for m in members:
            if tag_of(m) == raw.get("name"):
                return m
    return members[0]


def default_of(cls: type[BaseModel], name: str) -> Any:
    f = cls.model_fields[name]
    if f.default_factory is not None:
        return f.default_factory()  # type: ignore[call-arg]
    return f.default
