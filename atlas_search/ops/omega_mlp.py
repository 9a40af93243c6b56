"""Deep (MLP) memory trained at test time by the Omega rule (DESIGN.md §2, §4).

Row-vector convention, one memory per (batch element, head). The memory ``M_W`` is

* ``mlp`` of depth ``L >= 2`` (ATLAS Eq. 42): ``h_0 = x``, ``h_l = act(h_{l-1} W_l)`` for
  ``l < L``, ``y = h_{L-1} W_L``;
* ``gated_mlp`` (ATLAS++, Eq. 43): depth 2 is ``y = (act(x W_a) * (x W_b)) W_c``. Depth
  ``L > 2`` generalises by gating every hidden layer:
  ``h_l = act(h_{l-1} W_{a,l}) * (h_{l-1} W_{b,l})`` for ``l < L`` and ``y = h_{L-1} W_L``.
  The matrices are listed in the order ``[W_a1, W_b1, W_a2, W_b2, ..., W_L]``.

Then ``M(x) = x + y`` when ``Dk == Dv`` (residual), else ``M(x) = y``. With
``layer_norm=True`` the branch is normalised without affine parameters:
``M(x) = x + LN(y)`` (or ``LN(y)`` without the residual).

Per-token loss: ``l2``: ``l_i(W) = 1/2 ||M_W(k_i) - v_i||^2``; ``dot``:
``l_i(W) = -<M_W(k_i), v_i>``. For every weight matrix separately (ATLAS Eq. 9/16, 32-33):

    G_t = sum_{i=max(1,t-c+1)}^{t} gamma_i * grad_W l_i(W_{t'}),   t' = b * floor((t-1)/b)
    gd:        W_t = alpha_t W_{t-1} - eta_t G_t
    momentum:  S_t = theta_t S_{t-1} - eta_t G_t ;   W_t = alpha_t W_{t-1} + S_t
    muon:      S_t = theta_t S_{t-1} + G_t ;          W_t = alpha_t W_{t-1} - eta_t NS_k(S_t)

and the read-out is ``o_t = M_{W_t}(q_t)`` (read after write).

Backends: ``reference`` is a per-token loop using ``torch.autograd.grad`` (with
``create_graph`` so the outer loop can differentiate through it; under
``torch.inference_mode`` the inner gradient is taken in a local non-inference block, so
the results equal those under ``no_grad``); ``torch`` is the
chunk-parallel form; ``triton`` and ``auto`` run the ``torch`` form (deep memory has no
Triton kernel: ``triton`` is accepted so one ``backend`` setting serves every memory kind).
The chunk-parallel form runs, per chunk, one forward/backward pass of the window tokens
(chunk plus ``c-1`` halo) at the anchor weights, by hand. Each layer's per-token gradient is
an outer product ``h_i^T delta_i``. Gates and the banded window mask then fold into a
``[n, n + c - 1]`` coefficient matrix ``C``. For gd and momentum the dual form
``u W_t = A_t (u W_s) [+ kappa_t (u S_s)] - (C * (U H^T)) Delta`` is applied layer by layer,
so per-token weights are never built. Muon builds the per-token ``S_t`` of a chunk and
orthogonalises them in one batched Newton-Schulz call.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .newton_schulz import newton_schulz

__all__ = [
    "MLPMemoryState",
    "init_mlp_weights",
    "mlp_memory_apply",
    "mlp_state_size",
    "omega_mlp",
]

KINDS = ("mlp", "gated_mlp")
ACTIVATIONS = ("gelu", "silu")
OPTIMIZERS = ("gd", "momentum", "muon")
OBJECTIVES = ("l2", "dot")
BACKENDS = ("auto", "reference", "torch", "triton")
LN_EPS = 1e-5
"""Epsilon of the affine-free LayerNorm on the memory branch (``F.layer_norm`` default)."""


class MLPMemoryState(NamedTuple):
    """Recurrent state after ``pos`` tokens, enough to continue the sequence exactly.

    ``weights``: ``W_pos`` per matrix, ``[B, H, in, out]``. ``momenta``: ``S_pos`` per matrix
    (``None`` for gd). ``anchor``: the weights ``W_{t'}`` at which the gradients of the next
    token are taken (equal to ``weights`` when ``pos`` is a multiple of the chunk size).
    ``k_hist [B, n, H, Dk]``, ``v_hist [B, n, H, Dv]``, ``gamma_hist [B, n, H]``: the last
    ``n = min(c - 1, pos)`` tokens, which stay in the window of the next tokens.
    ``pos``: tokens processed so far (chunk boundaries are multiples of ``b`` from 0).
    """

    weights: list[Tensor]
    momenta: list[Tensor] | None
    anchor: list[Tensor]
    k_hist: Tensor
    v_hist: Tensor
    gamma_hist: Tensor
    pos: int


@dataclass(frozen=True)
class _Arch:
    kind: str
    depth: int
    activation: str
    layer_norm: bool
    residual: bool

    @property
    def n_mats(self) -> int:
        return self.depth if self.kind == "mlp" else 2 * (self.depth - 1) + 1


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def mlp_layer_shapes(
    dk: int, dv: int, kind: str, depth: int, hidden: int
) -> list[tuple[int, int]]:
    """``(in, out)`` of every matrix in layer order (see the module docstring)."""
    if depth < 2:
        raise ValueError(f"deep memory needs depth >= 2, got {depth}")
    shapes: list[tuple[int, int]] = []
    d_in = dk
    for _ in range(depth - 1):
        shapes += [(d_in, hidden)] * (1 if kind == "mlp" else 2)
        d_in = hidden
    shapes.append((d_in, dv))
    return shapes


def _hidden_width(dk: int, expansion: float) -> int:
    return max(1, int(round(expansion * dk)))


def init_mlp_weights(
    h: int,
    dk: int,
    dv: int,
    *,
    kind: str,
    depth: int,
    expansion: float,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Initial fast weights ``[H, in, out]`` in layer order, hidden width ``expansion * dk``.

    Hidden matrices are ``N(0, 1/in)`` (variance preserving); the output matrix is
    ``N(0, (0.1)^2/in)``, so ``M`` starts close to the identity (residual) or to zero.
    """
    _check_choice("kind", kind, KINDS)
    shapes = mlp_layer_shapes(dk, dv, kind, depth, _hidden_width(dk, expansion))
    out = []
    for j, (d_in, d_out) in enumerate(shapes):
        scale = (0.1 if j == len(shapes) - 1 else 1.0) / math.sqrt(d_in)
        w = torch.randn(h, d_in, d_out, generator=generator, dtype=torch.float64) * scale
        out.append(w.to(dtype))
    return out


def mlp_state_size(
    dk: int, dv: int, *, kind: str, depth: int, expansion: float, optimizer: str
) -> int:
    """Floats of recurrent state per head: all weights, twice that with momenta."""
    _check_choice("kind", kind, KINDS)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    shapes = mlp_layer_shapes(dk, dv, kind, depth, _hidden_width(dk, expansion))
    n = sum(a * b for a, b in shapes)
    return n if optimizer == "gd" else 2 * n


# ----------------------------------------------------------------------------- the memory


def _act(z: Tensor, activation: str) -> Tensor:
    return F.gelu(z) if activation == "gelu" else F.silu(z)


def _act_prime(z: Tensor, activation: str) -> Tensor:
    """Derivative of the (exact, erf) GELU or SiLU, written in differentiable torch ops."""
    if activation == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))
        return cdf + z * pdf
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


