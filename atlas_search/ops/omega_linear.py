"""Linear-memory Omega rule with gd / momentum / Muon inner optimizers (DESIGN.md §2).

Shapes (flash-linear-attention convention): ``q, k: [B, T, H, Dk]``, ``v: [B, T, H, Dv]``,
per-head scalar gates ``[B, T, H]``, memory ``M: [B, H, Dk, Dv]``, output
``o: [B, T, H, Dv]``, row-vector read-out ``o_t = q_t M_t`` (read after write).

With time 1-indexed, chunk size ``b``, window ``c`` and anchor ``t' = b * floor((t-1)/b)``::

    G_t = sum_{i=max(1,t-c+1)}^{t} gamma_i * grad l_i(M_{t'})
    l2:  grad l_i(M) = k_i^T (k_i M - v_i)        dot: grad l_i(M) = -k_i^T v_i
    gd:        M_t = alpha_t M_{t-1} - eta_t G_t
    momentum:  S_t = theta_t S_{t-1} - eta_t G_t ;  M_t = alpha_t M_{t-1} + S_t
    muon:      S_t = theta_t S_{t-1} + G_t ;        M_t = alpha_t M_{t-1} - eta_t NS_k(S_t)

Backends: ``"reference"`` (per-token loop, the oracle), ``"torch"`` (chunk-parallel dual
form), ``"triton"`` (the same dual form as Triton kernels, :mod:`.omega_triton`: gd and
momentum; muon, a continued state off a chunk boundary and any case Triton cannot run
use ``"torch"``, with one warning per reason except for muon), ``"auto"`` (``"triton"`` for
bf16/fp16 CUDA tensors, e.g. under autocast, when it can run the case, else ``"torch"``;
it warns only when the kernels fail to compile or launch). Chunk boundaries
are aligned to the absolute position stored in :class:`OmegaState`, so a sequence can be
processed in pieces of any length.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .newton_schulz import newton_schulz

OPTIMIZERS = ("gd", "momentum", "muon")
OBJECTIVES = ("l2", "dot")
BACKENDS = ("auto", "torch", "reference", "triton")


class OmegaState(NamedTuple):
    """Everything needed to continue an Omega-rule sequence exactly.

    ``memory``: ``M_T`` ``[B, H, Dk, Dv]``. ``momentum``: ``S_T`` (same shape) or ``None`` for
    gd. ``anchor``: ``M_{t'}`` with ``t' = b * floor(T / b)``, the frozen state the residuals
    of the chunk in progress are taken at (equals ``memory`` when ``T`` is a chunk boundary).
    ``halo_k [B, c-1, H, Dk]``, ``halo_v [B, c-1, H, Dv]``, ``halo_gamma [B, c-1, H]``: the
    last ``c-1`` tokens (zero-padded, with ``gamma = 0``, before the start of the sequence).
    ``position``: the absolute number of tokens consumed, ``T``.
    """

    memory: Tensor
    momentum: Tensor | None
    anchor: Tensor
    halo_k: Tensor
    halo_v: Tensor
    halo_gamma: Tensor
    position: int


def omega_state_size(dk: int, dv: int, optimizer: str) -> int:
    """Floats of recurrent state per head: ``M`` (``dk*dv``), plus ``S`` for momentum/muon.

    The anchor and the ``c-1``-token halo kept by :class:`OmegaState` for exact chunk-aligned
    continuation are not counted.
    """
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    return dk * dv * (1 if optimizer == "gd" else 2)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class _State(NamedTuple):
    """Internal state, head-major: memories ``[B,H,Dk,Dv]``, halo ``[B,H,c-1,D]``/``[B,H,c-1]``."""

    memory: Tensor
    momentum: Tensor | None
    anchor: Tensor
    halo_k: Tensor
    halo_v: Tensor
    halo_gamma: Tensor
    position: int


def _initial_state(
    initial_state: Tensor | OmegaState | None,
    q: Tensor,
    v: Tensor,
    window: int,
    optimizer: str,
) -> _State:
    b_, _, h, dk = q.shape
    dv = v.shape[-1]
    mshape = (b_, h, dk, dv)
    if isinstance(initial_state, OmegaState):
        st = initial_state
        if tuple(st.memory.shape) != mshape or tuple(st.anchor.shape) != mshape:
            raise ValueError(f"state memory/anchor must have shape {mshape}")
        if (st.momentum is None) != (optimizer == "gd"):
            raise ValueError(
                f"state momentum must be {'None' if optimizer == 'gd' else 'a tensor'} "
                f"for optimizer {optimizer!r}"
            )
        if st.momentum is not None and tuple(st.momentum.shape) != mshape:
            raise ValueError(f"state momentum must have shape {mshape}")
        if st.halo_k.shape[1] != window - 1:
            raise ValueError(
                f"state halo holds {st.halo_k.shape[1]} tokens, window {window} needs "
                f"{window - 1} (continue with the same window)"
            )
        return _State(
            st.memory,
            st.momentum,
            st.anchor,
            st.halo_k.transpose(1, 2),
            st.halo_v.transpose(1, 2),
            st.halo_gamma.transpose(1, 2),
            int(st.position),
        )
    if initial_state is None:
        m0 = q.new_zeros(mshape)
    elif isinstance(initial_state, Tensor):
        m0 = initial_state.expand(mshape)
    else:
        raise ValueError("initial_state must be None, a tensor M_0 or an OmegaState")
    s0 = None if optimizer == "gd" else torch.zeros_like(m0)
    halo = q.new_zeros if window > 1 else q.new_empty  # (window 1: empty, nothing to fill)
    return _State(
        m0,
        s0,
        m0,
        halo(b_, h, window - 1, dk),
        halo(b_, h, window - 1, dv),
        halo(b_, h, window - 1),
        0,
    )


def omega_linear(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    alpha: Tensor | None,
    eta: Tensor,
    gamma: Tensor,
    theta: Tensor | None,
    window: int,
    chunk_size: int,
    optimizer: str,
    objective: str,
    ns_steps: int = 5,
    initial_state: Tensor | OmegaState | None = None,
    backend: str = "auto",
) -> tuple[Tensor, OmegaState]:
    """Run the linear-memory Omega rule (DESIGN.md §2) and return ``(o, state)``.

    ``alpha`` (retention) may be ``None`` (= 1); ``theta`` (momentum decay) may be ``None``
    only for ``optimizer="gd"``. ``initial_state`` is ``None`` (``M_0 = 0``), a tensor ``M_0``
    broadcastable to ``[B, H, Dk, Dv]`` (fresh start, ``S_0 = 0``, position 0) or the
    :class:`OmegaState` of a previous call (same window, chunk size, optimizer, objective).
    Gradients flow to every input, gate and the initial state. ``backend``: ``"auto"``,
    ``"torch"``, ``"reference"`` or ``"triton"`` (module docstring; every backend returns
    the same :class:`OmegaState`, so calls chain across backends).
    """
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("backend", backend, BACKENDS)
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or v.dim() != 4:
        raise ValueError(
            f"expected q, k [B,T,H,Dk] and v [B,T,H,Dv], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    gshape = q.shape[:3]
    if alpha is None:
        alpha = q.new_ones(gshape)
    if theta is None and optimizer != "gd":
        raise ValueError(f"theta is required for optimizer {optimizer!r}")
    for name, g in (("alpha", alpha), ("eta", eta), ("gamma", gamma), ("theta", theta)):
        if (g is None and name != "theta") or (g is not None and g.shape != gshape):
            raise ValueError(f"gate {name} must have shape {tuple(gshape)}")

    st = _initial_state(initial_state, q, v, window, optimizer)
    res = None
    if backend in ("triton", "auto"):
        from . import omega_triton  # (imports no triton until a kernel is needed)

        # token-major in and out (theta None for gd: the kernels skip it)
        res = omega_triton.run(backend, q, k, v, alpha, eta, gamma, theta, st, window,
                               chunk_size, optimizer, objective)
    if res is not None:
        o, st = res
    else:
        args = [x.transpose(1, 2) for x in (q, k, v, alpha, eta, gamma)]
        th = (q.new_ones(gshape) if theta is None else theta).transpose(1, 2)  # gd: unused
        run = _omega_reference if backend == "reference" else _omega_torch
        o, st = run(*args, th, st, window, chunk_size, optimizer, objective, ns_steps)
        o = o.transpose(1, 2)
    state = OmegaState(
        st.memory,
        st.momentum,
        st.anchor,
        st.halo_k.transpose(1, 2),
        st.halo_v.transpose(1, 2),
        st.halo_gamma.transpose(1, 2),
        st.position,
    )
    return o, state


def _with_halo(halo: Tensor, x: Tensor) -> Tensor:
    """``cat(halo, x)`` along the time dim (dim 2); ``x`` itself (no copy) without a halo."""
    return x if halo.shape[2] == 0 else torch.cat([halo, x], dim=2)


def _new_halo(halo: Tensor, x: Tensor) -> Tensor:
    """Last ``window-1`` tokens of ``cat(halo, x)`` along the time dim (dim 2), as a new
    tensor of that size (no copy of all of ``x``, and the state keeps none of it alive)."""
    hl, t = halo.shape[2], x.shape[2]
    if hl == 0:
        return halo  # empty (window 1): nothing to keep
    if t >= hl:
        return x[:, :, t - hl :].clone()
    return torch.cat([halo[:, :, t:], x], dim=2)


def _omega_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    eta: Tensor,
    gamma: Tensor,
    theta: Tensor,
    st: _State,
    c: int,
    b: int,
    optimizer: str,
    objective: str,
    ns_steps: int,
) -> tuple[Tensor, _State]:
    """Per-token loop over DESIGN.md §2, head-major inputs ``[B, H, T, ...]``."""
    t_len = q.shape[2]
    kx = _with_halo(st.halo_k, k)
    vx = _with_halo(st.halo_v, v)
    gx = _with_halo(st.halo_gamma, gamma)
    m, s, anchor = st.memory, st.momentum, st.anchor
    outs = []
    for j in range(t_len):
        t = st.position + j + 1  # absolute, 1-indexed
        if (t - 1) % b == 0:
            anchor = m  # t' = t - 1: a chunk starts here
        kw, vw, gw = kx[:, :, j : j + c], vx[:, :, j : j + c], gx[:, :, j : j + c]
        e = kw @ anchor - vw if objective == "l2" else -vw
        g = torch.einsum("bhi,bhid,bhie->bhde", gw, kw, e)
        a_t = alpha[:, :, j, None, None]
        eta_t = eta[:, :, j, None, None]
        th_t = theta[:, :, j, None, None]
        if optimizer == "gd":
            m = a_t * m - eta_t * g
        elif optimizer == "momentum":
            s = th_t * s - eta_t * g
            m = a_t * m + s
        else:
            s = th_t * s + g
            m = a_t * m - eta_t * newton_schulz(s, ns_steps)
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, :, j], m))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape)
    if (st.position + t_len) % b == 0:
        anchor = m
    new = _State(
        m,
        s,
        anchor,
        _new_halo(st.halo_k, k),
        _new_halo(st.halo_v, v),
        _new_halo(st.halo_gamma, gamma),
        st.position + t_len,
    )
    return o, new


def _decay_matrix(g: Tensor) -> Tensor:
    """``D[..., t, n] = prod_{n < tau <= t} g[..., tau]`` for ``n <= t``, else 0.

    Built as a cumulative product down the columns of a masked ``[L, L]`` matrix, so the
    pairwise ratios of cumulative products are never formed by division (exact for tiny
    or zero gates, relative error ``<= L * eps``).
    """
    n = g.shape[-1]
    idx = torch.arange(n, device=g.device)
    strict = idx[:, None] > idx[None, :]
    x = g.unsqueeze(-1).expand(*g.shape, n).masked_fill(~strict, 1.0)
    # (mask multiply, not .tril(): CPU tril is parallelised at grain 0 and stalls under load)
    return torch.cumprod(x, dim=-2) * (idx[:, None] >= idx[None, :]).to(g.dtype)


def _window_mask(length: int, hl: int, device: torch.device) -> Tensor:
    """``band[t, i]``: row ``i`` of a chunk's ``length + hl`` window rows (the ``hl = c - 1``
    halo rows first) lies in the window of the chunk's token ``t``."""
    idx_t = torch.arange(length, device=device)[:, None]
    idx_i = torch.arange(length + hl, device=device)[None, :]
    return (idx_i <= idx_t + hl) & (idx_i >= idx_t)


