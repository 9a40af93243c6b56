"""Loading YAML into a concrete :class:`Config` or a search :class:`Space`, with errors
located by YAML path and line, allowed values and "did you mean" hints."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import Config
from .distributions import DIST_KEYS, Fixed, FloatRange, IntRange, dist_class, looks_like_dist
from .errors import Issue, Path, SpecError, allowed_hint, did_you_mean, dotted
from .introspect import (
    adapter,
    list_item_model,
    list_item_type,
    literal_values,
    pick_member,
    tag_of,
    union_members,
)
from .presets import deep_merge, preset_model, preset_names
from .space import Dimension, Space, resolve_when
from .study import StudySpec
from .yamlio import Document, kind_of, parse_text, read_document

TOP_KEYS = ("name", "model", "task", "train", "study")


Override = str | tuple[str, str]
"""A ``dotted.path=value`` item, or ``(item, label)`` where ``label`` names it in errors
instead of ``--set item`` (a command's own override, such as ``mad``'s task)."""


def load(path: str | FsPath, overrides: list[Override] | None = None) -> Config | Space:
    """Read a concrete config or a search space from a YAML file (raises SpecError).

    ``overrides`` are ``dotted.path=value`` strings (values in YAML syntax) applied to the
    file's data before validation, e.g. ``model.memory.window=4``."""
    doc = read_document(path)
    apply_overrides(doc, overrides or [])
    return load_document(doc, default_name=run_name(FsPath(path).stem))


