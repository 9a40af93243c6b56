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
from torch.autograd.function import once_differentiable

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
    x = _Iterate.apply(x.reshape(-1, *shape[-2:]), tuple(sched)).reshape(shape)
    if transposed:
        x = x.transpose(-2, -1)
    return x.to(s.dtype)


class _Iterate(torch.autograd.Function):
    """The k quintic steps on ``x [N, m, n]`` (``m <= n``) with a hand-written backward.

    Forward, per step: ``A = X X^T``, ``P = b A + c A^2``, ``X' = a X + P X`` (two fused
    multiply-adds). Backward from ``dX'`` (``A`` and ``P`` are symmetric)::

        dX  = a dX' + P dX'          dP = dX' X^T
        dA  = b dP + c (dP A + A dP) dX += (dA + dA^T) X

    3 m^2 n + 2 m^3 multiply-adds per step instead of autograd's ~5 m^2 n + 2 m^3 plus its
    elementwise scalings and gradient accumulations. ``X, A, P`` of every step are kept for
    the backward (``A, P`` are only ``m x m``). First-order only (no double backward
    through the iteration; the memory ops never need one).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sched: tuple) -> torch.Tensor:
        saved = []
        keep = ctx.needs_input_grad[0]  # inference: keep nothing
        for a, b, c in sched:
            g = torch.bmm(x, x.transpose(-2, -1))
            p = torch.baddbmm(g, g, g, beta=b, alpha=c)
            if keep:
                saved.append((x, g, p))
            x = torch.baddbmm(x, p, x, beta=a)
        ctx.steps = saved
        ctx.sched = sched
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        for (a, b, c), (x, g, p) in zip(reversed(ctx.sched), reversed(ctx.steps), strict=True):
            dp = torch.bmm(dy, x.transpose(-2, -1))
            dx = torch.baddbmm(dy, p, dy, beta=a)
            dg = torch.baddbmm(dp, dp, g, beta=b, alpha=c)
            dg = torch.baddbmm(dg, g, dp, alpha=c)
            dy = torch.baddbmm(dx, dg + dg.transpose(-2, -1), x)
        return dy, None