MatMul = Callable[[int, Tensor], Tensor]


def _forward(
    x: Tensor, arch: _Arch, mm: MatMul
) -> tuple[Tensor, list[Tensor], list[tuple[Tensor, ...]], Tensor]:
    """``M(x)`` with ``mm(j, u) = u W_j``. Returns the output, the input of every matrix,
    the hidden pre-activations per hidden layer, and the branch output ``y``."""
    u = x
    inputs: list[Tensor] = []
    pres: list[tuple[Tensor, ...]] = []
    for layer in range(arch.depth - 1):
        if arch.kind == "mlp":
            inputs.append(u)
            z = mm(layer, u)
            pres.append((z,))
            u = _act(z, arch.activation)
        else:
            inputs += [u, u]
            za, zb = mm(2 * layer, u), mm(2 * layer + 1, u)
            pres.append((za, zb))
            u = _act(za, arch.activation) * zb
    inputs.append(u)
    y = mm(arch.n_mats - 1, u)
    branch = F.layer_norm(y, (y.shape[-1],), eps=LN_EPS) if arch.layer_norm else y
    out = x + branch if arch.residual else branch
    return out, inputs, pres, y


def _plain_mm(ws: Sequence[Tensor]) -> MatMul:
    return lambda j, u: u @ ws[j]


