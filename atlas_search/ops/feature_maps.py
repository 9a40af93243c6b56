"""Polynomial feature maps (DESIGN.md §3, ATLAS Eq. 4-5 and §3.1).

``poly_features(x, coeffs, degree=p, mode=...)`` maps ``x: [..., d]`` to ``[..., F]``.
The caller l2-normalises ``x`` first (nothing is normalised here) and passes
non-negative coefficients ``a_0..a_p`` (e.g. ``softplus(raw)`` or ``raw**2``; negative
values are clamped to 0 in the forward pass). Modes:

- ``tensor``: blocks ``sqrt(a_i) x^{⊗i}`` (Kronecker powers), ``F = sum_{i<=p} d^i``;
  kernel ``phi(x).phi(y) = sum_i a_i (x.y)^i`` exactly.
- ``symmetric``: the unique monomials ``x^alpha`` (``|alpha| = i <= p``) scaled by
  ``sqrt(a_i * i! / prod_j alpha_j!)``, ``F = C(d+p, p)``; the same kernel as ``tensor``
  (multinomial theorem) at a fraction of the width.
- ``elementwise``: ``[a_0, a_1 x, a_2 x^2, ..., a_p x^p]`` (powers per channel, no sqrt),
  ``F = 1 + p d``. A different, cheaper kernel:
  ``phi(x).phi(y) = a_0^2 + sum_{i=1}^p a_i^2 sum_j (x_j y_j)^i``.

Gradient to the coefficients: ``d sqrt(a)/da = 1 / (2 sqrt(a))`` is infinite at ``a = 0``,
so the square root used by ``tensor``/``symmetric`` evaluates its derivative at
``max(a, SQRT_GRAD_EPS)`` (forward value unchanged): gradients stay finite (at most
``1 / (2 sqrt(1e-12)) = 5e5`` times the upstream gradient) and a coefficient at 0 can still
move. Callers that want a smooth parametrisation can learn ``r`` and pass ``a = r**2``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations_with_replacement
from typing import Literal

import torch

Mode = Literal["tensor", "symmetric", "elementwise"]
MODES: tuple[str, ...] = ("tensor", "symmetric", "elementwise")
SQRT_GRAD_EPS = 1e-12
"""The sqrt derivative of the coefficients is evaluated at ``max(a, SQRT_GRAD_EPS)``."""


def taylor_coeffs(p: int) -> list[float]:
    """``[1/i! for i in 0..p]``: the Taylor coefficients of ``exp``, the init of ``a_i``."""
    if p < 0:
        raise ValueError(f"degree must be >= 0, got {p}")
    return [1.0 / math.factorial(i) for i in range(p + 1)]


def feature_dim(d: int, degree: int, mode: Mode | str = "symmetric") -> int:
    """Width of ``poly_features`` for input width ``d`` and degree ``p``:
    tensor ``sum_{i<=p} d^i``, symmetric ``C(d+p, p)``, elementwise ``1 + p d``."""
    _check(d, degree, mode)
    if mode == "tensor":
        return sum(d**i for i in range(degree + 1))
    if mode == "symmetric":
        return math.comb(d + degree, degree)
    return 1 + degree * d


def _check(d: int, degree: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown feature mode {mode!r}; expected one of {MODES}")
    if d < 1:
        raise ValueError(f"input width must be >= 1, got {d}")
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")


class _SafeSqrt(torch.autograd.Function):
    """``sqrt(a)`` whose derivative is taken at ``max(a, SQRT_GRAD_EPS)`` (finite at 0)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(a)
        return a.sqrt()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (a,) = ctx.saved_tensors
        return grad / (2.0 * a.clamp_min(SQRT_GRAD_EPS).sqrt())


def _safe_sqrt(a: torch.Tensor) -> torch.Tensor:
    return _SafeSqrt.apply(a)


@lru_cache(maxsize=64)
def _symmetric_plan(d: int, p: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """For each degree i = 1..p: (parent, last), long tensors over the degree-i monomials
    (index tuples ``j_1 <= ... <= j_i`` in lexicographic order) such that
    ``block_i = block_{i-1}[..., parent] * x[..., last]``. Built once per (d, p)."""
    plan = []
    prev: dict[tuple[int, ...], int] = {(): 0}
    for i in range(1, p + 1):
        monos = list(combinations_with_replacement(range(d), i))
        parent = torch.tensor([prev[m[:-1]] for m in monos], dtype=torch.long)
        last = torch.tensor([m[-1] for m in monos], dtype=torch.long)
        plan.append((parent, last))
        prev = {m: n for n, m in enumerate(monos)}
    return tuple(plan)


@lru_cache(maxsize=64)
def _symmetric_scale(d: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(degree, sqrt multinomial) per feature (float64, CPU): ``sqrt(i! / prod alpha_j!)``."""
    degs, mult = [0], [1.0]
    for i in range(1, p + 1):
        for m in combinations_with_replacement(range(d), i):
            counts: dict[int, int] = {}
            for j in m:
                counts[j] = counts.get(j, 0) + 1
            denom = math.prod(math.factorial(c) for c in counts.values())
            degs.append(i)
            mult.append(math.sqrt(math.factorial(i) / denom))
    return torch.tensor(degs, dtype=torch.long), torch.tensor(mult, dtype=torch.float64)


def poly_features(
    x: torch.Tensor, coeffs: torch.Tensor, *, degree: int, mode: Mode | str = "symmetric"
) -> torch.Tensor:
    """Polynomial features of ``x: [..., d]`` -> ``[..., feature_dim(d, degree, mode)]``.

    ``coeffs: [degree+1]`` are ``a_0..a_p >= 0`` (clamped at 0). For ``tensor`` and
    ``symmetric``, ``phi(x).phi(y) = sum_i a_i (x.y)^i``; for ``elementwise`` the kernel is
    ``a_0^2 + sum_{i>=1} a_i^2 sum_j (x_j y_j)^i`` (see the module docstring).
    Differentiable in ``x`` and ``coeffs``.
    """
    d = x.shape[-1]
    _check(d, degree, mode)
    coeffs = torch.as_tensor(coeffs, dtype=x.dtype, device=x.device)
    if coeffs.shape != (degree + 1,):
        raise ValueError(f"coeffs must have shape ({degree + 1},), got {tuple(coeffs.shape)}")
    a = coeffs.clamp_min(0.0)
    lead = x.shape[:-1]
    one = x.new_ones(*lead, 1)

    if mode == "elementwise":
        blocks = [a[0] * one]
        power = one
        for i in range(1, degree + 1):
            power = power * x
            blocks.append(a[i] * power)
        return torch.cat(blocks, dim=-1)

    s = _safe_sqrt(a)
    if mode == "tensor":
        blocks = [s[0] * one]
        block = one
        for i in range(1, degree + 1):
            block = (block.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
            blocks.append(s[i] * block)
        return torch.cat(blocks, dim=-1)

    # symmetric: unique monomials by degree, then one scale vector for all of them
    plan = _symmetric_plan(d, degree)
    degs, mult = _symmetric_scale(d, degree)
    blocks = [one]
    block = one
    for parent, last in plan:
        block = block[..., parent.to(x.device)] * x[..., last.to(x.device)]
        blocks.append(block)
    scale = s[degs.to(x.device)] * mult.to(device=x.device, dtype=x.dtype)
    return torch.cat(blocks, dim=-1) * scale