class _DualCoeffs(NamedTuple):
    """Per-chunk coefficients of the gd / momentum dual form (``[..., L]`` / ``[..., L, N]``);
    the momentum-only ones are ``None`` for gd."""

    cum_a: Tensor  # A_t = prod_{tau<=t} alpha_tau
    c_m: Tensor  # C (gd) or C_M (momentum)
    c_s: Tensor | None  # C_S
    b_m: Tensor | None  # Bm = Dec_a Theta
    cum_th: Tensor | None  # Theta_t = prod_{tau<=t} theta_tau


def _window_weights(gw: Tensor, length: int, hl: int) -> Tensor:
    """``W[..., t, i] = gamma_i [i in window(t)]`` over a chunk's ``length + hl`` window rows
    (:func:`_window_mask`). For ``hl = 0`` (``c = 1``) ``W = diag(gamma)``, returned as its
    diagonal ``[..., length]`` so that products with it are column scalings
    (:func:`_times_w`), not matmuls with a mostly-zero matrix."""
    if hl == 0:
        return gw
    return gw.unsqueeze(-2) * _window_mask(length, hl, gw.device).to(gw.dtype)


def _times_w(dec: Tensor, w: Tensor) -> Tensor:
    """``dec @ W`` for ``W`` from :func:`_window_weights` (a matrix, or a diagonal)."""
    return dec @ w if w.dim() == dec.dim() else dec * w.unsqueeze(-2)


