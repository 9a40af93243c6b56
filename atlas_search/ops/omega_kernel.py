"""Linear memory with a kernel feature map, computed in kernel (dual) form (DESIGN.md §2-§3).

The op is the linear-memory Omega rule of DESIGN §2 run on features ``phi`` whose kernel is
``kappa(x, y) = phi(x).phi(y)``, without ever building ``phi``:

- ``kernel="exp"``: ``kappa = exp(scale * x.y)``, the infinite Taylor map ``phi*`` of ATLAS
  Eq. 22-23 (DeepTransformers Eq. 26, Dot Eq. 27-31).
- ``kernel="poly"``: ``kappa = sum_{i<=p} a_i (scale * x.y)^i`` (default ``a_i = 1/i!``,
  the truncated Taylor kernel of ATLAS Eq. 4-5); with ``scale = 1`` it equals the explicit
  op on ``poly_features(., a, degree=p)`` (tensor or symmetric mode).

Dual form. With ``M_0 = 0`` every gradient ``G_t`` is a sum of ``phi(k_i)^T r_i`` (l2:
``r_i = gamma_i (phi(k_i) M_{t'} - v_i)``; dot: ``r_i = -gamma_i v_i``), so
``M_t = sum_j phi(k_j)^T U_t[j]`` with coefficient rows ``U_t: [T, Dv]`` (and ``S_t``
likewise for momentum). Then ``phi(k_i) M_{t'} = sum_j kappa(k_i, k_j) U_{t'}[j]``,
``o_t = sum_j kappa(q_t, k_j) U_t[j]``, and the optimizers act on rows:

    gd:        U_t = alpha_t U_{t-1} - eta_t g_t
    momentum:  S_t = theta_t S_{t-1} - eta_t g_t ;  U_t = alpha_t U_{t-1} + S_t
    g_t[i] = gamma_i (sum_j kappa(k_i, k_j) U_{t'}[j] - v_i)  (l2)  or  -gamma_i v_i  (dot)
             for i in the window [max(1, t-c+1), t], zero elsewhere; t' = b floor((t-1)/b).

``l2`` with ``c = b = 1``, no decay, is Dot's kernel delta rule
``u_t = eta_t (v_t - sum_{j<t} u_j kappa(k_j, k_t))``; ``dot`` with ``c = 1`` is causal
unnormalised kernel attention (``exp``: unnormalised softmax attention). Cost is
``O(T^2)`` like attention. Muon is not available: Newton-Schulz needs the explicit matrix
(use ``poly`` features with the explicit op instead). A non-zero ``M_0`` is not
representable in this form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from .feature_maps import taylor_coeffs

Backend = Literal["auto", "reference", "torch", "triton"]
Tensor = torch.Tensor


def omega_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    alpha: Tensor | float | None,
    eta: Tensor | float,
    gamma: Tensor | float | None,
    theta: Tensor | float | None,
    window: int,
    chunk_size: int,
    optimizer: str,
    objective: str,
    kernel: str = "exp",
    degree: int | None = None,
    coeffs: Tensor | Sequence[float] | None = None,
    scale: float = 1.0,
    normalize: bool = False,
    backend: Backend = "auto",
) -> Tensor:
    """Kernel-form linear-memory Omega rule; returns ``o: [B, T, H, Dv]``.

    ``q, k: [B, T, H, D]``, ``v: [B, T, H, Dv]``; gates ``[B, T, H]`` (or scalars):
    ``alpha`` retention (None = 1), ``eta`` step size, ``gamma`` window weights (None = 1),
    ``theta`` momentum decay (required for momentum, ignored for gd). ``window`` = c,
    ``chunk_size`` = b (anchor ``t' = b floor((t-1)/b)``). ``optimizer`` in {gd, momentum};
    ``objective`` in {l2, dot}. ``kernel`` exp or poly (``degree`` required for poly,
    ``coeffs [degree+1]`` default Taylor). ``normalize`` (dot only) divides by the same op
    run on ``v = 1``: with exp, c = 1 and unit gates this is causal softmax attention with
    logits ``scale * q.k`` (computed with a per-query max shift, which cancels exactly).
    ``backend``: ``reference`` (token loop), ``torch`` (chunked), ``auto`` = torch; ``triton``
    runs the torch form too (the kernel form has no Triton kernel; the name is accepted so one
    ``backend`` setting serves every memory kind).
    Half-precision inputs are computed in float32 and cast back.
    """
    if optimizer == "muon":
        raise ValueError(
            "omega_kernel supports optimizer 'gd' or 'momentum' only: Muon's Newton-Schulz "
            "step needs the explicit memory matrix, which the kernel form never builds; use "
            "'poly' features with the explicit linear-memory op instead"
        )
    if optimizer not in ("gd", "momentum"):
        raise ValueError(f"unknown optimizer {optimizer!r}; expected 'gd' or 'momentum'")
    if objective not in ("l2", "dot"):
        raise ValueError(f"unknown objective {objective!r}; expected 'l2' or 'dot'")
    if normalize and objective != "dot":
        raise ValueError(
            "normalize=True needs objective 'dot' (the normaliser is the op on v = 1, which "
            "is only a linear read-out weight for the Hebbian objective)"
        )
    if kernel not in ("exp", "poly"):
        raise ValueError(f"unknown kernel {kernel!r}; expected 'exp' or 'poly'")
    if int(window) < 1 or int(chunk_size) < 1:
        raise ValueError(f"window and chunk_size must be >= 1, got {window}, {chunk_size}")
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or v.ndim != 4:
        raise ValueError(
            f"expected q, k [B,T,H,D] and v [B,T,H,Dv]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if backend not in ("auto", "reference", "torch", "triton"):
        raise ValueError(f"unknown backend {backend!r}")

    out_dtype = v.dtype
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, T, H, _ = q.shape
    # internal layout [B, H, T, *]
    qh, kh, vh = (x.to(work).transpose(1, 2).contiguous() for x in (q, k, v))
    if normalize:  # numerator and normaliser in one pass: dot is column-wise in v
        vh = torch.cat([vh, vh.new_ones(B, H, T, 1)], dim=-1)

    def gate(g: Tensor | float | None, name: str, default: float | None) -> Tensor:
        if g is None:
            if default is None:
                raise ValueError(f"{name} is required for optimizer {optimizer!r}")
            g = default
        g = torch.as_tensor(g, dtype=work, device=q.device)
        if g.ndim == 0:
            return g.expand(B, H, T)
        if g.shape != (B, T, H):
            raise ValueError(f"gate {name} must be [B,T,H]={(B, T, H)}, got {tuple(g.shape)}")
        return g.to(work).transpose(1, 2)

    gates = {
        "alpha": gate(alpha, "alpha", 1.0),
        "eta": gate(eta, "eta", None),
        "gamma": gate(gamma, "gamma", 1.0),
        "theta": gate(theta, "theta", None) if optimizer == "momentum" else None,
    }

    if kernel == "poly":
        if degree is None or degree < 0:
            raise ValueError("kernel 'poly' needs degree >= 0")
        a = taylor_coeffs(degree) if coeffs is None else coeffs
        a = torch.as_tensor(a, dtype=work, device=q.device)
        if a.shape != (degree + 1,):
            raise ValueError(f"coeffs must have shape ({degree + 1},), got {tuple(a.shape)}")
    else:
        a = None
    kern = _Kernel(kernel, float(scale), a, shift=normalize and kernel == "exp")

    run = _reference if backend == "reference" else _chunked
    o = run(qh, kh, vh, gates, kern, int(window), int(chunk_size), optimizer, objective)
    if normalize:
        o = o[..., :-1] / o[..., -1:]
    return o.transpose(1, 2).to(out_dtype)


class _Kernel:
    """``kappa`` on blocks: ``x [..., n, D], y [..., m, D] -> [..., n, m]``.

    ``causal`` (bool ``[n, m]``, True = keep) zeroes masked pairs without evaluating exp on
    them; ``shift`` subtracts each row's max logit over kept pairs (exp only; it multiplies a
    query's kernel row by a constant, which normalisation cancels).
    """

    def __init__(self, kind: str, scale: float, coeffs: Tensor | None, shift: bool) -> None:
        self.kind, self.scale, self.coeffs, self.shift = kind, scale, coeffs, shift

    def __call__(
        self, x: Tensor, y: Tensor, causal: Tensor | None = None, q_side: bool = False
    ) -> Tensor:
        s = self.scale * (x @ y.transpose(-2, -1))
        if self.kind == "exp":
            if causal is not None:
                s = s.masked_fill(~causal, float("-inf"))
            if self.shift and q_side:
                s = s - s.amax(dim=-1, keepdim=True).detach()
            return s.exp()
        a = self.coeffs
        out = torch.zeros_like(s) + a[-1]
        for i in range(a.shape[0] - 2, -1, -1):  # Horner
            out = out * s + a[i]
        return out if causal is None else out * causal


def _reference(q, k, v, gates, kern, c, b, optimizer, objective):
    """Token loop over the coefficient rows (the ground truth; any float dtype)."""
    B, H, T, Dv = v.shape
    alpha, eta, gamma, theta = gates["alpha"], gates["eta"], gates["gamma"], gates["theta"]
    U = v.new_zeros(B, H, T, Dv)
    S = v.new_zeros(B, H, T, Dv)
    anchor = U
    outs = []
    for t in range(T):  # 0-indexed token t; state after it is M_{t+1}
        if t % b == 0:
            anchor = U  # M_{t'} with t' = b floor(t / b) tokens seen
        lo = max(0, t - c + 1)
        if objective == "l2":
            pred = kern(k[:, :, lo : t + 1], k[:, :, :t]) @ anchor[:, :, :t]
            r = pred - v[:, :, lo : t + 1]
        else:
            r = -v[:, :, lo : t + 1]
        g = F.pad(gamma[:, :, lo : t + 1, None] * r, (0, 0, lo, T - t - 1))
        a_t, e_t = alpha[:, :, t, None, None], eta[:, :, t, None, None]
        if optimizer == "gd":
            U = a_t * U - e_t * g
        else:
            S = theta[:, :, t, None, None] * S - e_t * g
            U = a_t * U + S
        kq = kern(q[:, :, t : t + 1], k[:, :, : t + 1], q_side=True)  # [B, H, 1, t+1]
        outs.append(kq @ U[:, :, : t + 1])
    return torch.cat(outs, dim=2)


def _decay_products(g: Tensor) -> tuple[Tensor, Tensor]:
    """For chunk gates ``g [B, H, L]``: ``from_anchor[t] = prod_{u<=t} g_u`` and the upper
    triangle ``P[s, t] = prod_{s<u<=t} g_u`` (zero for s > t). Cumprod, no division."""
    L = g.shape[-1]
    idx = torch.arange(L, device=g.device)
    later = idx[None, :] > torch.arange(-1, L, device=g.device)[:, None]  # [L+1, L]: u > s
    x = torch.where(later, g[..., None, :], torch.ones_like(g[..., None, :]))
    prod = x.cumprod(dim=-1)  # [B, H, L+1, L]
    upper = idx[:, None] <= idx[None, :]
    return prod[..., 0, :], prod[..., 1:, :] * upper


def _chunked(q, k, v, gates, kern, c, b, optimizer, objective):
    """Chunk-parallel form: per chunk, residuals at the anchor for the window rows (halo
    included), decay products folded into a coefficient matrix ``C [L, L+halo]``, read-out
    ``o = a * (kappa(Q, K_<t0) U_t0) - (C * kappa(Q, K_J)) R_J`` (DESIGN §2, dual form)."""
    B, H, T, Dv = v.shape
    alpha, eta, gamma, theta = gates["alpha"], gates["eta"], gates["gamma"], gates["theta"]
    momentum = optimizer == "momentum"
    U = v.new_zeros(B, H, 0, Dv)
    S = v.new_zeros(B, H, 0, Dv)
    outs = []
    for t0 in range(0, T, b):
        t1 = min(t0 + b, T)
        L, h0 = t1 - t0, max(0, t0 - c + 1)
        rows = torch.arange(h0, t1, device=v.device)  # window rows J
        steps = torch.arange(t0, t1, device=v.device)
        mask = (rows[None, :] <= steps[:, None]) & (rows[None, :] > steps[:, None] - c)
        gm = mask.to(v.dtype) * gamma[:, :, None, h0:t1]  # [B, H, L, |J|]

        if objective == "l2":
            r = -v[:, :, h0:t1]
            if t0 > 0:
                r = r + kern(k[:, :, h0:t1], k[:, :, :t0]) @ U
        else:
            r = -v[:, :, h0:t1]

        a_from, P = _decay_products(alpha[:, :, t0:t1])  # a_from[t], P[s, t]
        eta_c = eta[:, :, t0:t1, None]
        if momentum:
            th_from, Q = _decay_products(theta[:, :, t0:t1])
            m_from = (th_from[..., None, :] @ P).squeeze(-2)  # sum_u th_u P[u, t]
            D = eta_c * (Q @ P)  # D[s, t]: weight of g_s in U_t
            Ds = eta_c * Q  # weight of g_s in S_t
        else:
            D = eta_c * P
        C = D.transpose(-2, -1) @ gm  # [B, H, L, |J|]

        causal = steps[:, None] >= torch.arange(t1, device=v.device)[None, :]
        kq = kern(q[:, :, t0:t1], k[:, :, :t1], causal, q_side=True)  # [B, H, L, t1]
        o = -(C * kq[..., h0:]) @ r
        if t0 > 0:
            past = kq[..., :t0]
            o = o + a_from[..., None] * (past @ U)
            if momentum:
                o = o + m_from[..., None] * (past @ S)

        # next anchor: decay the carried rows, add the window rows' updates
        dU = F.pad(-C[..., -1, :, None] * r, (0, 0, h0, 0))
        newU = a_from[..., -1, None, None] * U
        if momentum:
            newU = newU + m_from[..., -1, None, None] * S
            Cs = Ds[..., -1][..., None, :] @ gm  # [B, H, 1, |J|]
            dS = F.pad(-Cs[..., 0, :, None] * r, (0, 0, h0, 0))
            S = F.pad(th_from[..., -1, None, None] * S, (0, 0, 0, L)) + dS
        U = F.pad(newU, (0, 0, 0, L)) + dU
        outs.append(o)
    return torch.cat(outs, dim=2)