def _ln_backward(y: Tensor, g: Tensor) -> Tensor:
    """Vector-Jacobian product of the affine-free LayerNorm at ``y``."""
    mu = y.mean(-1, keepdim=True)
    yc = y - mu
    rstd = torch.rsqrt((yc * yc).mean(-1, keepdim=True) + LN_EPS)
    n = yc * rstd
    return rstd * (g - g.mean(-1, keepdim=True) - n * (g * n).mean(-1, keepdim=True))


def _grad_atoms(
    x: Tensor, v: Tensor, ws: Sequence[Tensor], arch: _Arch, objective: str
) -> tuple[list[Tensor], list[Tensor]]:
    """Per-token gradients at ``ws`` as outer products: ``grad_{W_j} l_i = X_j[i]^T D_j[i]``.

    ``x [..., n, Dk]``, ``v [..., n, Dv]``; returns ``(X_j [..., n, in], D_j [..., n, out])``.
    Hand-written backprop: ``dl/dM = M(k) - v`` (l2) or ``-v`` (dot), through the LN, then
    ``delta_L = dy``, ``delta_l = (delta_{l+1} W_{l+1}^T) * act'(z_l)`` (with the gate
    product rule for ``gated_mlp``).
    """
    out, inputs, pres, y = _forward(x, arch, _plain_mm(ws))
    g = out - v if objective == "l2" else -v.expand_as(out)
    if arch.layer_norm:
        g = _ln_backward(y, g)
    deltas: list[Tensor] = [g] * arch.n_mats
    last = arch.n_mats - 1
    deltas[last] = g
    g = g @ ws[last].transpose(-1, -2)
    for layer in reversed(range(arch.depth - 1)):
        if arch.kind == "mlp":
            (z,) = pres[layer]
            dz = g * _act_prime(z, arch.activation)
            deltas[layer] = dz
            if layer > 0:
                g = dz @ ws[layer].transpose(-1, -2)
        else:
            za, zb = pres[layer]
            dza = g * zb * _act_prime(za, arch.activation)
            dzb = g * _act(za, arch.activation)
            ja, jb = 2 * layer, 2 * layer + 1
            deltas[ja], deltas[jb] = dza, dzb
            if layer > 0:
                g = dza @ ws[ja].transpose(-1, -2) + dzb @ ws[jb].transpose(-1, -2)
    return inputs, deltas


def mlp_memory_apply(
    x: Tensor,
    weights: Sequence[Tensor],
    *,
    kind: str,
    activation: str = "gelu",
    layer_norm: bool = False,
) -> Tensor:
    """``M_W(x)`` for ``x [..., n, Dk]`` and weights ``[..., in, out]`` (see module doc)."""
    _check_choice("kind", kind, KINDS)
    _check_choice("activation", activation, ACTIVATIONS)
    arch = _infer_arch(weights, kind, activation, layer_norm)
    return _forward(x, arch, _plain_mm(weights))[0]