def _dual_coeffs(al: Tensor, et: Tensor, th: Tensor | None, wmat: Tensor,
                 momentum: bool) -> _DualCoeffs:
    """The decay products and the eta-weighted window matrix ``W`` folded into the dual-form
    coefficients of :func:`_omega_torch` (gd: ``C = Dec_a (eta * W)``; momentum:
    ``C_S = Dec_th (eta * W)``, ``C_M = Dec_a C_S``, ``Bm = Dec_a Theta``)."""
    cum_a = torch.cumprod(al, dim=-1)
    dec_a = _decay_matrix(al)
    ew = et.unsqueeze(-1) * wmat if wmat.dim() > et.dim() else et * wmat  # eta * W
    if not momentum:
        return _DualCoeffs(cum_a, _times_w(dec_a, ew), None, None, None)
    assert th is not None
    cum_th = torch.cumprod(th, dim=-1)
    c_s = _times_w(_decay_matrix(th), ew)
    b_m = (dec_a @ cum_th.unsqueeze(-1)).squeeze(-1)
    return _DualCoeffs(cum_a, dec_a @ c_s, c_s, b_m, cum_th)


def _blocks(x: Tensor, start: int, nc: int, size: int, step: int) -> Tensor:
    """``nc`` blocks of ``size`` along dim 2 starting at ``start`` with stride ``step``:
    ``[B, H, L, *rest] -> [B, H, nc, size, *rest]`` (a reshape when the blocks do not
    overlap, so autograd's backward is a view too, not ``unfold_backward``)."""
    if size == step:
        y = x[:, :, start : start + nc * size]
        return y.reshape(*x.shape[:2], nc, size, *x.shape[3:])
    y = x[:, :, start : start + (nc - 1) * step + size].unfold(2, size, step)
    return y.movedim(-1, 3)


