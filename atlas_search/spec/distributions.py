"""Search dimensions: a scalar field replaced by ``{choice: [...]}``, ``{int: [lo, hi]}``,
``{float: [lo, hi]}`` or ``{value: x}``, each optionally gated by ``when:``."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from .base import Spec

Scalar = bool | int | float | str | None
When = dict[str, Scalar | list[Scalar]]

DIST_KEYS = ("choice", "int", "float", "value")


class _Dist(Spec):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    when: When | None = Field(
        None,
        description="sample only when these fields (sibling name or dotted path from the root) "
        "have one of the given values",
    )


class Choice(_Dist):
    """Categorical: one of the listed values."""

    choice: list[Scalar] = Field(description="the values to choose from")

    @model_validator(mode="after")
    def _check(self) -> Choice:
        if not self.choice:
            raise ValueError("empty choice: list at least one value")
        seen: list[Any] = []
        for v in self.choice:
            if any(v == s and type(v) is type(s) for s in seen):
                raise ValueError(f"choice lists {v!r} twice")
            seen.append(v)
        return self

    def values(self) -> list[Any]:
        return list(self.choice)

    def size(self) -> float:
        return len(self.choice)

    def contains(self, v: Any) -> bool:
        return any(v == c and type(v) is type(c) or _same_number(v, c) for c in self.choice)


def _same_number(a: Any, b: Any) -> bool:
    num = (int, float)
    return (
        isinstance(a, num)
        and isinstance(b, num)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


MAX_EXACT_INT = 2**53
"""The largest bound (in absolute value) of an ``int:`` range: Optuna samples integer
ranges through floats (its samplers and its internal representation of a value), which
hold every integer only up to 2**53."""


def _exact_bound(value: int) -> int:
    if abs(value) > MAX_EXACT_INT:
        raise ValueError(
            f"bound {value} is too far from 0: an int range's bounds must be less than or "
            f"equal to 2**53 ({MAX_EXACT_INT:,}) in absolute value, since Optuna samples "
            "integer ranges as floats, which miss integers beyond 2**53; use a narrower "
            "range or a choice list")
    return value


IntBound = Annotated[int, AfterValidator(_exact_bound)]


class IntRange(_Dist):
    """Integer in ``[lo, hi]`` (inclusive) on a grid of ``step``, optionally log-uniform."""

    # each bound within +-2**53 (IntBound, MAX_EXACT_INT)
    int_: tuple[IntBound, IntBound] = Field(alias="int", description="[lo, hi], inclusive")
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        lo, hi = self.int_
        if lo > hi:
            raise ValueError(f"lo > hi in int: [{lo}, {hi}]")
        if self.log and lo < 1:
            raise ValueError(f"log: true needs lo >= 1 (got {lo})")
        if self.log and self.step != 1:
            raise ValueError("log: true cannot be combined with step != 1")
        if (hi - lo) % self.step:  # as Optuna: the largest grid value <= hi
            self.int_ = (lo, hi - (hi - lo) % self.step)
        return self

    def values(self) -> list[int]:
        """Every value (only for small ranges: see :meth:`size`)."""
        lo, hi = self.int_
        return list(range(lo, hi + 1, self.step))

    def nth(self, i: int) -> int:
        """The ``i``-th value of the grid (0-based), without listing the others."""
        return self.int_[0] + i * self.step

    def size(self) -> float:
        lo, hi = self.int_
        return (hi - lo) // self.step + 1

    def contains(self, v: Any) -> bool:
        """Whether ``v`` is a point of the range; a whole-number float counts as its integer
        (an integer range may search a float field, e.g. ``rope_theta``)."""
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        lo, hi = self.int_
        return (
            isinstance(v, int)
            and not isinstance(v, bool)
            and lo <= v <= hi
            and (v - lo) % self.step == 0
        )


class FloatRange(_Dist):
    """Real number in ``[lo, hi]``, optionally log-uniform or on a grid of ``step``."""

    float_: tuple[float, float] = Field(alias="float", description="[lo, hi]")
    step: float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        lo, hi = self.float_
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("float bounds must be finite")
        if lo > hi:
            raise ValueError(f"lo > hi in float: [{lo}, {hi}]")
        if self.log and lo <= 0:
            raise ValueError(f"log: true needs lo > 0 (got {lo})")
        if self.log and self.step is not None:
            raise ValueError("log: true cannot be combined with step")
        if self.step is not None:  # as Optuna: the largest grid value <= hi
            r, q = Decimal(str(hi)) - Decimal(str(lo)), Decimal(str(self.step))
            try:
                if r % q != 0:
                    self.float_ = (lo, float((r // q) * q + Decimal(str(lo))))
            except InvalidOperation:  # over 10**28 steps: sampled as given
                pass
        return self

    def values(self) -> list[float]:
        """Every value of a stepped range (only for small ranges: see :meth:`size`)."""
        if self.step is None:
            raise ValueError("a float range without step is continuous")
        return [self.nth(i) for i in range(int(self.size()))]

    def nth(self, i: int) -> float:
        """The ``i``-th value of a stepped range (0-based), without listing the others."""
        assert self.step is not None
        return self.float_[0] + i * self.step

    def size(self) -> float:
        if self.step is None:
            return math.inf
        lo, hi = self.float_
        return int(math.floor((hi - lo) / self.step + 1e-9)) + 1

    def contains(self, v: Any) -> bool:
        lo, hi = self.float_
        return isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


class Fixed(_Dist):
    """A plain value that is only set when ``when:`` holds (else the field's default)."""

    value: Scalar

    def values(self) -> list[Any]:
        return [self.value]

    def size(self) -> float:
        return 1

    def contains(self, v: Any) -> bool:
        return v == self.value


Distribution = Choice | IntRange | FloatRange | Fixed


def dist_class(raw: dict[str, Any]) -> type[Distribution] | None:
    """Which distribution a mapping spells, from its key (None if it is not one)."""
    hits = [k for k in DIST_KEYS if k in raw]
    if len(hits) != 1:
        return None
    return {"choice": Choice, "int": IntRange, "float": FloatRange, "value": Fixed}[hits[0]]


def looks_like_dist(raw: Any) -> bool:
    return isinstance(raw, dict) and any(k in raw for k in DIST_KEYS)