def _infer_arch(ws: Sequence[Tensor], kind: str, activation: str, layer_norm: bool) -> _Arch:
    n = len(ws)
    if kind == "mlp":
        depth = n
    else:
        if n < 3 or n % 2 == 0:
            raise ValueError(f"gated_mlp needs 2*(depth-1)+1 >= 3 matrices, got {n}")
        depth = (n - 1) // 2 + 1
    if depth < 2:
        raise ValueError(f"deep memory needs at least 2 weight matrices, got {n}")
    dk, dv = ws[0].shape[-2], ws[-1].shape[-1]
    hidden = ws[0].shape[-1]
    expect = mlp_layer_shapes(dk, dv, kind, depth, hidden)
    got = [tuple(w.shape[-2:]) for w in ws]
    if got != expect:
        raise ValueError(f"{kind} weight shapes (in, out) must be {expect}, got {got}")
    return _Arch(kind, depth, activation, layer_norm, dk == dv)


# ----------------------------------------------------------------------------- public op


def omega_mlp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    weights: Sequence[Tensor],
    *,
    kind: str,
    activation: str = "gelu",
    layer_norm: bool = False,
    alpha: Tensor | None,
    eta: Tensor | None,
    gamma: Tensor | None,
    theta: Tensor | None,
    window: int,
    chunk_size: int,
    optimizer: str,
    objective: str,
    ns_steps: int = 5,
    ns_coeffs: Sequence[tuple[float, float, float]] | None = None,
    initial_state: MLPMemoryState | None = None,
    backend: str = "auto",
) -> tuple[Tensor, MLPMemoryState]:
    """Omega-rule deep memory (DESIGN.md §2, §4); returns ``o [B, T, H, Dv]`` and the state.

    ``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]``; gates ``[B, T, H]``: ``alpha`` (``None`` = 1),
    ``eta`` (``None`` = 1), ``gamma`` (``None`` = 1), ``theta`` (required for momentum and
    muon, ignored by gd). ``weights``: initial matrices ``[H, in, out]`` or ``[B, H, in, out]``
    in layer order; they also fix the architecture (their values are unused when
    ``initial_state`` is given). Computation is in float64 for float64 ``q``, else float32;
    the output has ``q``'s dtype and the state the computation dtype.
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _check_choice("objective", objective, OBJECTIVES)
    _check_choice("backend", backend, BACKENDS)
    if not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if optimizer != "gd" and theta is None:
        raise ValueError(f"optimizer {optimizer!r} needs theta")
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"need q, k [B,T,H,Dk] and v [B,T,H,Dv], got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    arch = _infer_arch(weights, kind, activation, layer_norm)
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    if (weights[0].shape[-2], weights[-1].shape[-1]) != (Dk, Dv):
        raise ValueError(
            f"weights map {weights[0].shape[-2]} -> {weights[-1].shape[-1]}, but Dk={Dk}, Dv={Dv}"
        )
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    gates: dict[str, Tensor | None] = {}
    for name, gt in (("alpha", alpha), ("eta", eta), ("gamma", gamma), ("theta", theta)):
        if gt is not None and gt.shape != (B, T, H):
            raise ValueError(f"{name} must have shape {(B, T, H)}, got {tuple(gt.shape)}")
        gates[name] = None if gt is None else gt.to(dt).transpose(1, 2)  # [B, H, T]
    if optimizer == "gd":
        gates["theta"] = None
    if gates["eta"] is None:
        gates["eta"] = q.new_ones(B, H, T, dtype=dt)
    if gates["gamma"] is None:
        gates["gamma"] = q.new_ones(B, H, T, dtype=dt)

    if initial_state is None:
        w0 = []
        for w in weights:
            w = w.to(dt)
            if w.dim() == 3:
                w = w.unsqueeze(0).expand(B, *w.shape)
            if w.shape[:2] != (B, H):
                raise ValueError(f"weights must be [H,in,out] or [B,H,in,out], got {w.shape}")
            w0.append(w)
        s0 = None if optimizer == "gd" else [torch.zeros_like(w) for w in w0]
        st = MLPMemoryState(
            w0,
            s0,
            w0,
            k.new_zeros(B, 0, H, Dk, dtype=dt),
            v.new_zeros(B, 0, H, Dv, dtype=dt),
            q.new_zeros(B, 0, H, dtype=dt),
            0,
        )
    else:
        st = initial_state
        if (st.momenta is None) != (optimizer == "gd"):
            raise ValueError("initial_state momenta do not match the optimizer")

    qh, kh, vh = (x.to(dt).transpose(1, 2) for x in (q, k, v))  # [B, H, T, D]
    # the window halo from the previous call, prepended: ext index = hist length + j
    kext = torch.cat([st.k_hist.to(dt).transpose(1, 2), kh], dim=2)
    vext = torch.cat([st.v_hist.to(dt).transpose(1, 2), vh], dim=2)
    gext = torch.cat([st.gamma_hist.to(dt).transpose(1, 2), gates["gamma"]], dim=2)
    n_hist = st.k_hist.shape[1]
    cfg = _Cfg(arch, window, chunk_size, optimizer, objective, ns_steps, ns_coeffs)
    run = _reference_loop if backend == "reference" else _chunked
    o, w_fin, s_fin, anchor = run(
        qh, kext, vext, gext, n_hist, gates["alpha"], gates["eta"], gates["theta"], st, cfg
    )
    keep = min(window - 1, n_hist + T)
    te = kext.shape[2]
    new_state = MLPMemoryState(
        w_fin,
        s_fin,
        anchor,
        kext[:, :, te - keep :].transpose(1, 2),
        vext[:, :, te - keep :].transpose(1, 2),
        gext[:, :, te - keep :].transpose(1, 2),
        st.pos + T,
    )
    return o.transpose(1, 2).to(q.dtype), new_state


@dataclass(frozen=True)
class _Cfg:
    arch: _Arch
    c: int
    b: int
    optimizer: str
    objective: str
    ns_steps: int
    ns_coeffs: Sequence[tuple[float, float, float]] | None


_Run = tuple[Tensor, list[Tensor], "list[Tensor] | None", list[Tensor]]


# ----------------------------------------------------------------------------- reference


def _reference_loop(
    qh: Tensor,
    kext: Tensor,
    vext: Tensor,
    gext: Tensor,
    n_hist: int,
    alpha: Tensor | None,
    eta: Tensor,
    theta: Tensor | None,
    st: MLPMemoryState,
    cfg: _Cfg,
) -> _Run:
    """Per-token ground truth: ``G_t`` by ``torch.autograd.grad`` of
    ``sum_i gamma_i l_i(W_{t'})`` (create_graph when the outer loop needs gradients; under
    ``torch.inference_mode`` too, see :func:`_window_grad`)."""
    arch, c, b = cfg.arch, cfg.c, cfg.b
    T = qh.shape[2]
    W, S, anchor = (
        list(st.weights),
        (None if st.momenta is None else list(st.momenta)),
        list(st.anchor),
    )
    tensors = [qh, kext, vext, gext, eta, *W, *anchor, *(S or [])]
    tensors += [x for x in (alpha, theta) if x is not None]
    need_graph = torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    outs = []
    for j in range(T):
        t = st.pos + j + 1  # absolute, 1-indexed
        if (t - 1) % b == 0:
            anchor = W
        e = n_hist + j
        lo = max(0, e - c + 1)
        kw, vw, gw = kext[:, :, lo : e + 1], vext[:, :, lo : e + 1], gext[:, :, lo : e + 1]
        G = _window_grad(kw, vw, gw, anchor, cfg, need_graph)
        et = eta[:, :, j, None, None]
        at = 1.0 if alpha is None else alpha[:, :, j, None, None]
        if cfg.optimizer == "gd":
            W = [at * w - et * g for w, g in zip(W, G, strict=True)]
        elif cfg.optimizer == "momentum":
            assert S is not None and theta is not None
            th = theta[:, :, j, None, None]
            S = [th * s - et * g for s, g in zip(S, G, strict=True)]
            W = [at * w + s for w, s in zip(W, S, strict=True)]
        else:
            assert S is not None and theta is not None
            th = theta[:, :, j, None, None]
            S = [th * s + g for s, g in zip(S, G, strict=True)]
            W = [
                at * w - et * newton_schulz(s, cfg.ns_steps, cfg.ns_coeffs)
                for w, s in zip(W, S, strict=True)
            ]
        outs.append(_forward(qh[:, :, j : j + 1], arch, _plain_mm(W))[0])
    if (st.pos + T) % b == 0:
        anchor = W
    dv = st.weights[-1].shape[-1]
    o = torch.cat(outs, dim=2) if outs else qh.new_zeros(*qh.shape[:2], 0, dv)
    return o, W, S, anchor


def _window_grad(
    kw: Tensor, vw: Tensor, gw: Tensor, anchor: Sequence[Tensor], cfg: _Cfg, need_graph: bool
) -> tuple[Tensor, ...]:
    """``G = grad_W sum_i gamma_i l_i(W)`` at ``W = anchor`` by ``torch.autograd.grad``,
    one gradient per matrix (with a graph through it when ``need_graph``).

    Under ``torch.inference_mode`` autograd records nothing, and an inference tensor can be
    neither saved for backward nor made to require grad outside it. So the gradient is then
    taken in a local ``inference_mode(False)`` block, on normal copies (``clone``: the same
    values bit for bit) of every input that is an inference tensor: the same operations as
    under ``no_grad``, hence the same result. The gradients carry no graph; the caller's
    later updates, back in inference mode, give inference tensors as usual. Inference-tensor
    inputs outside inference mode (state kept from an inference-mode call) are copied too.
    """
    arch = cfg.arch

    def normal(x: Tensor) -> Tensor:
        return x.clone() if x.is_inference() else x

    local = (torch.inference_mode(False) if torch.is_inference_mode_enabled()
             else contextlib.nullcontext())
    with local, torch.enable_grad():
        kw, vw, gw = normal(kw), normal(vw), normal(gw)
        wg = [a if (need_graph and a.requires_grad) else normal(a).detach().requires_grad_(True)
              for a in anchor]
        m = _forward(kw, arch, _plain_mm(wg))[0]
        if cfg.objective == "l2":
            li = 0.5 * ((m - vw) ** 2).sum(-1)
        else:
            li = -(m * vw).sum(-1)
        return torch.autograd.grad((li * gw).sum(), wg, create_graph=need_graph)


# ----------------------------------------------------------------------------- chunked


def _decay(a: Tensor) -> Tensor:
    """``P [..., n+1, n+1]``, ``P[t, j] = prod_{l=j+1}^{t} a_l`` for ``t >= j`` (else 0);
    index 0 is the chunk start, so ``P[t, 0]`` is the cumulative product ``A_t``.
    Built by a cumprod down the columns (no division, no logs: zero gates are fine)."""
    n = a.shape[-1]
    a1 = torch.cat([a.new_ones(*a.shape[:-1], 1), a], dim=-1)
    idx = torch.arange(n + 1, device=a.device)
    strict = idx[:, None] > idx[None, :]
    z = torch.where(strict, a1[..., :, None], a.new_ones(()))
    p = torch.cumprod(z, dim=-2)
    return p * (idx[:, None] >= idx[None, :]).to(a.dtype)


def _chunked(
    qh: Tensor,
    kext: Tensor,
    vext: Tensor,
    gext: Tensor,
    n_hist: int,
    alpha: Tensor | None,
    eta: Tensor,
    theta: Tensor | None,
    st: MLPMemoryState,
    cfg: _Cfg,
) -> _Run:
    """Chunk-parallel form; chunk boundaries at absolute multiples of ``b``. A call that
    starts mid-chunk (continued state) runs a partial first chunk from the current weights,
    with gradients at the stored anchor."""
    c, b = cfg.c, cfg.b
    Bsz, H, T, _ = qh.shape
    W, S, anchor = (
        list(st.weights),
        (None if st.momenta is None else list(st.momenta)),
        list(st.anchor),
    )
    outs: list[Tensor] = []
    bounds: list[tuple[int, int]] = []
    c0 = 0
    while c0 < T:
        c1 = min(T, c0 + b - (st.pos + c0) % b)
        bounds.append((c0, c1))
        c0 = c1
    # split once instead of slicing per chunk: a slice's backward allocates a gradient of
    # the whole tensor, which made the backward pass quadratic in T
    sizes = [c1 - c0 for c0, c1 in bounds]

    def parts(x: Tensor | None, lead: int = 0) -> list:
        if x is None:
            return [None] * len(sizes)
        return list(torch.split(x, ([lead] if lead else []) + sizes, dim=2))

    q_p, a_p, e_p, t_p = parts(qh), parts(alpha), parts(eta), parts(theta)
    k_p, v_p, g_p = parts(kext, n_hist), parts(vext, n_hist), parts(gext, n_hist)
    if n_hist:
        hk, hv, hg = k_p.pop(0), v_p.pop(0), g_p.pop(0)
    else:
        hk, hv, hg = kext[:, :, :0], vext[:, :, :0], gext[:, :, :0]
    for i, (c0, c1) in enumerate(bounds):
        if (st.pos + c0) % b == 0:
            anchor = W
        e0, e1 = n_hist + c0, n_hist + c1
        kw = torch.cat([hk, k_p[i]], 2)
        vw = torch.cat([hv, v_p[i]], 2)
        gw = torch.cat([hg, g_p[i]], 2)
        w0 = e0 - hk.shape[2]
        xs, ds = _grad_atoms(kw, vw, anchor, cfg.arch, cfg.objective)
        # banded window mask: token e0+r sees ext tokens e0+r-c+1 .. e0+r
        ti = torch.arange(e0, e1, device=qh.device)[:, None]
        wi = torch.arange(w0, e1, device=qh.device)[None, :]
        band = ((wi <= ti) & (wi > ti - c)).to(qh.dtype)
        mg = band * gw[:, :, None, :]  # [B, H, n, nw]: gamma_i [i in window(t)]
        o_c, W, S = _chunk_step(q_p[i], xs, ds, mg, a_p[i], e_p[i], t_p[i], W, S, cfg)
        outs.append(o_c)
        keep = min(c - 1, kw.shape[2])
        cut = kw.shape[2] - keep
        hk, hv, hg = kw[:, :, cut:], vw[:, :, cut:], gw[:, :, cut:]
    if (st.pos + T) % b == 0:
        anchor = W
    dv = st.weights[-1].shape[-1]
    o = torch.cat(outs, dim=2) if outs else qh.new_zeros(Bsz, H, 0, dv)
    return o, W, S, anchor


def _chunk_step(
    u_q: Tensor,
    xs: list[Tensor],
    ds: list[Tensor],
    mg: Tensor,
    alpha: Tensor | None,
    eta: Tensor,
    theta: Tensor | None,
    W: list[Tensor],
    S: list[Tensor] | None,
    cfg: _Cfg,
) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
    """One chunk of ``n`` tokens from weights ``W`` (momenta ``S``), given the window
    gradients at the anchor as atoms ``grad_{W_j} l_i = xs[j][i]^T ds[j][i]`` and the gated
    band ``mg[t, i] = gamma_i [i in window(t)]``, so ``G_t = sum_i mg[t, i] X_i^T D_i``.

    With ``P^a[t, r] = prod_{r<l<=t} alpha_l``, ``A_t = P^a[t, 0]`` (likewise ``P^th``):
    gd: ``W_t = A_t W - sum_i C[t,i] X_i^T D_i``, ``C = (P^a * eta) mg``;
    momentum: ``S_t = Th_t S - sum_i Cs X_i^T D_i`` with ``Cs = (P^th * eta) mg`` and
    ``W_t = A_t W + kappa_t S - sum_i (P^a Cs)[t,i] X_i^T D_i``, ``kappa = P^a Th``;
    muon: ``S_t = Th_t S + sum_i (P^th mg)[t,i] X_i^T D_i`` materialised,
    ``W_t = A_t W - sum_r P^a[t,r] eta_r NS(S_r)``.
    Returns the read-outs ``M_{W_t}(q_t)`` and the end-of-chunk ``W``, ``S``.
    """
    arch, opt = cfg.arch, cfg.optimizer
    n = u_q.shape[2]
    if alpha is None:
        pa = torch.tril(u_q.new_ones(n + 1, n + 1)).expand(*u_q.shape[:2], n + 1, n + 1)
    else:
        pa = _decay(alpha)
    big_a = pa[..., 1:, 0]  # A_t
    pa1 = pa[..., 1:, 1:]
    a_n = big_a[..., -1, None, None]
    xts = [x.transpose(-1, -2) for x in xs]

    if opt == "gd":
        coef = (pa1 * eta[..., None, :]) @ mg  # C[t, i]

        def mm(j: int, u: Tensor) -> Tensor:
            return big_a[..., None] * (u @ W[j]) - (coef * (u @ xts[j])) @ ds[j]

        o_c = _forward(u_q, arch, mm)[0]
        cl = coef[..., -1, :, None]
        return o_c, [a_n * w - xt @ (cl * d) for w, xt, d in zip(W, xts, ds, strict=True)], None

    assert S is not None and theta is not None
    pt = _decay(theta)
    if opt == "momentum":
        cs = (pt[..., 1:, 1:] * eta[..., None, :]) @ mg
        cw = pa1 @ cs
        kappa = (pa1 @ pt[..., 1:, :1]).squeeze(-1)

        def mm(j: int, u: Tensor) -> Tensor:
            return (
                big_a[..., None] * (u @ W[j])
                + kappa[..., None] * (u @ S[j])
                - (cw * (u @ xts[j])) @ ds[j]
            )

        o_c = _forward(u_q, arch, mm)[0]
        cwl, csl = cw[..., -1, :, None], cs[..., -1, :, None]
        k_n, th_n = kappa[..., -1, None, None], pt[..., -1, 0, None, None]
        w_new = [
            a_n * w + k_n * s - xt @ (cwl * d) for w, s, xt, d in zip(W, S, xts, ds, strict=True)
        ]
        s_new = [th_n * s - xt @ (csl * d) for s, xt, d in zip(S, xts, ds, strict=True)]
        return o_c, w_new, s_new

    cs = pt[..., 1:, 1:] @ mg
    th = pt[..., 1:, 0, None, None]
    dw = pa1 * eta[..., None, :]  # W_t = A_t W - sum_r dw[t, r] NS(S_r)
    w_all: list[Tensor] = []
    s_new = []
    for w, s, x, d in zip(W, S, xs, ds, strict=True):
        # sum_i cs[t, i] x_i^T d_i as a batched [p, i] @ [i, q] product per token t
        s_all = th * s.unsqueeze(2) + (cs.unsqueeze(-2) * x.transpose(-1, -2).unsqueeze(-3)) @ (
            d.unsqueeze(-3)
        )
        nsv = newton_schulz(s_all, cfg.ns_steps, cfg.ns_coeffs)
        w_all.append(
            big_a[..., None, None] * w.unsqueeze(2)
            - (dw @ nsv.flatten(-2)).unflatten(-1, nsv.shape[-2:])
        )
        s_new.append(s_all[:, :, -1])

    def mm_muon(j: int, u: Tensor) -> Tensor:
        return (u.unsqueeze(-2) @ w_all[j]).squeeze(-2)

    o_c = _forward(u_q, arch, mm_muon)[0]
    return o_c, [w_t[:, :, -1] for w_t in w_all], s_new