def run_name(stem: str) -> str:
    """A file name stem as a valid default run ``name`` (characters outside letters,
    digits, ``-``, ``_`` and ``.`` become ``_``; no leading dot; at most 100 characters,
    so that it is a valid study name too)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")[:100]
    return name or "run"


def loads(text: str, source: str = "<input>", default_name: str | None = None) -> Config | Space:
    """Like :func:`load`, from a string."""
    return load_document(parse_text(text, source), default_name=default_name)


def load_config(path: str | FsPath, overrides: list[Override] | None = None) -> Config:
    """Load a file that must be a concrete config (no distributions, no study)."""
    spec = load(path, overrides)
    if isinstance(spec, Space):
        raise SpecError(
            [
                Issue(
                    ("study",),
                    "this is a search space; a concrete config is expected here (remove "
                    "study: and give every distribution a plain value)",
                )
            ],
            str(path),
        )
    return spec


def apply_overrides(doc: Document, overrides: list[Override]) -> None:
    """Set ``dotted.path=value`` items in ``doc.data``; a SpecError names a bad item. An
    item descends through mappings only (a missing or null block becomes a mapping); one
    that would descend into a scalar or a list is refused, located at the item (a list is
    replaced whole: ``task.test_lengths=[64, 128]``)."""
    for entry in overrides:
        item, label = entry if isinstance(entry, tuple) else (entry, f"--set {entry}")
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecError([Issue((), "expected dotted.path=value", origin=label)],
                            doc.source)
        if not isinstance(doc.data, dict):
            raise SpecError([_not_a_mapping(doc)], doc.source)
        value = parse_text(text or "null", label).data if text.strip() else None
        node = doc.data
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # made by this item: errors there are located at it
                node[part] = {}
                doc.set_origin(tuple(parts[: i + 1]), label)
            elif not isinstance(node[part], dict):
                here = tuple(parts[: i + 1])
                raise SpecError([Issue(
                    here, f"cannot set {key.strip()}: {dotted(here)} is {kind_of(node[part])}, "
                    "not a mapping" + (" (replace the whole list instead: "
                                       f"{dotted(here)}=[...])" if isinstance(node[part], list)
                                       else ""), origin=label)], doc.source)
            node = node[part]
        node[parts[-1]] = value
        doc.set_origin(tuple(parts), label)


def _not_a_mapping(doc: Document) -> Issue:
    return doc.issue(
        (), f"expected a mapping with keys {', '.join(TOP_KEYS)}; got {type(doc.data).__name__}")


def load_document(doc: Document, default_name: str | None = None) -> Config | Space:
    issues: list[Issue] = []
    data = doc.data
    if not isinstance(data, dict):
        raise SpecError([_not_a_mapping(doc)], doc.source)
    for key in data:
        if key not in TOP_KEYS:
            issues.append(
                doc.issue(
                    (key,), "unknown top-level key", key=True, hint=allowed_hint(key, TOP_KEYS)
                )
            )
    raw = {k: copy.deepcopy(v) for k, v in data.items() if k in TOP_KEYS and k != "study"}

    preset_raw: dict[str, Any] = {}
    model = raw.get("model")
    if isinstance(model, dict) and model.get("preset") is not None:
        name = model["preset"]
        names = preset_names()
        if looks_like_dist(name):
            issues.append(doc.issue(
                ("model", "preset"), "cannot be a distribution: a preset sets many fields "
                "at once",
                hint="compare presets as baselines (study.enqueue: [atlas, deltanet]), or "
                "write one file per preset"))
            model.pop("preset")
        elif not isinstance(name, str) or name not in names:
            issues.append(
                doc.issue(
                    ("model", "preset"),
                    f"unknown preset {name!r}",
                    hint=allowed_hint(name, names, "presets"),
                )
            )
        else:
            try:
                preset_raw = preset_model(name)
            except (SpecError, ValueError) as exc:
                issues.append(doc.issue(("model", "preset"), f"preset {name!r} is broken: {exc}"))
            raw["model"] = deep_merge(preset_raw, model)

    dims: list[Dimension] = []
    _walk(Config, raw, (), doc, dims, issues)

    study: StudySpec | None = None
    if "study" in data:
        try:
            study = StudySpec.model_validate(data["study"] if data["study"] is not None else {})
        except ValidationError as exc:
            issues += _map_errors(exc, ("study",), StudySpec, data["study"], doc)
    if issues:
        raise SpecError(issues, doc.source)

    if study is None and dims:
        names = ", ".join(d.name for d in dims[:4])
        raise SpecError(
            [
                doc.issue(
                    (),
                    f"this file has search dimensions ({names}) but no study: "
                    "section; add one (name, objectives, n_trials, ...)",
                )
            ],
            doc.source,
        )
    if study is None:
        if default_name is not None and raw.get("name") is None:
            raw["name"] = default_name
        try:
            return Config.model_validate(raw)
        except ValidationError as exc:
            raise SpecError(_map_errors(exc, (), Config, raw, doc), doc.source) from None

    if study.name is None:
        study = study.model_copy(update={"name": raw.get("name") or default_name or "study"})
    space = Space(study=study, base=raw, dims=dims, preset_raw=preset_raw, source=doc.source,
                  warnings=[d.note for d in dims if d.note])
    issues += resolve_when(space, doc)
    if issues:
        raise SpecError(issues, doc.source)
    space.order_dims()
    issues += space.check(doc)
    if issues:
        raise SpecError(issues, doc.source)
    return space


def _walk(
    cls: type[BaseModel],
    raw: Any,
    path: Path,
    doc: Document,
    dims: list[Dimension],
    issues: list[Issue],
) -> None:
    """Check keys and scalar values against ``cls``; pull distributions out into ``dims``."""
    if not isinstance(raw, dict):
        issues.append(
            doc.issue(
                path,
                f"expected a mapping of {cls.__name__} fields, got {kind_of(raw)}",
                hint="fields: " + ", ".join(cls.model_fields),
            )
        )
        return
    fields = cls.model_fields
    for key in list(raw):
        value = raw[key]
        here = path + (key,)
        if key not in fields:
            issues.append(
                doc.issue(here, "unknown field", key=True, hint=allowed_hint(key, list(fields)))
            )
            continue
        members = union_members(fields[key].annotation)
        if looks_like_dist(value):
            if members:
                issues.append(
                    doc.issue(
                        here,
                        "a whole block cannot be a distribution; put distributions on its fields",
                    )
                )
                continue
            dim = _parse_dim(cls, key, value, here, doc, issues)
            if dim is not None:
                dims.append(dim)
                del raw[key]
            continue
        if members:
            if len(members) > 1 and isinstance(value, dict):
                tag = value.get("name")
                tags = [tag_of(m) for m in members]
                if looks_like_dist(tag):
                    issues.append(doc.issue(
                        here + ("name",), f"cannot be a distribution: each {key} has its "
                        "own fields",
                        hint=f"write one file per {key} (allowed: {', '.join(tags)})"))
                    continue
                if tag is not None and tag not in tags:
                    issues.append(
                        doc.issue(
                            here + ("name",), f"unknown {key} {tag!r}", hint=allowed_hint(tag, tags)
                        )
                    )
                    continue
            _walk(pick_member(members, value), value, here, doc, dims, issues)
            continue
        try:
            raw[key] = adapter(cls, key).validate_python(value)
        except ValidationError as exc:
            for err in exc.errors():
                issues.append(_scalar_issue(cls, key, value, err, here, doc))


def _parse_dim(
    cls: type[BaseModel],
    key: str,
    value: dict[str, Any],
    path: Path,
    doc: Document,
    issues: list[Issue],
) -> Dimension | None:
    dcls = dist_class(value)
    if dcls is None:
        present = [k for k in DIST_KEYS if k in value]
        issues.append(
            doc.issue(
                path,
                f"a distribution has exactly one of {', '.join(DIST_KEYS)};"
                f" found {', '.join(present)}",
            )
        )
        return None
    try:
        dist = dcls.model_validate(value)
    except ValidationError as exc:
        for err in _merge_member_tags(exc.errors()):
            loc = tuple(p if isinstance(p, int) else str(p) for p in err["loc"]
                        if p not in ("int_", "float_"))
            msg = err["msg"].removeprefix("Value error, ")
            hint = None
            if err["type"] == "scalar_union":
                msg = f"expected {err['expected']}, got {_got(err.get('input'))}"
            elif (typed := _type_message(err, err.get("input"))) is not None:
                msg, hint = typed
            elif err["type"] == "extra_forbidden":
                allowed = [f.alias or n for n, f in dcls.model_fields.items()]
                msg, hint = "unknown field", allowed_hint(loc[-1], allowed)
            issues.append(
                doc.issue(path + loc, msg, key=err["type"] == "extra_forbidden", hint=hint)
            )
        return None
    ok = True
    for i, v in enumerate(_probe_values(dist)):
        try:
            adapter(cls, key).validate_python(v)
        except ValidationError as exc:
            ok = False
            where = path + (_dist_key(dcls), i) if dcls is not Fixed else path + ("value",)
            for err in exc.errors():
                iss = _scalar_issue(cls, key, v, err, path, doc)
                label = "bound" if dcls in (IntRange, FloatRange) else "value"
                iss.message = f"{label} {i + 1} ({v!r}): {iss.message}"
                iss.line, iss.column = doc.locate(where)
                issues.append(iss)
    if ok and dcls is FloatRange and (inner := _inner_float(dist)) is not None:
        try:
            adapter(cls, key).validate_python(inner)
        except ValidationError:
            ok = False
            lo, hi = dist.float_
            issues.append(doc.issue(
                path + ("float",), f"a float range draws non-integer values (e.g. {inner:g}); "
                "this field takes integers", hint=f"use int: [{int(lo)}, {int(hi)}]"))
    note = None
    if dcls in (IntRange, FloatRange) and isinstance(value.get(_dist_key(dcls)), list):
        given, used = value[_dist_key(dcls)], list(_probe_values(dist))
        if len(given) == 2 and given[1] != used[1]:
            note = (f"{dotted(path)}: {given[1]!r} is not on the step grid from {used[0]!r} "
                    f"(step {dist.step!r}); the range ends at {used[1]!r}, as Optuna does")
    return Dimension(path=path, dist=dist, note=note) if ok else None


def _dist_key(dcls: type) -> str:
    return {"Choice": "choice", "IntRange": "int", "FloatRange": "float", "Fixed": "value"}[
        dcls.__name__
    ]


def _inner_float(dist: FloatRange) -> float | None:
    """A value inside a float range that is not a whole number, if the range draws one
    (to catch a float range on an integer field, whose bounds alone may be whole)."""
    lo, hi = dist.float_
    x = lo + (dist.step if dist.step else (hi - lo) / math.pi)
    return x if lo < x <= hi and not float(x).is_integer() else None


def _probe_values(dist: Any) -> list[Any]:
    if hasattr(dist, "choice"):
        return list(dist.choice)
    if hasattr(dist, "int_"):
        return list(dist.int_)
    if hasattr(dist, "float_"):
        return list(dist.float_)
    return [dist.value]




def _misspelt_dist(value: Any) -> tuple[str, str] | None:
    """``(key, distribution name)`` when ``value`` is a mapping with exactly one key spelt
    like a distribution (``{itn: [2, 4]}``, ``{flaot: [0, 1], log: true}``)."""
    if not isinstance(value, dict) or looks_like_dist(value):
        return None
    close = [(k, d) for k in value if (d := did_you_mean(k, DIST_KEYS)) is not None]
    return close[0] if len(close) == 1 else None


def _scalar_issue(
    cls: type[BaseModel], key: str, value: Any, err: dict, path: Path, doc: Document
) -> Issue:
    ann = cls.model_fields[key].annotation
    lits = literal_values(ann)
    loc = tuple(p for p in err.get("loc", ()) if isinstance(p, int))
    if loc and isinstance(value, list):  # an item of a list: locate the item
        path, value = path + loc, err.get("input")
        if lits is None:
            lits = literal_values(list_item_type(ann))
    typo = _misspelt_dist(value)
    if typo is not None:
        return doc.issue(
            path + (typo[0],),
            f"a mapping where a value is expected, and {typo[0]!r} is not a distribution "
            f"({', '.join(DIST_KEYS)})",
            key=True,
            hint=f"did you mean {typo[1]!r}?",
        )
    if lits is not None and err["type"] in ("literal_error", "union_tag_invalid"):
        return doc.issue(path, f"{value!r} is not allowed", hint=allowed_hint(value, lits))
    typed = _type_message(err, value)
    if typed is not None:
        return doc.issue(path, typed[0], hint=typed[1])
    msg = err["msg"].removeprefix("Value error, ")
    return doc.issue(
        path,
        f"{msg} (got {value!r})"
        if not isinstance(value, dict | list)
        else f"{msg} (got {kind_of(value)})",
    )


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean (true or false)",
    "bool_parsing": "a boolean (true or false)",
    "string_type": "text",
    "tuple_type": "a list",
    "list_type": "a list",
}
_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}


def _got(value: Any) -> str:
    """What a wrong value is, with the scalar as YAML spells it: ``a boolean (true)``,
    ``text ('10')``, ``nothing (null)``, ``a list``."""
    if value is None or isinstance(value, dict | list):
        return kind_of(value)
    shown = ("true" if value else "false") if isinstance(value, bool) else repr(value)
    return f"{kind_of(value)} ({shown})"


def _type_message(err: dict, value: Any) -> tuple[str, str | None] | None:
    """``(message, hint)`` for a value of the wrong type (strict validation: a boolean or
    text is never a number, a number never a boolean), e.g. ``expected an integer, got a
    boolean (true)``; None for other errors."""
    expected = _EXPECTED.get(err["type"])
    if expected is None:
        return None
    got = _got(value)
    if (expected == "an integer" and isinstance(value, float) and math.isfinite(value)
            and not value.is_integer()):
        got = f"a number with a fractional part ({value!r})"
    msg = f"expected {expected}, got {got}"
    hint = None
    if isinstance(value, str):
        text = value.strip()
        if expected.startswith("a boolean") and text.lower() in ("true", "false"):
            hint = f"quoted, {text!r} is text; write {text.lower()} without quotes"
        elif expected.startswith("a boolean") and text.lower() in _YAML11_BOOLS:
            hint = (f"{text!r} is text (YAML 1.2: only true and false are booleans); "
                    "write true or false")
        elif expected in ("an integer", "a number") and re.fullmatch(
                r"[-+]?[0-9]+(?::[0-5]?[0-9])+(?:\.[0-9]*)?", text):
            hint = (f"{text!r} is text (YAML 1.2 has no sexagesimal numbers such as 1:30 "
                    "= 90); write the number")
        elif expected in ("an integer", "a number") and _is_yaml_number(text):
            hint = f"quoted, {text!r} is text; write the number without quotes"
        elif expected == "a number" and text.lower().lstrip("+-") in ("inf", "infinity", "nan"):
            hint = "YAML spells infinity .inf (or -.inf) and not-a-number .nan"
    return msg, hint


def _is_yaml_number(text: str) -> bool:
    """Whether ``text`` unquoted is a YAML number (so the text came quoted)."""
    try:
        data = parse_text(text).data
    except SpecError:
        return False
    return isinstance(data, int | float) and not isinstance(data, bool)


def _clean_loc(loc: tuple, root: type[BaseModel], raw: Any) -> tuple[Path, type[BaseModel] | None]:
    """Drop tagged-union member names pydantic inserts into error locations."""
    out: list[Any] = []
    cls: type[BaseModel] | None = root
    node = raw
    i = 0
    while i < len(loc):
        part = loc[i]
        out.append(part)
        if cls is not None and isinstance(part, str) and part in cls.model_fields:
            ann = cls.model_fields[part].annotation
            members = union_members(ann)
            node = node.get(part) if isinstance(node, dict) else None
            item = list_item_model(ann)
            if item is not None and i + 1 < len(loc) and isinstance(loc[i + 1], int):
                out.append(loc[i + 1])
                node = (
                    node[loc[i + 1]] if isinstance(node, list) and loc[i + 1] < len(node) else None
                )
                cls = item
                i += 2
                continue
            if members:
                tags = [tag_of(m) for m in members]
                if len(members) > 1 and i + 1 < len(loc) and loc[i + 1] in tags:
                    cls = members[tags.index(loc[i + 1])]
                    i += 1
                else:
                    cls = pick_member(members, node)
            else:
                cls = None
        elif isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
        else:
            cls = None
        i += 1
    return tuple(out), cls


_TAG = re.compile(r"(bool|int|float|str|none|constrained-\w+|literal\[.*\]|"
                  r"(list|dict|tuple|set|nullable)\[.*\])")
_TAG_PHRASES = {"bool": "a boolean", "int": "an integer", "float": "a number", "str": "text",
                "none": "null", "list": "a list", "tuple": "a list", "set": "a list",
                "dict": "a mapping"}


def _merge_member_tags(errors: list[dict]) -> list[dict]:
    """One ``scalar_union`` error where pydantic gives one per member of a union it names
    by tag (``value.bool``, ``value.int``, ... or ``enqueue[0].str``,
    ``enqueue[0].dict[str,any]``) and every member refused the value's type: ``expected a
    boolean, an integer, a number or text``. Groups with another kind of error are left as
    they are; a group where a member of the right type broke its bound
    (``constrained-int``: ``max_resource: 0``) gives that bound error alone."""
    errors = _into_matched_containers(errors)
    groups: dict[tuple, list[dict]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        if loc and isinstance(loc[-1], str) and _TAG.fullmatch(loc[-1]):
            groups.setdefault(loc[:-1], []).append(err)
    out, done = [], set()
    for err in errors:
        loc = tuple(err["loc"])
        group = groups.get(loc[:-1]) if loc else None
        if group is None or len(group) < 2 or err not in group:
            out.append(err)
            continue
        if loc[:-1] in done:
            continue
        bound = [e for e in group if e["type"] in _BOUND_ERRORS]
        if bound:  # the right type, out of a member's bounds (max_resource: 0): that alone
            done.add(loc[:-1])
            out.append({**bound[0], "loc": loc[:-1]})
            continue
        if any(e["type"] not in _EXPECTED and e["type"] not in ("dict_type", "literal_error")
               for e in group):
            out.append(err)
            continue
        done.add(loc[:-1])
        phrases: list[str] = []
        for e in group:
            tag = str(e["loc"][-1])
            head = tag.split("[", 1)[0].removeprefix("constrained-")
            phrase = (tag[len("literal["):-1] if head == "literal"
                      else _TAG_PHRASES.get(head, tag))
            if phrase not in phrases:
                phrases.append(phrase)
        expected = (" or ".join(phrases) if len(phrases) < 3
                    else ", ".join(phrases[:-1]) + " or " + phrases[-1])
        out.append({"type": "scalar_union", "loc": loc[:-1], "input": err.get("input"),
                    "msg": err["msg"], "expected": expected})
    return out


def _into_matched_containers(errors: list[dict]) -> list[dict]:
    """Where a value matched a union's container member (``x.list[...].0.int``: ``x`` is a
    list, its item is wrong), keep the errors inside it, located without the tag
    (``x.0``), and drop the other members' errors at ``x`` (``x.bool``: "got a list")."""
    inside: set[tuple] = set()
    for err in errors:
        loc = tuple(err["loc"])
        for i, part in enumerate(loc[:-1]):
            if isinstance(part, str) and re.fullmatch(r"(list|dict|tuple|set)\[.*\]", part):
                inside.add(loc[:i])
                break
    if not inside:
        return errors
    out = []
    for err in errors:
        loc = tuple(err["loc"])
        if loc[:-1] in inside and isinstance(loc[-1], str) and _TAG.fullmatch(loc[-1]):
            continue
        for i in range(len(loc) - 1):
            if loc[:i] in inside and isinstance(loc[i], str) and _TAG.fullmatch(loc[i]):
                err = {**err, "loc": loc[:i] + loc[i + 1:]}
                break
        out.append(err)
    return out


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                 "multiple_of"}


