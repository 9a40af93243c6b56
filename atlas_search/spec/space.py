"""The search-space layer: dimensions with ``when:`` conditions, sampling with an Optuna
trial into a concrete :class:`Config`, baselines to enqueue, and static checks."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .config import Config
from .distributions import Choice, Distribution, FloatRange, IntRange
from .errors import Issue, Path, allowed_hint, dotted
from .introspect import adapter, default_of, field_at, pick_member, union_members
from .presets import SIZE_FIELDS, deep_merge, preset_model, preset_names
from .study import StudySpec
from .task import reported_metrics

N_PROBES = 64
"""Random points drawn by :meth:`Space.check` to find always-invalid combinations."""
MAX_GRID = 100_000
"""The most points a ``grid`` space may have, and the most values one dimension may have
under ``brute_force``: both samplers list them (Optuna's GridSampler every point,
BruteForceSampler every value of a dimension)."""


@dataclass
class Dimension:
    """One searched field: its path in the config, distribution and resolved conditions."""

    path: Path
    dist: Distribution
    conditions: list[tuple[Path, list[Any]]] = field(default_factory=list)
    note: str | None = None
    """Said by ``validate``: e.g. a range bound moved onto the step grid."""

    @property
    def name(self) -> str:
        """The Optuna parameter name: the dotted path (``model.memory.kind``)."""
        return dotted(self.path)

    @property
    def is_param(self) -> bool:
        """Whether the sampler chooses it (``value:`` dimensions are fixed)."""
        return not hasattr(self.dist, "value")


def _get(data: Any, path: Path) -> tuple[bool, Any]:
    node = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _set(data: dict, path: Path, value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _unused(model: dict[str, Any], path: Path) -> bool:
    """Whether a model (a dumped ``ModelSpec``) ignores the field at ``path``: the memory
    block of a model without a memory mixer, the SWA width of one without SWA. An enqueued
    preset leaves such a field to the sampler instead of pinning its default."""
    if path[1] == "memory":
        return model["mixer"] != "memory"
    if path[1] == "swa_window":
        return model["mixer"] != "swa" and model["mixing"] == "none"
    return False


class EnqueueError(ValueError):
    """A ``study.enqueue`` entry outside the space, with the YAML path it is about."""

    def __init__(self, message: str, where: Path) -> None:
        super().__init__(message)
        self.where = where


@dataclass
class Space:
    """A validated search space. ``base`` is the raw config with dimensions taken out."""

    study: StudySpec
    base: dict[str, Any]
    dims: list[Dimension]
    preset_raw: dict[str, Any]
    source: str | None = None
    warnings: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- conditions
    def dim(self, path: Path) -> Dimension | None:
        return next((d for d in self.dims if d.path == tuple(path)), None)

    def order_dims(self) -> None:
        """Topological order: a dimension comes after those its ``when:`` reads."""
        done: list[Dimension] = []
        pending = list(self.dims)
        while pending:
            ready = [
                d
                for d in pending
                if all(self.dim(p) is None or self.dim(p) in done for p, _ in d.conditions)
            ]
            if not ready:
                raise RuntimeError("cycle")  # resolve_when rejects cycles first
            for d in ready:
                done.append(d)
                pending.remove(d)
        self.dims = done

    def fallback(self, path: Path) -> Any:
        """Value of a field that is not sampled: fixed in the file, else preset, else default."""
        found, v = _get(self.base, path)
        if found:
            return v
        found, v = _get({"model": self.preset_raw}, path)
        if found:
            return v
        owner = field_at(Config, path, self.base)
        if owner is None:
            return None
        cls, name = owner
        return default_of(cls, name)

    def active(self, d: Dimension, values: dict[Path, Any]) -> bool:
        for p, allowed in d.conditions:
            v = values[p] if p in values else self.fallback(p)
            if not any(v == a for a in allowed):
                return False
        return True

    # ---------------------------------------------------------------- sampling
    def sample(self, trial: Any) -> Config:
        """Suggest every active dimension on an Optuna trial; return the concrete config.

        A trial enqueued from a preset (user attr ``preset``) starts from that preset's
        model block, keeping this space's sizes (:data:`SIZE_FIELDS`)."""
        preset = getattr(trial, "user_attrs", {}).get("preset")
        block = {"model": preset_model(preset)} if preset else {}
        values: dict[Path, Any] = {}
        for d in self.dims:
            if not self.active(d, values):
                continue
            if not d.is_param and _get(block, d.path)[0]:
                continue  # a baseline keeps its preset's value over a fixed `value:` field
            values[d.path] = _suggest(trial, d)
        return self.concretize(values, preset=preset)

    def concretize(self, values: dict[Path, Any], preset: str | None = None) -> Config:
        """The concrete config for given dimension values (raises ValidationError)."""
        raw = copy.deepcopy(self.base)
        if preset is not None:
            block = {k: v for k, v in preset_model(preset).items() if k not in SIZE_FIELDS}
            block["preset"] = preset
            raw["model"] = deep_merge(raw.get("model", {}), block)
        for d in self.dims:
            if d.path in values:
                continue
            found, v = _get({"model": self.preset_raw}, d.path)
            if found and preset is None:
                _set(raw, d.path, v)
        for path, v in values.items():
            _set(raw, path, v)
        return Config.model_validate(raw)

    def random_values(self, rng: random.Random) -> dict[Path, Any]:
        values: dict[Path, Any] = {}
        for d in self.dims:
            if self.active(d, values):
                values[d.path] = _draw(d.dist, rng)
        return values

    # ---------------------------------------------------------------- baselines
    def enqueue_points(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """``(params, user_attrs)`` for each ``study.enqueue`` entry, for
        ``study.enqueue_trial``. Raises ValueError on a point outside the space."""
        out = []
        for i, entry in enumerate(self.study.enqueue):
            preset = entry if isinstance(entry, str) else entry.get("preset")
            given = (
                {} if isinstance(entry, str) else {k: v for k, v in entry.items() if k != "preset"}
            )
            values: dict[Path, Any] = {}
            preset_full = None
            if preset is not None:
                preset_full = Config.model_validate(
                    {
                        **copy.deepcopy(self.base),
                        "model": deep_merge(
                            {
                                k: v
                                for k, v in self.base.get("model", {}).items()
                                if k in SIZE_FIELDS
                            },
                            preset_model(preset),
                        ),
                    }
                ).model_dump()
            by_name = {d.name: d for d in self.dims}
            for name in given:
                if name not in by_name:
                    raise EnqueueError(f"{name!r} is not a dimension of this space",
                                       ("study", "enqueue", i, name))
            for d in self.dims:
                if not self.active(d, values):
                    continue
                if d.name in given:
                    v = given[d.name]
                elif (
                    preset_full is not None
                    and d.path[0] == "model"
                    and d.path[1] not in SIZE_FIELDS
                ):
                    if _unused(preset_full["model"], d.path):
                        continue  # a field the preset's model ignores: the sampler's
                    _, v = _get(preset_full, d.path)
                else:
                    continue
                if d.is_param and not d.dist.contains(v):
                    who = f"preset {preset!r}" if d.name not in given else "the point"
                    where = ("study", "enqueue", i) + ((d.name,) if d.name in given else ())
                    raise EnqueueError(
                        f"{who} sets {d.name} = {v!r}, outside this space's "
                        f"{_describe(d.dist)}", where)
                values[d.path] = v
            for name, v in given.items():
                d = by_name[name]
                if d.path not in values:  # its when: does not hold under the point's values
                    why = "; ".join(
                        f"{dotted(p)} is {values.get(p, self.fallback(p))!r}"
                        + (" (the point does not set it)"
                           if p not in values and self.dim(p) is not None else "")
                        + f", and it applies only for {allowed}"
                        for p, allowed in d.conditions
                        if not any(values.get(p, self.fallback(p)) == a for a in allowed))
                    raise EnqueueError(
                        f"the point sets {name} = {v!r}, which does not apply under its "
                        f"other values: {why}; set those too, or drop {name}",
                        ("study", "enqueue", i, name))
            params = {dotted(p): v for p, v in values.items() if self.dim(p).is_param}
            attrs = {"preset": preset} if preset else {}
            label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in given.items())
            attrs["enqueued"] = f"{preset} ({label})" if preset and label else (
                preset or "point")
            out.append((params, attrs))
        return out

    def baseline_configs(self) -> list[tuple[str, Config]]:
        """``(label, concrete config)`` of each ``study.enqueue`` entry, as the search will
        train it (raises ValueError / ValidationError on an entry outside the space)."""
        out = []
        for params, attrs in self.enqueue_points():
            values = {tuple(k.split(".")): v for k, v in params.items()}
            out.append((attrs["enqueued"], self.concretize(values, preset=attrs.get("preset"))))
        return out

    # ---------------------------------------------------------------- checks
    def check(self, doc: Any) -> list[Issue]:
        """Static checks: samplers that need discrete spaces, enqueue entries, and random
        probes for combinations that are always invalid (warnings when only some are)."""
        issues: list[Issue] = []
        sampler = self.study.sampler.name
        if sampler in ("grid", "brute_force"):
            for d in self.dims:
                if isinstance(d.dist, FloatRange) and d.dist.step is None:
                    issues.append(
                        doc.issue(
                            d.path,
                            f"sampler {sampler!r} needs a "
                            "discrete space: give this float range a step",
                        )
                    )
                elif sampler == "brute_force" and d.is_param and d.dist.size() > MAX_GRID:
                    issues.append(doc.issue(
                        d.path, f"sampler 'brute_force' lists every value of each dimension, "
                        f"and this one has {int(d.dist.size()):,} (limit {MAX_GRID:,}); "
                        "give it a coarser step or use another sampler"))
            if sampler == "grid" and not issues and self.size() > MAX_GRID:
                big = max((d for d in self.dims if d.is_param), key=lambda d: d.dist.size())
                issues.append(doc.issue(
                    ("study", "sampler", "name"), f"sampler 'grid' lists every point of the "
                    f"space, and this one has {self.size():,} (limit {MAX_GRID:,}; the "
                    f"largest dimension is {big.name}, {int(big.dist.size()):,} values); use "
                    "coarser steps or another sampler (random, tpe, ...)"))
        issues += self.check_objectives(doc)
        names = preset_names()
        for i, entry in enumerate(self.study.enqueue):
            preset = entry if isinstance(entry, str) else entry.get("preset")
            if preset is not None and preset not in names:
                issues.append(
                    doc.issue(
                        ("study", "enqueue", i),
                        f"unknown preset {preset!r}",
                        hint=allowed_hint(preset, names, "presets"),
                    )
                )
        if not issues:
            try:
                self.baseline_configs()
            except ValueError as exc:
                msg = (
                    str(exc).splitlines()[0]
                    if not isinstance(exc, ValidationError)
                    else first_error(exc)
                )
                where = exc.where if isinstance(exc, EnqueueError) else ("study", "enqueue")
                issues.append(doc.issue(where, msg, key=len(where) == 4))
        if issues:
            return issues
        rng = random.Random(0)
        bad: dict[str, int] = {}
        n_bad = 0
        for _ in range(N_PROBES):
            try:
                self.concretize(self.random_values(rng))
            except ValidationError as exc:
                n_bad += 1
                reason = first_error(exc)
                bad[reason] = bad.get(reason, 0) + 1
        if n_bad == N_PROBES:
            reason = max(bad, key=bad.get)
            issues.append(doc.issue((), f"no point of this space is a valid config: {reason}"))
        elif n_bad:
            reason = max(bad, key=bad.get)
            self.warnings.append(
                f"{n_bad} of {N_PROBES} random points are invalid configs and will be rejected "
                f"as infeasible trials (most often: {reason})"
            )
        return issues

    def check_objectives(self, doc: Any) -> list[Issue]:
        """Each objective must be a metric the task reports (else every trial would fail
        for the missing metric); ``ptb`` with a searched ``level`` may report either."""
        task = self.base.get("task")
        name = task.get("name", "mqar") if isinstance(task, dict) else "mqar"
        level = None
        if name == "ptb" and self.dim(("task", "level")) is None:
            level = self.fallback(("task", "level"))
        reported = reported_metrics(name, level)
        issues = []
        for i, objective in enumerate(self.study.objectives):
            if objective.metric not in reported:
                what = f"task {name!r}" + (f" at level {level!r}" if level else "")
                issues.append(doc.issue(
                    ("study", "objectives", i, "metric"),
                    f"{what} does not report {objective.metric!r}",
                    hint=allowed_hint(objective.metric, reported, "it reports")))
        return issues

    # ---------------------------------------------------------------- summaries
    def grid(self) -> dict[str, list[Any]]:
        """All discrete values per parameter (for Optuna's GridSampler, which lists every
        point: :meth:`check` refuses a grid space above :data:`MAX_GRID` points)."""
        if self.size() > MAX_GRID:
            raise ValueError(f"a grid of {self.size():,} points is too large to list "
                             f"(limit {MAX_GRID:,})")
        return {d.name: d.dist.values() for d in self.dims if d.is_param}

    def count(self, limit: int = 100_000) -> tuple[float, bool]:
        """``(points, exact)``: distinct points with ``when:`` conditions applied, enumerated
        when the space is discrete and small; else the product bound of :meth:`size`."""
        bound = self.size()
        if is_infinite(bound) or bound > limit:
            return bound, False

        def walk(i: int, values: dict[Path, Any]) -> int:
            if i == len(self.dims):
                return 1
            d = self.dims[i]
            if not self.active(d, values):
                return walk(i + 1, values)
            if not d.is_param:  # a `value:` dimension: later conditions may read it
                return walk(i + 1, {**values, d.path: d.dist.value})
            return sum(walk(i + 1, {**values, d.path: v}) for v in d.dist.values())

        return walk(0, {}), True

    def size(self) -> float:
        """Number of distinct points, counting conditional dimensions as always active
        (an upper bound; an exact int, which may be huge); ``math.inf`` when a continuous
        dimension exists."""
        sizes = [d.dist.size() for d in self.dims if d.is_param]
        if any(is_infinite(n) for n in sizes):
            return math.inf
        return math.prod(int(n) for n in sizes)


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if p not in ("mqar",)]
    if err["type"] == "cross_field":
        loc.append(err["ctx"]["field"])
        return f"{'.'.join(loc)}: {err['ctx']['message']}"
    return f"{'.'.join(loc)}: {err['msg']}"


