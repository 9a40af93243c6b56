"""Recall capacity of test-time memories written with the Omega-rule ops (ATLAS §3.1).

N random pairs: keys uniform on the unit sphere of R^dk, values Gaussian normalised to unit
length (``dv = dk``). The pairs are written into a memory by the ops themselves, then every key
is read back; a pair counts as recalled when ``||M(k_i) - v_i|| / ||v_i|| < threshold``.

Writing through the op. The N pairs are repeated for E epochs as one sequence (``T = N E``)
with Omega window ``c = N``, chunk ``b = N`` and the ``l2`` objective. From the second epoch
on, the window of every token holds each pair exactly once, and all gradients of a chunk are
taken at the chunk's anchor, so every token of a chunk sees the same full-batch gradient
``g = grad sum_i l_i(M_anchor)`` (DESIGN §2, the case ``c >= T`` per chunk):

* ``gd`` with ``eta_t = h / N``: one full-batch GD step ``M <- M - h g`` per chunk.
* ``momentum`` with per-chunk gate pattern ``eta = [h/N, 0, ..., 0]``,
  ``theta = [beta, 1, ..., 1]``: ``S`` is set at the chunk's first token and then added to
  ``M`` on each of the N tokens, so ``u = N S`` follows heavy ball exactly:
  ``u <- beta u - h g``, ``M <- M + u`` (the default: GD needs ~kappa epochs, heavy ball
  ~sqrt(kappa)).

The first epoch is a warm start (partial windows). ``h`` and ``beta`` come from the spectrum
of the key Gram matrix (linear memory: ``h = 4/(sqrt(L)+sqrt(mu))^2``,
``beta = ((sqrt(L)-sqrt(mu))/(sqrt(L)+sqrt(mu)))^2``, ``mu`` = smallest non-zero eigenvalue,
floored at ``L / kappa_cap``); the MLP uses a fixed ``lr`` over a crude curvature estimate.
:func:`full_batch_gd` / :func:`full_batch_heavy_ball` are the explicit recurrences the tests
compare the op against.

Memories: linear with identity features (Proposition 1: at most ``dk`` pairs); linear with
symmetric poly features of degree 2 and 3, Taylor coefficients ``1/i!`` (Proposition 2:
``C(dk+p, p)`` features; on the unit sphere ``sum x_j^2 = 1`` makes ``C(dk+p-2, p-2)`` of them
linearly dependent, so the rank is ``C(dk+p, p) - C(dk+p-2, p-2)``); a 2-layer residual MLP
``x + W_2 gelu(W_1 x)`` (Theorem 1). Each is compared with an optimum computed outside the op:
``torch.linalg.lstsq`` (minimum norm) for linear memory, a direct full-batch Adam fit for the
MLP (no closed form; a stronger optimizer, not a certificate).

``python -m atlas_search.bench.capacity --out DIR [--quick]`` prints the tables and writes
``capacity.json`` and ``capacity.png`` (if matplotlib is installed) to ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from ..ops.feature_maps import feature_dim, poly_features, taylor_coeffs
from ..ops.omega_linear import omega_linear
from ..ops.omega_mlp import init_mlp_weights, mlp_memory_apply, omega_mlp
from .cli_args import check_out, nonneg_int, positive_int, unit_float

F64 = torch.float64
RECALL_LEVEL = 0.99
"""A memory 'holds' N pairs when at least this fraction is recalled."""
MAX_BLOCK = 4_000_000
"""Cap on ``B * epochs_per_call * 2 N^2`` (the op's per-call chunk matrices), in elements."""


# ----------------------------------------------------------------------------- data


def sample_pairs(n: int, dk: int, dv: int, trials: int, seed: int) -> tuple[Tensor, Tensor]:
    """``trials`` independent sets of ``n`` pairs: keys ``[trials, n, dk]`` uniform on the unit
    sphere, values ``[trials, n, dv]`` Gaussian scaled to unit norm (float64)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(trials, n, dk, generator=g, dtype=F64)
    v = torch.randn(trials, n, dv, generator=g, dtype=F64)
    return k / k.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True)


def features(keys: Tensor, degree: int) -> Tensor:
    """Identity for ``degree = 1``, else symmetric poly features with Taylor ``a_i = 1/i!``."""
    if degree == 1:
        return keys
    coeffs = torch.tensor(taylor_coeffs(degree), dtype=keys.dtype)
    return poly_features(keys, coeffs, degree=degree, mode="symmetric")


def sphere_rank(dk: int, degree: int) -> int:
    """Dimension of the polynomials of degree <= p restricted to the unit sphere of R^dk:
    ``C(dk+p, p) - C(dk+p-2, p-2)`` (``dk`` for ``p = 1``)."""
    if degree == 1:
        return dk
    return math.comb(dk + degree, degree) - math.comb(dk + degree - 2, degree - 2)


def rel_errors(pred: Tensor, values: Tensor) -> Tensor:
    """``||pred_i - v_i|| / ||v_i||`` per pair (NaN/inf become inf)."""
    r = (pred - values).norm(dim=-1) / values.norm(dim=-1)
    return torch.nan_to_num(r, nan=math.inf, posinf=math.inf)


# ----------------------------------------------------------------------------- gates


def _spectrum(phi: Tensor, kappa_cap: float) -> tuple[Tensor, Tensor]:
    """Per trial ``(L, mu)``: largest and smallest non-zero eigenvalue of ``Phi^T Phi``
    (via the ``N x N`` Gram), ``mu`` floored at ``L / kappa_cap``."""
    ev = torch.linalg.eigvalsh(phi @ phi.transpose(-1, -2))
    big = ev[:, -1]
    nonzero = ev.where(ev > big[:, None] * 1e-10, big[:, None])
    return big, torch.maximum(nonzero.min(dim=-1).values, big / kappa_cap)


def heavy_ball_params(big: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
    """Polyak's optimal ``(h, beta)`` for a quadratic with curvature in ``[mu, big]``."""
    sl, sm = big.sqrt(), mu.sqrt()
    return 4.0 / (sl + sm) ** 2, ((sl - sm) / (sl + sm)) ** 2


def chunk_gates(
    n: int, epochs: int, h: Tensor, beta: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Gates ``[B, n*epochs, 1]`` for one GD (``beta=None``: ``eta = h/n`` everywhere) or
    heavy-ball (``eta = [h/n, 0..]``, ``theta = [beta, 1..]``) step of size ``h`` per chunk."""
    bsz = h.shape[0]
    eta = h[:, None].expand(bsz, n).clone() / n
    theta = None
    if beta is not None:
        eta[:, 1:] = 0.0
        theta = torch.ones(bsz, n, dtype=h.dtype)
        theta[:, 0] = beta
    eta = eta.repeat(1, epochs).unsqueeze(-1)
    return eta, None if theta is None else theta.repeat(1, epochs).unsqueeze(-1)


def _epochs_per_call(trials: int, n: int, width: int, epochs: int) -> int:
    return max(1, min(epochs, MAX_BLOCK // (trials * 2 * n * max(n, width))))


# ----------------------------------------------------------------------------- writers


def write_linear(
    phi: Tensor,
    values: Tensor,
    *,
    epochs: int,
    optimizer: str = "momentum",
    kappa_cap: float = 1e5,
    backend: str = "torch",
) -> Tensor:
    """Write ``phi [B, N, F] -> values [B, N, Dv]`` with :func:`omega_linear` (``c = b = N``,
    ``l2``, ``M_0 = 0``, ``E = epochs``); returns ``M [B, F, Dv]``."""
    bsz, n, _ = phi.shape
    big, mu = _spectrum(phi, kappa_cap)
    if optimizer == "gd":
        h, beta = 2.0 / (big + mu), None
    elif optimizer == "momentum":
        h, beta = heavy_ball_params(big, mu)
    else:
        raise ValueError(f"optimizer must be gd or momentum, got {optimizer!r}")
    per = _epochs_per_call(bsz, n, phi.shape[-1], epochs)
    eta, theta = chunk_gates(n, per, h, beta)
    k_seg, v_seg = phi.repeat(1, per, 1).unsqueeze(2), values.repeat(1, per, 1).unsqueeze(2)
    state = None
    done = 0
    while done < epochs:
        e = min(per, epochs - done)
        t = e * n
        th = None if theta is None else theta[:, :t]
        _, state = omega_linear(
            k_seg[:, :t], k_seg[:, :t], v_seg[:, :t], alpha=None, eta=eta[:, :t],
            gamma=torch.ones_like(eta[:, :t, :]), theta=th, window=n, chunk_size=n,
            optimizer=optimizer, objective="l2", initial_state=state, backend=backend,
        )
        done += e
    assert state is not None
    return state.memory[:, 0]


def mlp_curvature(keys: Tensor, weights: Sequence[Tensor]) -> Tensor:
    """Crude per-trial curvature scale of the MLP loss at ``weights``: ``lambda_max(H^T H) +
    lambda_max(K^T K)`` (Gauss-Newton blocks of the two layers at a unit back-scale)."""
    hid = torch.nn.functional.gelu(keys @ weights[0])
    gram_h = torch.linalg.eigvalsh(hid.transpose(-1, -2) @ hid)[:, -1]
    return gram_h + torch.linalg.eigvalsh(keys.transpose(-1, -2) @ keys)[:, -1]


def write_mlp(
    keys: Tensor,
    values: Tensor,
    weights: Sequence[Tensor],
    *,
    epochs: int,
    lr: float = 0.15,
    beta: float = 0.95,
    backend: str = "torch",
) -> list[Tensor]:
    """Write with :func:`omega_mlp` (2-layer residual GELU MLP, ``c = b = N``, ``l2``),
    heavy-ball gate pattern with ``h = lr / mlp_curvature``. ``weights [B, in, out]``;
    returns the final weights ``[B, in, out]``."""
    bsz, n, dk = keys.shape
    h = lr / mlp_curvature(keys, weights)
    per = _epochs_per_call(bsz, n, weights[0].shape[-1], epochs)
    eta, theta = chunk_gates(n, per, h, torch.full((bsz,), beta, dtype=keys.dtype))
    k_seg, v_seg = keys.repeat(1, per, 1).unsqueeze(2), values.repeat(1, per, 1).unsqueeze(2)
    w0 = [w.unsqueeze(1) for w in weights]  # [B, H=1, in, out]
    state = None
    done = 0
    while done < epochs:
        e = min(per, epochs - done)
        t = e * n
        _, state = omega_mlp(
            k_seg[:, :t], k_seg[:, :t], v_seg[:, :t], w0, kind="mlp", activation="gelu",
            layer_norm=False, alpha=None, eta=eta[:, :t], gamma=None, theta=theta[:, :t],
            window=n, chunk_size=n, optimizer="momentum", objective="l2",
            initial_state=state, backend=backend,
        )
        done += e
    assert state is not None
    return [w[:, 0] for w in state.weights]


def lstsq_memory(phi: Tensor, values: Tensor) -> Tensor:
    """Minimum-norm least-squares ``M [B, F, Dv]`` of ``phi M = values`` (the GD limit)."""
    return torch.linalg.lstsq(phi, values, driver="gelsd").solution


def fit_mlp_adam(
    keys: Tensor, values: Tensor, weights: Sequence[Tensor], *, steps: int, lr: float = 1e-2
) -> list[Tensor]:
    """Direct full-batch Adam fit of the same MLP (cosine-decayed ``lr``), outside the op."""
    ws = [w.detach().clone().requires_grad_(True) for w in weights]
    opt = torch.optim.Adam(ws, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    for _ in range(steps):
        opt.zero_grad()
        loss = (mlp_memory_apply(keys, ws, kind="mlp") - values).square().sum()
        loss.backward()
        opt.step()
        sched.step()
    return [w.detach() for w in ws]


def full_batch_gd(phi: Tensor, values: Tensor, h: Tensor, epochs: int) -> Tensor:
    """What :func:`write_linear` with ``gd`` must equal: first epoch
    ``M_1 = (h/N) sum_i (N-i+1) k_i^T v_i`` (partial windows), then ``M <- M - h g``."""
    n = phi.shape[1]
    w = torch.arange(n, 0, -1, dtype=phi.dtype) / n
    m = h[:, None, None] * phi.transpose(-1, -2) @ (w[:, None] * values)
    for _ in range(epochs - 1):
        m = m - h[:, None, None] * phi.transpose(-1, -2) @ (phi @ m - values)
    return m


def full_batch_heavy_ball(
    phi: Tensor, values: Tensor, h: Tensor, beta: Tensor, epochs: int
) -> Tensor:
    """What :func:`write_linear` with ``momentum`` must equal: first epoch ``u = h k_1^T v_1``
    (only token 1 has ``eta > 0`` and its window holds pair 1), then
    ``u <- beta u - h g``, ``M <- M + u``."""
    hb, bb = h[:, None, None], beta[:, None, None]
    u = hb * phi[:, :1].transpose(-1, -2) @ values[:, :1]
    m = u
    for _ in range(epochs - 1):
        u = bb * u - hb * phi.transpose(-1, -2) @ (phi @ m - values)
        m = m + u
    return m


# ----------------------------------------------------------------------------- experiment


@dataclass(frozen=True)
class MemoryCase:
    """One memory of the sweep. ``degree`` 1/2/3 for linear memory (identity / poly);
    ``ns_op``: the N written through the op (``None`` = all of ``ns``)."""

    name: str
    kind: str  # "linear" or "mlp"
    degree: int
    ns: tuple[int, ...]
    epochs: int
    ns_op: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Settings:
    dk: int = 8
    trials: int = 4
    threshold: float = 0.1
    seed: int = 0
    optimizer: str = "momentum"
    kappa_cap: float = 1e5
    mlp_expansion: int = 4
    mlp_lr: float = 0.15
    mlp_beta: float = 0.95
    adam_steps: int = 3000
    memories: tuple[MemoryCase, ...] = field(default_factory=tuple)


def default_settings(dk: int = 8, quick: bool = False) -> Settings:
    """The full sweep (a few minutes on 2 cores) or the ``--quick`` one (seconds)."""
    s = lambda *xs: tuple(sorted({x for x in xs if x >= 1}))  # noqa: E731
    d2, d3 = sphere_rank(dk, 2), sphere_rank(dk, 3)
    if quick:
        return Settings(
            dk=dk, trials=3, adam_steps=0,
            memories=(
                MemoryCase("linear identity", "linear", 1, s(dk // 2, dk, 2 * dk), 300),
                MemoryCase(
                    "linear poly2", "linear", 2, s(dk // 2, dk, 2 * dk, 2 * d2), 400,
                    ns_op=s(dk // 2, dk, 2 * dk),
                ),
                MemoryCase("mlp 2-layer", "mlp", 1, s(2 * dk), 600),
            ),
        )
    return Settings(
        dk=dk,
        memories=(
            MemoryCase(
                "linear identity", "linear", 1,
                s(2, dk // 2, dk - 2, dk - 1, dk, dk + 1, dk + 2, 3 * dk // 2, 2 * dk), 500,
            ),
            MemoryCase(
                "linear poly2", "linear", 2,
                s(dk, 2 * dk, d2 // 2, 3 * d2 // 4, d2 - 4, d2 - 2, d2, d2 + 2, d2 + 4,
                  5 * d2 // 4, 3 * d2 // 2),
                1000,
            ),
            MemoryCase(
                "linear poly3", "linear", 3,
                s(d3 // 4, d3 // 2, 3 * d3 // 4, d3 - 8, d3, d3 + 4, d3 + 16, 5 * d3 // 4),
                1500,
                ns_op=s(d3 // 4, d3 // 2, 3 * d3 // 4, d3 - 8),
            ),
            MemoryCase(
                "mlp 2-layer", "mlp", 1, s(dk, 2 * dk, 3 * dk, 4 * dk, 5 * dk, 6 * dk, 7 * dk,
                                           8 * dk, 9 * dk, 10 * dk), 2000,
            ),
        ),
    )


def capacity_from_curve(
    ns: Sequence[int], recalls: Sequence[float | None], level: float = RECALL_LEVEL
) -> tuple[int | None, int | None]:
    """``(last N with recall >= level before the first failure, first N below level)``,
    over the measured points (``None`` entries skipped)."""
    last_ok = first_fail = None
    for n, r in sorted((n, r) for n, r in zip(ns, recalls, strict=True) if r is not None):
        if r >= level:
            last_ok = n
        else:
            first_fail = n
            break
    return last_ok, first_fail


def _mlp_weights(case: MemoryCase, st: Settings, n: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(st.seed * 7919 + n + 1)
    return init_mlp_weights(
        st.trials, st.dk, st.dk, kind="mlp", depth=2, expansion=st.mlp_expansion,
        dtype=F64, generator=g,
    )


def run_case(case: MemoryCase, st: Settings, log: Callable[[str], None] = print) -> dict:
    """Sweep one memory; returns its JSON-able record."""
    t0 = time.perf_counter()
    dk = st.dk
    if case.kind == "linear":
        width = feature_dim(dk, case.degree, "symmetric") if case.degree > 1 else dk
        params = width * dk
        refs = {"d_k": dk, "feature_dim": width, "sphere_rank": sphere_rank(dk, case.degree)}
        if case.degree > 1:
            refs[f"C(d_k+{case.degree},{case.degree})"] = width
        opt_label = "lstsq"
    else:
        shapes = [(dk, st.mlp_expansion * dk), (st.mlp_expansion * dk, dk)]
        width = dk
        params = sum(a * b for a, b in shapes)
        refs = {"d_k": dk, "d_k*d_v (Thm 1 lower bound, constants unspecified)": dk * dk}
        opt_label = f"adam{st.adam_steps}" if st.adam_steps else None
    refs["params/d_v"] = params // dk
    ns_op = set(case.ns if case.ns_op is None else case.ns_op)
    rows = []
    for n in case.ns:
        keys, values = sample_pairs(n, dk, dk, st.trials, st.seed * 1_000_003 + n)
        rec_op = rec_opt = err_op = dist = None
        diverged = 0
        tc = time.perf_counter()
        if case.kind == "linear":
            phi = features(keys, case.degree)
            m_opt = lstsq_memory(phi, values)
            e_opt = rel_errors(phi @ m_opt, values)
            rec_opt = (e_opt < st.threshold).double().mean().item()
            if n in ns_op:
                m = write_linear(
                    phi, values, epochs=case.epochs, optimizer=st.optimizer,
                    kappa_cap=st.kappa_cap,
                )
                e = rel_errors(phi @ m, values)
                dist = ((m - m_opt).norm() / m_opt.norm()).item()
        else:
            w0 = _mlp_weights(case, st, n)
            if st.adam_steps:
                wa = fit_mlp_adam(keys, values, w0, steps=st.adam_steps)
                e_opt = rel_errors(mlp_memory_apply(keys, wa, kind="mlp"), values)
                rec_opt = (e_opt < st.threshold).double().mean().item()
            ws = write_mlp(keys, values, w0, epochs=case.epochs, lr=st.mlp_lr, beta=st.mlp_beta)
            e = rel_errors(mlp_memory_apply(keys, ws, kind="mlp"), values)
        if n in ns_op:
            rec_op = (e < st.threshold).double().mean().item()
            err_op = e.median().item()
            diverged = int((~torch.isfinite(e)).any(dim=-1).sum())
        rows.append(
            dict(n=n, recall_op=rec_op, recall_opt=rec_opt, median_err_op=err_op,
                 rel_dist_to_lstsq=dist, diverged_trials=diverged,
                 seconds=round(time.perf_counter() - tc, 2))
        )
        log(
            f"  {case.name:16s} N={n:4d} recall op={_fmt(rec_op)} {opt_label}={_fmt(rec_opt)}"
            f" median err op={_fmt(err_op, '.1e')} ({rows[-1]['seconds']:.1f}s)"
        )
    ns = [r["n"] for r in rows]
    cap_op = capacity_from_curve(ns, [r["recall_op"] for r in rows])
    cap_opt = capacity_from_curve(ns, [r["recall_opt"] for r in rows])
    return dict(
        name=case.name, kind=case.kind, degree=case.degree, epochs=case.epochs,
        feature_dim=width, params=params, optimum=opt_label, references=refs, rows=rows,
        capacity_op=cap_op, capacity_opt=cap_opt,
        seconds=round(time.perf_counter() - t0, 1),
    )


def run(st: Settings, log: Callable[[str], None] = print) -> dict:
    """Run every memory of ``st``; returns the JSON-able results."""
    t0 = time.perf_counter()
    cases = [run_case(c, st, log) for c in st.memories]
    return dict(
        settings={k: v for k, v in asdict(st).items() if k != "memories"},
        recall_level=RECALL_LEVEL, memories=cases, seconds=round(time.perf_counter() - t0, 1),
    )


# ----------------------------------------------------------------------------- report


def _fmt(x: float | int | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _cap(c: Sequence[int | None]) -> str:
    last_ok, first_fail = c
    if last_ok is None and first_fail is None:
        return "-"
    if first_fail is None:
        return f">= {last_ok} (no drop measured)"
    return f"{_fmt(last_ok, 'd')} (drops at {first_fail})"


def format_report(res: dict) -> str:
    """The per-memory recall tables and the capacity summary, as text."""
    st = res["settings"]
    out = [
        f"capacity: d_k = d_v = {st['dk']}, {st['trials']} trials per N, recalled if relative "
        f"error < {st['threshold']}, capacity = largest N with recall >= "
        f"{res['recall_level']:.0%}; op writes: {st['optimizer']} (linear), heavy-ball "
        f"(mlp, lr={st['mlp_lr']}, beta={st['mlp_beta']})",
    ]
    for m in res["memories"]:
        out.append("")
        out.append(f"{m['name']}  (features {m['feature_dim']}, params {m['params']}, "
                   f"E={m['epochs']} epochs, optimum: {m['optimum'] or 'none'})")
        out.append(f"  {'N':>5} {'recall op':>10} {'recall opt':>11} {'med err op':>11} "
                   f"{'|M-M_ls|/|M_ls|':>16}")
        for r in m["rows"]:
            out.append(
                f"  {r['n']:>5} {_fmt(r['recall_op']):>10} {_fmt(r['recall_opt']):>11} "
                f"{_fmt(r['median_err_op'], '.1e'):>11} "
                f"{_fmt(r['rel_dist_to_lstsq'], '.1e'):>16}"
                + (f"  diverged {r['diverged_trials']}" if r["diverged_trials"] else "")
            )
    out.append("")
    out.append(f"{'memory':16s} {'params':>6} {'capacity (op write)':>26} "
               f"{'capacity (optimum)':>26}  reference numbers")
    for m in res["memories"]:
        refs = ", ".join(f"{k}={v}" for k, v in m["references"].items())
        out.append(f"{m['name']:16s} {m['params']:>6} {_cap(m['capacity_op']):>26} "
                   f"{_cap(m['capacity_opt']):>26}  {refs}")
    out.append(f"total {res['seconds']:.1f}s")
    return "\n".join(out)


def plot(res: dict, path: Path) -> bool:
    """Recall vs N per memory (solid: op write, dashed: optimum); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, m in enumerate(res["memories"]):
        color = f"C{i}"
        pts = [(r["n"], r["recall_op"]) for r in m["rows"] if r["recall_op"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color=color, label=f"{m['name']} (op)")
        pts = [(r["n"], r["recall_opt"]) for r in m["rows"] if r["recall_opt"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "x--", color=color, alpha=0.6,
                    label=f"{m['name']} ({m['optimum']})")
        ref = m["references"].get("sphere_rank", m["references"].get("params/d_v"))
        ax.axvline(ref, color=color, ls=":", lw=1)
    st = res["settings"]
    ax.set_xscale("log")
    ax.set_xlabel("N pairs (dotted: rank on the sphere / params per value dim)")
    ax.set_ylabel(f"fraction recalled (rel. err < {st['threshold']})")
    ax.set_title(f"Memory capacity, d_k = d_v = {st['dk']}")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m atlas_search.bench.capacity", description=__doc__
                                 .split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/capacity"))
    ap.add_argument("--quick", action="store_true", help="a few points, seconds (for tests)")
    ap.add_argument("--dk", type=positive_int, default=8, help="key dimension (>= 1)")
    ap.add_argument("--trials", type=positive_int, default=None,
                    help="trials per point (default: the sweep's own)")
    ap.add_argument("--threshold", type=unit_float, default=0.1,
                    help="a pair is recalled when its relative error is below this, in (0, 1]")
    ap.add_argument("--optimizer", choices=("momentum", "gd"), default="momentum")
    ap.add_argument("--seed", type=nonneg_int, default=0)
    ap.add_argument("--threads", type=positive_int, default=1)
    args = ap.parse_args(argv)
    check_out(ap, "--out", args.out, is_dir=True)
    torch.set_num_threads(args.threads)
    st = default_settings(args.dk, args.quick)
    st = replace(st, threshold=args.threshold, optimizer=args.optimizer, seed=args.seed,
                 trials=st.trials if args.trials is None else args.trials)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float64")
    res = run(st)
    report = format_report(res)
    print()
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "capacity.json").write_text(json.dumps(res, indent=1))
    (args.out / "capacity.txt").write_text(report + "\n")
    png = args.out / "capacity.png"
    print(f"wrote {args.out / 'capacity.json'}, {args.out / 'capacity.txt'}"
          + (f", {png}" if plot(res, png) else " (no PNG: matplotlib is not installed)"))
    return res


if __name__ == "__main__":
    main()
