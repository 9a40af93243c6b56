"""The memory mixer: one test-time-memory layer (DESIGN.md §2-§5).

``x -> q, k, v = W_{q,k,v} x -> short causal depthwise conv -> SiLU -> l2-norm(q, k) ->
phi(q), phi(k) -> multi-head Omega op -> per-head RMSNorm -> * SiLU(W_g x) -> W_o``.

* ``phi``: ``identity``; ``poly`` (degree p, mode from the spec) with coefficients
  ``a_i = softplus(r_i)`` shared by q and k, ``r_i`` initialised so ``a_i = 1/i!``
  (learned when ``learn_poly_coeffs``, else a fixed buffer); ``exp`` routes the layer to the
  kernel-form op :func:`~atlas_search.ops.omega_kernel.omega_kernel` (scale 1, no features).
* Linear memory: :func:`~atlas_search.ops.omega_linear.omega_linear` with ``M_0 = 0``
  (not learned: the kernel form cannot represent a non-zero ``M_0`` either).
* Deep memory (``mlp``/``gated_mlp``): :func:`~atlas_search.ops.omega_mlp.omega_mlp` whose
  initial fast weights ``[H, in, out]`` are ``nn.Parameter``s (the outer loop learns them,
  DESIGN §4). Input width = width of ``phi(k)``, output width = ``head_dim``, hidden width =
  ``expansion * head_dim`` (not ``expansion * feature_dim``: with poly features that would be
  ``C(d+2, 2) * e`` wide). The op adds the residual ``x + branch`` only when in == out, i.e.
  for identity features.
* ``normalize`` (dot objective, linear memory): the read-out is divided by the same op run
  on ``v = 1``; for gd/momentum (and the exp kernel) that is one call with a ones column
  appended to ``v`` (the Hebbian update is column-wise), for muon a second call (Newton-Schulz
  mixes columns). Deep memory has no ``v = 1`` counterpart and is refused.

Gates: :mod:`.gates`. No ``no_grad`` anywhere: gradients reach projections, conv, gates,
``a_i`` and the initial deep-memory weights through the inner updates.

Recurrent path: :meth:`MemoryMixer.forward_chunk` continues a :class:`MemoryState` (conv
buffer + op state); the exp kernel has no fixed-size state, so the state keeps the whole
prefix of ``phi(q), k, v`` and gates and recomputes the read-out over it at each step
(O(T) per token like attention with a KV cache, but recomputed from the prefix, so that
``state_size``'s ``2 Dh`` per token undercounts what it holds: the prefix of ``phi(q)``
too).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.feature_maps import feature_dim, poly_features, taylor_coeffs
from ..ops.omega_kernel import omega_kernel
from ..ops.omega_linear import omega_linear, omega_state_size
from ..ops.omega_mlp import mlp_layer_shapes, omega_mlp
from ..spec.model import ModelSpec
from .conv import ShortConv
from .gates import Gates, MemoryGates
from .mixer_base import QKVMixer
from .norm import RMSNorm

L2_EPS = 1e-6


class MemoryState(NamedTuple):
    """Recurrent state of one memory mixer: ``conv`` buffer ``[B, K-1, 3*H*Dh]`` (or
    ``None`` without conv), ``op`` state of the previous call (``None`` = fresh), ``prefix``
    (exp kernel only) the tensors seen so far."""

    conv: Tensor | None
    op: Any
    prefix: dict[str, Tensor | None] | None


def deep_memory_shapes(
    fdim: int, head_dim: int, kind: str, depth: int, expansion: int
) -> list[tuple[int, int]]:
    """``(in, out)`` of every fast-weight matrix, in the order :func:`omega_mlp` expects:
    mlp ``[W_1 .. W_L]``, gated_mlp ``[W_a1, W_b1, ..., W_L]``; hidden = expansion * head_dim
    (the model's choice; the op's own ``init_mlp_weights`` scales by the input width)."""
    return mlp_layer_shapes(fdim, head_dim, kind, depth, expansion * head_dim)


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class MemoryMixer(QKVMixer):
    """One memory layer ``[B, T, d_model] -> [B, T, d_model]`` built from a ModelSpec."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        mem = spec.memory
        self.mem = mem
        self.d_model, self.n_heads = spec.d_model, spec.n_heads
        self.head_dim = spec.resolved_head_dim
        h, dh = self.n_heads, self.head_dim
        if mem.normalize and mem.kind != "linear":
            raise ValueError(
                "memory.normalize is defined for linear memory only (the read-out is divided "
                "by the same op on v = 1, which a deep memory with output width head_dim has "
                "no counterpart for); set normalize: false or kind: linear"
            )
        self.qkv = nn.Linear(self.d_model, 3 * h * dh, bias=False)
        self.conv = ShortConv(3 * h * dh, spec.short_conv) if spec.short_conv else None
        self.gates = MemoryGates(self.d_model, h, mem)
        self.kernel = mem.feature_map == "exp"
        if mem.feature_map == "poly":
            self.fdim = feature_dim(dh, mem.poly_degree, mem.poly_mode)
            raw = torch.tensor([_inv_softplus(a) for a in taylor_coeffs(mem.poly_degree)])
            if mem.learn_poly_coeffs:
                self.poly_raw = nn.Parameter(raw)
            else:
                self.register_buffer("poly_raw", raw)
        else:
            self.fdim = dh
        if mem.kind != "linear":
            shapes = deep_memory_shapes(self.fdim, dh, mem.kind, mem.depth, mem.expansion)
            ws = []
            for j, (d_in, d_out) in enumerate(shapes):
                # hidden N(0, 1/in); output N(0, 0.1^2/in): M starts near x (residual) or 0
                std = (0.1 if j == len(shapes) - 1 else 1.0) / math.sqrt(d_in)
                ws.append(nn.Parameter(torch.randn(h, d_in, d_out) * std))
            self.memory_weights = nn.ParameterList(ws)
        self.out_norm = RMSNorm((h, dh))
        self.g_proj = nn.Linear(self.d_model, h * dh, bias=False)
        self.o_proj = nn.Linear(h * dh, self.d_model, bias=False)

    # ------------------------------------------------------------------ pieces

    def poly_coeffs(self) -> Tensor:
        """``a_i = softplus(r_i) >= 0`` (``[p+1]``)."""
        return F.softplus(self.poly_raw)

    def feature_map(self, x: Tensor) -> Tensor:
        """``phi`` on l2-normalised ``x [..., Dh]`` (identity for identity and exp)."""
        if self.mem.feature_map != "poly":
            return x
        return poly_features(
            x, self.poly_coeffs().to(x.dtype), degree=self.mem.poly_degree, mode=self.mem.poly_mode
        )

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MemoryState:
        conv = None if self.conv is None else self.conv.init_cache(batch_size, device, dtype)
        return MemoryState(conv, None, {} if self.kernel else None)

    # ------------------------------------------------------------------ forward

    def _run(self, x: Tensor, state: MemoryState | None) -> tuple[Tensor, MemoryState]:
        b, t, _ = x.shape
        h, dh = self.n_heads, self.head_dim
        qkv, conv_state = self._project(x, state)
        q, k, v = F.silu(qkv).view(b, t, 3, h, dh).unbind(2)
        q = F.normalize(q, dim=-1, eps=L2_EPS)
        k = F.normalize(k, dim=-1, eps=L2_EPS)
        gates = self.gates(x)
        if self.kernel:
            o, prefix = self._kernel(q, k, v, gates, None if state is None else state.prefix)
            new = MemoryState(conv_state, None, prefix)
        else:
            prev = None if state is None else state.op
            o, op_state = self._explicit(self.feature_map(q), self.feature_map(k), v, gates, prev)
            new = MemoryState(conv_state, op_state, None)
        o = self.out_norm(o).reshape(b, t, h * dh) * F.silu(self.g_proj(x))
        return self.o_proj(o), new

    def _op_kwargs(self, g: Gates) -> dict[str, Any]:
        mem = self.mem
        return dict(
            alpha=g.alpha, eta=g.eta, gamma=g.gamma, theta=g.theta, window=mem.window,
            chunk_size=mem.chunk_size, optimizer=mem.optimizer, objective=mem.objective,
            backend=mem.backend,
        )

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, g: Gates, st: Any) -> tuple[Tensor, Any]:
        mem = self.mem
        kw = self._op_kwargs(g)
        if mem.kind != "linear":
            return omega_mlp(
                q, k, v, list(self.memory_weights), kind=mem.kind, activation=mem.activation,
                layer_norm=mem.layer_norm, ns_steps=mem.ns_steps, initial_state=st, **kw,
            )
        if not mem.normalize:
            return omega_linear(q, k, v, ns_steps=mem.ns_steps, initial_state=st, **kw)
        ones = v.new_ones(*v.shape[:3], 1)
        if mem.optimizer != "muon":  # column-wise update: one call with a ones column
            o, st = omega_linear(
                q, k, torch.cat([v, ones], -1), ns_steps=mem.ns_steps, initial_state=st, **kw
            )
            return o[..., :-1] / o[..., -1:], st
        num_st, den_st = (None, None) if st is None else st
        num, num_st = omega_linear(q, k, v, ns_steps=mem.ns_steps, initial_state=num_st, **kw)
        den, den_st = omega_linear(q, k, ones, ns_steps=mem.ns_steps, initial_state=den_st, **kw)
        return num / den, (num_st, den_st)

    def _kernel(
        self, q: Tensor, k: Tensor, v: Tensor, g: Gates, prefix: dict[str, Tensor | None] | None
    ) -> tuple[Tensor, dict[str, Tensor | None]]:
        t = q.shape[1]
        cur: dict[str, Tensor | None] = dict(q=q, k=k, v=v, **g._asdict())
        if prefix:  # recompute over the whole prefix (no fixed-size state exists)
            cur = {
                n: None if x is None else torch.cat([prefix[n], x], dim=1)  # type: ignore[list-item]
                for n, x in cur.items()
            }
        kw = self._op_kwargs(Gates(cur["alpha"], cur["eta"], cur["gamma"], cur["theta"]))
        o = omega_kernel(
            cur["q"], cur["k"], cur["v"], kernel="exp", normalize=self.mem.normalize, **kw
        )
        return o[:, o.shape[1] - t :], cur

    # ------------------------------------------------------------------ summary

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence needed to continue after ``seq_len`` tokens.

        Explicit memory: per head the op's fixed state (``M``, plus ``S`` for momentum/muon;
        for deep memory every fast-weight matrix) plus the window halo ``(c-1)(F+Dh+1)``
        (keys, values, gamma of the last ``c-1`` tokens); with ``normalize`` the extra
        value column (muon: a second state); with the ``l2`` objective, when ``seq_len`` is
        not a multiple of the chunk, the anchor (the memory at the chunk start, where the
        chunk's remaining gradients are taken: ``M``, or every fast-weight matrix). Exp
        kernel: the prefix, per head
        ``seq_len * (Dh + Dh)`` (keys and dual coefficients; ``+ seq_len * Dh`` momentum).
        Plus the conv buffer ``(K-1) * 3 * H * Dh``.
        """
        h, dh, mem = self.n_heads, self.head_dim, self.mem
        conv = 0 if self.conv is None else self.conv.state_size()
        if self.kernel:
            per_head = seq_len * (2 * dh + (dh if mem.optimizer == "momentum" else 0))
            return h * per_head + conv
        fdim = self.fdim
        halo = (mem.window - 1) * (fdim + dh + 1)
        if mem.kind == "linear":
            if mem.normalize and mem.optimizer == "muon":
                fixed = omega_state_size(fdim, dh, "muon") + omega_state_size(fdim, 1, "muon")
                halo += (mem.window - 1) * (fdim + 2)
            else:
                fixed = omega_state_size(fdim, dh + int(mem.normalize), mem.optimizer)
                halo += (mem.window - 1) * int(mem.normalize)
        else:
            shapes = deep_memory_shapes(fdim, dh, mem.kind, mem.depth, mem.expansion)
            n = sum(a * c for a, c in shapes)
            fixed = n * (1 if mem.optimizer == "gd" else 2)
        if mem.objective == "l2" and seq_len % mem.chunk_size:
            fixed += fdim * dh if mem.kind == "linear" else n
        return h * (fixed + halo) + conv

    def describe(self) -> str:
        """e.g. ``memory mlp x2 poly2 l2 c=4 muon``."""
        mem = self.mem
        kind = mem.kind if mem.kind == "linear" else f"{mem.kind} x{mem.depth}"
        phi = f"poly{mem.poly_degree}" if mem.feature_map == "poly" else mem.feature_map
        return f"memory {kind} {phi} {mem.objective} c={mem.window} {mem.optimizer}"
