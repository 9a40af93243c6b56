"""Quintic Newton-Schulz orthogonalisation (DESIGN.md §2, ATLAS Eq. 32/40).

``NS_k(S)`` approximates the polar factor ``U V^T`` of ``S = U Σ V^T``: k steps of
``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, started from
``X_0 = S / (||S||_F + 1e-7)``. Matrices with more rows than columns are transposed
first so that ``A`` is the smaller Gram matrix, and transposed back at the end.
Computed in float32 (float64 inputs stay float64, for the reference oracle).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_COEFFS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
"""The quintic coefficients (a, b, c) used at every step unless a schedule is given."""

Schedule = Sequence[tuple[float, float, float]]


def ns_schedule(steps: int, coeffs: Schedule | None = None) -> list[tuple[float, float, float]]:
    """Per-step (a, b, c) triples: ``coeffs`` as given (length must equal ``steps``),
    or the default triple repeated ``steps`` times."""
    if steps < 0:
        raise ValueError(f"ns steps must be >= 0, got {steps}")
    if coeffs is None:
        return [DEFAULT_COEFFS] * steps
    sched = [tuple(float(x) for x in c) for c in coeffs]
    if len(sched) != steps or any(len(c) != 3 for c in sched):
        raise ValueError(f"a schedule needs {steps} (a, b, c) triples, got {list(coeffs)!r}")
    return sched  # type: ignore[return-value]


def newton_schulz(
    s: torch.Tensor, steps: int = 5, coeffs: Schedule | None = None, eps: float = 1e-7
) -> torch.Tensor:
    """``NS_k`` on the last two dims of ``s`` (any leading batch dims), DESIGN.md §2.

    Returns a tensor of ``s``'s dtype; the iteration runs in float32, or in float64
    when ``s`` is float64.
    """
    sched = ns_schedule(steps, coeffs)
    work = torch.float64 if s.dtype == torch.float64 else torch.float32
    x = s.to(work)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.transpose(-2, -1)
    sumsq = (x * x).sum(dim=(-2, -1), keepdim=True)
    nonzero = sumsq > 0  # a zero matrix maps to zero with a zero (not NaN) gradient
    norm = torch.where(nonzero, torch.where(nonzero, sumsq, 1.0).sqrt(), 0.0)
    x = x / (norm + eps)
    shape = x.shape
    x = x.reshape(-1, *shape[-2:])  # baddbmm wants exactly one batch dim
    for a, b, c in sched:
        g = torch.bmm(x, x.transpose(-2, -1))
        # b*A + c*A^2, then a*X + (...) X: two fused multiply-adds, no elementwise temporaries
        x = torch.baddbmm(x, torch.baddbmm(g, g, g, beta=b, alpha=c), x, beta=a)
    x = x.reshape(shape)
    if transposed:
        x = x.transpose(-2, -1)
    return x.to(s.dtype)