def _describe(dist: Distribution) -> str:
    if isinstance(dist, Choice):
        return f"choice {dist.choice}"
    if isinstance(dist, IntRange):
        return f"int range {list(dist.int_)} step {dist.step}"
    if isinstance(dist, FloatRange):
        return f"float range {list(dist.float_)}"
    return f"value {dist.value!r}"


def _suggest(trial: Any, d: Dimension) -> Any:
    dist = d.dist
    if isinstance(dist, Choice):
        return trial.suggest_categorical(d.name, dist.choice)
    if isinstance(dist, IntRange):
        lo, hi = dist.int_
        return trial.suggest_int(d.name, lo, hi, step=dist.step, log=dist.log)
    if isinstance(dist, FloatRange):
        lo, hi = dist.float_
        return trial.suggest_float(d.name, lo, hi, step=dist.step, log=dist.log)
    return dist.value


def _draw(dist: Distribution, rng: random.Random) -> Any:
    """One random value of ``dist``, drawn without listing its values (ranges may be huge):
    uniform on the grid of a stepped range (the same draws as ``rng.choice`` of the list),
    log-uniform for ``log: true`` (an int range as Optuna does, rounded from
    ``[lo - 0.5, hi + 0.5]``)."""
    if isinstance(dist, FloatRange):
        lo, hi = dist.float_
        if dist.step is not None:
            return dist.nth(rng.randrange(int(dist.size())))
        return (
            math.exp(rng.uniform(math.log(lo), math.log(hi))) if dist.log else rng.uniform(lo, hi)
        )
    if isinstance(dist, IntRange):
        lo, hi = dist.int_
        if dist.log:
            v = round(math.exp(rng.uniform(math.log(lo - 0.5), math.log(hi + 0.5))))
            return min(max(v, lo), hi)
        return dist.nth(rng.randrange(int(dist.size())))
    if isinstance(dist, Choice):
        return rng.choice(dist.choice)
    return dist.value