def _omega_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: Tensor,
    eta: Tensor,
    gamma: Tensor,
    theta: Tensor,
    st: _State,
    c: int,
    b: int,
    optimizer: str,
    objective: str,
    ns_steps: int,
) -> tuple[Tensor, _State]:
    """Chunk-parallel form (DESIGN.md §2), head-major inputs ``[B, H, T, ...]``.

    For a chunk of ``L`` tokens starting from state ``M_s`` (and ``S_s``) with residuals
    ``E = K_I M_{t'} - V_I`` over the ``L + c - 1`` window tokens ``I`` (halo included),
    ``Dec_a[t, n] = prod_{n<tau<=t} alpha_tau``, ``A_t = prod_{tau<=t} alpha_tau`` (same for
    theta) and ``W[n, i] = gamma_i [i in window(n)]`` (``G = W``-weighted sum of
    ``k_i^T E_i``):

    * gd: ``C = Dec_a (eta * W)``; ``O = A * (Q M_s) - (C * Q K_I^T) E``;
      ``M_end = A_L M_s - K_I^T (C[L] * E)``.
    * momentum: ``C_S = Dec_th (eta * W)``, ``C_M = Dec_a Dec_th (eta * W)``,
      ``Bm = Dec_a Theta``; ``O = A * (Q M_s) + Bm * (Q S_s) - (C_M * Q K_I^T) E``;
      ``M_end = A_L M_s + Bm_L S_s - K_I^T (C_M[L] * E)``,
      ``S_end = Theta_L S_s - K_I^T (C_S[L] * E)``.
    * muon: ``S_t = Theta_t S_s + K_I^T diag(C[t]) E`` with ``C = Dec_th W`` for all ``t`` of
      the chunk at once, one batched NS call, ``M_t = A_t M_s - sum_n Dec_a[t,n] eta_n N_n``,
      ``o_t = q_t M_t``.
    """
    bsz, nh, t_len, _ = q.shape
    dv = v.shape[-1]
    hl = c - 1
    p0 = st.position
    kx = _with_halo(st.halo_k, k)
    vx = _with_halo(st.halo_v, v)
    gx = _with_halo(st.halo_gamma, gamma)

    # groups of equal-length chunks, aligned to absolute multiples of b:
    # (first partial chunk continuing a previous call), full chunks, last partial chunk
    groups: list[tuple[int, int, int]] = []  # (start, n_chunks, length)
    pos = 0
    if p0 % b and t_len:
        n0 = min(b - p0 % b, t_len)
        groups.append((0, 1, n0))
        pos = n0
    n_full = (t_len - pos) // b
    if n_full:
        groups.append((pos, n_full, b))
        pos += n_full * b
    if pos < t_len:
        groups.append((pos, 1, t_len - pos))

    m, s = st.memory, st.momentum
    anchor = st.anchor if p0 % b else m
    first = True
    outs: list[Tensor] = []
    for start, nc, length in groups:
        lw = length + hl
        qc = _blocks(q, start, nc, length, length)  # [B,H,nc,L,Dk]
        kw = _blocks(kx, start, nc, lw, length)  # [B,H,nc,L+c-1,Dk]
        vw = _blocks(vx, start, nc, lw, length)
        gw = _blocks(gx, start, nc, lw, length)  # [B,H,nc,L+c-1]
        al = _blocks(alpha, start, nc, length, length)  # [B,H,nc,L]
        et = _blocks(eta, start, nc, length, length)
        th = _blocks(theta, start, nc, length, length)

        wmat = _window_weights(gw, length, hl)  # [B,H,nc,L,L+c-1] (c = 1: its diagonal)
        if optimizer != "muon":
            cum_a, c_m, c_s, b_m, cum_th = _dual_coeffs(al, et, th, wmat, optimizer == "momentum")
            p_mat = c_m * (qc @ kw.transpose(-1, -2))  # [B,H,nc,L,L+c-1]
        else:
            cum_a = torch.cumprod(al, dim=-1)
            cum_th = torch.cumprod(th, dim=-1)
            c_s = _times_w(_decay_matrix(th), wmat)
            dec_eta = _decay_matrix(al) * et.unsqueeze(-2)

        # unbind once: indexing [:, :, j] per chunk would make autograd allocate a
        # gradient of the whole all-chunks tensor for every chunk (quadratic in T)
        kws, vws, qcs, cas = kw.unbind(2), vw.unbind(2), qc.unbind(2), cum_a.unbind(2)
        if optimizer != "muon":
            pms, cms = p_mat.unbind(2), c_m.unbind(2)
        if optimizer == "momentum":
            bms, cts, css = b_m.unbind(2), cum_th.unbind(2), c_s.unbind(2)
        if optimizer == "muon":
            cts, css, des = cum_th.unbind(2), c_s.unbind(2), dec_eta.unbind(2)

        for j in range(nc):
            if not first:
                anchor = m
            first = False
            kj, vj, qj = kws[j], vws[j], qcs[j]
            e = kj @ anchor - vj if objective == "l2" else -vj
            aj = cas[j]
            if optimizer == "gd":
                o = aj.unsqueeze(-1) * (qj @ m) - pms[j] @ e
                m = aj[..., -1, None, None] * m - kj.transpose(-1, -2) @ (
                    cms[j][:, :, -1, :, None] * e
                )
            elif optimizer == "momentum":
                bj = bms[j]
                o = aj.unsqueeze(-1) * (qj @ m) + bj.unsqueeze(-1) * (qj @ s) - pms[j] @ e
                kt = kj.transpose(-1, -2)
                m_new = (
                    aj[..., -1, None, None] * m
                    + bj[..., -1, None, None] * s
                    - kt @ (cms[j][:, :, -1, :, None] * e)
                )
                s = cts[j][:, :, -1, None, None] * s - kt @ (css[j][:, :, -1, :, None] * e)
                m = m_new
            else:
                s_all = cts[j][:, :, :, None, None] * s.unsqueeze(2) + torch.einsum(
                    "bhti,bhid,bhie->bhtde", css[j], kj, e
                )
                n_all = newton_schulz(s_all, ns_steps)  # [B,H,L,Dk,Dv], one batched call
                m_all = aj[..., None, None] * m.unsqueeze(2) - torch.einsum(
                    "bhtn,bhnde->bhtde", des[j], n_all
                )
                o = torch.einsum("bhtd,bhtde->bhte", qj, m_all)
                m, s = m_all[:, :, -1], s_all[:, :, -1]
            outs.append(o)

    o = torch.cat(outs, dim=2) if outs else v.new_zeros(bsz, nh, 0, dv)
    if (p0 + t_len) % b == 0:
        anchor = m
    new = _State(
        m,
        s,
        anchor,
        _new_halo(st.halo_k, k),
        _new_halo(st.halo_v, v),
        _new_halo(st.halo_gamma, gamma),
        p0 + t_len,
    )
    return o, new