def _map_errors(
    exc: ValidationError, prefix: Path, root: type[BaseModel], raw: Any, doc: Document
) -> list[Issue]:
    issues = []
    for err in _merge_member_tags(exc.errors()):
        loc, _ = _clean_loc(tuple(err["loc"]), root, raw)
        parent_loc, parent_cls = _clean_loc(tuple(err["loc"])[:-1], root, raw)
        path = prefix + loc
        etype = err["type"]
        if etype == "cross_field":
            ctx = err.get("ctx", {})
            field = tuple(ctx.get("field", "").split("."))
            issues.append(doc.issue(path + field, ctx.get("message", err["msg"])))
        elif etype == "extra_forbidden":
            opts = list(parent_cls.model_fields) if parent_cls else []
            issues.append(
                doc.issue(
                    path,
                    "unknown field",
                    key=True,
                    hint=allowed_hint(loc[-1], opts) if opts else None,
                )
            )
        elif etype in ("literal_error", "union_tag_invalid"):
            value = err.get("input")
            if etype == "union_tag_invalid":
                opts = [t.strip(" '") for t in err["ctx"]["expected_tags"].split(",")]
                issues.append(
                    doc.issue(
                        path + ("name",),
                        f"unknown name {err['ctx']['tag']!r}",
                        hint=allowed_hint(err["ctx"]["tag"], opts),
                    )
                )
                continue
            lits = None
            if parent_cls is not None and loc and loc[-1] in parent_cls.model_fields:
                lits = literal_values(parent_cls.model_fields[loc[-1]].annotation)
            issues.append(
                doc.issue(
                    path,
                    f"{value!r} is not allowed",
                    hint=allowed_hint(value, lits) if lits else err["msg"],
                )
            )
        elif etype == "missing":
            issues.append(doc.issue(path, "required field is missing"))
        elif etype == "scalar_union":
            value = err.get("input")
            issues.append(doc.issue(
                path, f"expected {err['expected']}, got {_got(value)}"))
        elif (typed := _type_message(err, err.get("input"))) is not None:
            issues.append(doc.issue(path, typed[0], hint=typed[1]))
        else:
            value = err.get("input")
            shown = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) else ""
            issues.append(doc.issue(path, err["msg"].removeprefix("Value error, ") + shown))
    return issues


__all__ = ["load", "loads", "load_config", "load_document", "did_you_mean", "dotted"]
