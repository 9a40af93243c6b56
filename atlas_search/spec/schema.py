"""JSON Schema of both layers, for editors (yaml-language-server) and validators.

The space layer is derived from the concrete one: every scalar field also accepts a
distribution (choice / int / float / value, each with an optional ``when:``), and a
``study:`` section is allowed. A concrete config validates against it too.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, create_model

from .base import Spec
from .config import Config
from .distributions import Choice, Fixed, FloatRange, IntRange
from .introspect import union_members
from .presets import preset_names
from .study import StudySpec
from .task import _task_tag

SCHEMA_FILE = "atlas-search.schema.json"


@cache
def _space_model(cls: type[BaseModel]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, f in cls.model_fields.items():
        members = union_members(f.annotation)
        kw = {"description": f.description}
        if members:
            sub = tuple(_space_model(m) for m in members)
            ann: Any = sub[0] if len(sub) == 1 else Union[sub]  # noqa: UP007
            fields[name] = (ann | None, Field(None, **kw))
        else:
            plain = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
            fields[name] = (
                Union[plain, Choice, IntRange, FloatRange, Fixed],  # noqa: UP007
                Field(None, **kw),
            )
    return create_model(f"{cls.__name__}Space", __base__=Spec, __doc__=cls.__doc__, **fields)


def schema(layer: str = "both") -> dict[str, Any]:
    """The JSON Schema of ``concrete``, ``space`` or ``both`` (a space schema that also
    accepts concrete configs)."""
    if layer == "concrete":
        out = Config.model_json_schema(by_alias=True)
        out["title"] = "atlas-search concrete config"
        _require_task_names(out)
    else:
        space_cls = create_model(
            "SearchSpace", __base__=_space_model(Config), study=(StudySpec | None, Field(None))
        )
        out = space_cls.model_json_schema(by_alias=True)
        out["title"] = "atlas-search config or search space"
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    names = preset_names()
    for d in out.get("$defs", {}).values():
        p = d.get("properties", {}).get("preset")
        if p is not None and names:
            p["anyOf"] = [{"enum": names}, {"type": "null"}]
            p.pop("type", None)
    return out


def _require_task_names(out: dict[str, Any]) -> None:
    """Make the ``task`` union's ``oneOf`` unambiguous: a task without ``name`` is the
    default task (``mqar``), so every other task's branch requires ``name``. Without this
    ``task: {seq_len: 64}`` matched several branches, which ``oneOf`` refuses."""
    default = _task_tag({})
    for member in out["properties"]["task"].get("oneOf", []):
        d = out["$defs"].get(member.get("$ref", "").rsplit("/", 1)[-1], {})
        if d.get("properties", {}).get("name", {}).get("const") != default:
            required = d.setdefault("required", [])
            if "name" not in required:
                required.append("name")