def is_infinite(n: float) -> bool:
    """Whether a size is infinite (a continuous dimension); exact ints may exceed floats."""
    return isinstance(n, float) and math.isinf(n)


def resolve_when(space: Space, doc: Any) -> list[Issue]:
    """Resolve each ``when:`` key (sibling name or dotted root path) to a field path, check
    the field exists and the values are valid for it, and reject cycles."""
    issues: list[Issue] = []
    for d in space.dims:
        if not d.dist.when:
            continue
        for key, allowed in d.dist.when.items():
            path = tuple(key.split(".")) if "." in key else d.path[:-1] + (key,)
            owner = field_at(Config, path, space.base)
            here = d.path + ("when", key)
            block = union_members(owner[0].model_fields[owner[1]].annotation) if owner else []
            if block:  # a block, not a field: name one of its fields instead
                fields = list(pick_member(block, _get(space.base, path)[1]).model_fields)
                issues.append(doc.issue(
                    here, f"when: names {dotted(path)!r}, which is a block, not a field",
                    key=True, hint=f"name one of its fields: {dotted(path)}.<field>; fields "
                    "there: " + ", ".join(fields)))
                continue
            if owner is None:
                opts: list[str] = []
                if len(path) > 1:
                    pc = field_at(Config, path[:-1], space.base)
                    if pc is not None:
                        members = union_members(pc[0].model_fields[pc[1]].annotation)
                        opts = list(members[0].model_fields) if members else []
                else:
                    opts = list(Config.model_fields)
                issues.append(
                    doc.issue(
                        here,
                        f"when: names {dotted(path)!r}, which is not a field",
                        key=True,
                        hint=allowed_hint(path[-1], opts, "fields there") if opts else None,
                    )
                )
                continue
            values = allowed if isinstance(allowed, list) else [allowed]
            for v in values:
                try:
                    adapter(*owner).validate_python(v)
                except ValidationError as exc:
                    from .load import _scalar_issue

                    iss = _scalar_issue(owner[0], owner[1], v, exc.errors()[0], here, doc)
                    iss.message = f"when: {iss.message}"
                    issues.append(iss)
            if path == d.path:
                issues.append(doc.issue(here, "when: a field cannot depend on itself"))
            d.conditions.append((path, values))
    if issues:
        return issues
    # cycles
    graph = {d.path: [p for p, _ in d.conditions if space.dim(p) is not None] for d in space.dims}
    state: dict[Path, int] = {}

    def visit(p: Path, stack: list[Path]) -> list[Path] | None:
        if state.get(p) == 1:
            return stack + [p]
        if state.get(p) == 2:
            return None
        state[p] = 1
        for q in graph.get(p, []):
            cyc = visit(q, stack + [p])
            if cyc:
                return cyc
        state[p] = 2
        return None

    for p in graph:
        cyc = visit(p, [])
        if cyc:
            issues.append(
                doc.issue(
                    p, "when: conditions form a cycle: " + " -> ".join(dotted(x) for x in cyc)
                )
            )
            break
    # conditions that can never hold
    for d in space.dims:
        for p, allowed in d.conditions:
            src = space.dim(p)
            if src is not None and src.is_param and isinstance(src.dist, (Choice, IntRange)):
                if not any(src.dist.contains(a) for a in allowed):
                    space.warnings.append(
                        f"{d.name} is never sampled: {dotted(p)} never takes {allowed}"
                    )
            elif src is None and not any(space.fallback(p) == a for a in allowed):
                space.warnings.append(
                    f"{d.name} is never sampled: {dotted(p)} is fixed to {space.fallback(p)!r}"
                )
    return issues
