"""Data-dependent gates of the memory mixer (DESIGN.md §2, §5), one scalar per head and token.

From the mixer input ``x_t`` (one fused linear map ``d_model -> n_gates * H`` with biases):

* ``alpha_t`` (retention): ``gated``: ``sigmoid(w.x_t + b)``, ``b = logit(0.97)`` so the
  memory starts forgetting slowly; ``fixed``: ``sigmoid(a_h)``, a learned constant per head
  broadcast over time (RetNet-style init ``a_h = logit(1 - 2^(-5-h))``); ``none``: ``None``
  (alpha = 1).
* ``eta_t = lr_max * sigmoid(w.x_t + b) / window`` with ``b = logit(0.1)``: a small inner
  step at init (0.1 lr_max / c), so early outer steps are not dominated by a noisy memory.
  Dividing by ``c`` keeps the windowed gradient sum on the scale of a single token's.
* ``gamma_i = sigmoid(w.x_i + b)``, ``b = logit(0.9)``, when ``window_gate``; else ones.
* ``theta_t = sigmoid(w.x_t + b)``, ``b = logit(0.9)`` (momentum and muon only; ``None``
  for gd).
* momentum only: the step is ``eta_t (1 - theta_t)``, so ``S`` is an exponential average of
  gradients whose steady-state step is ``eta_t`` (the same scale as gd). Without it the
  momentum sum multiplies the step by ``1 / (1 - theta) = 10`` at init, and 2-layer MLP
  memories (Titans) diverged to NaN within ~100 outer steps at lr 3e-3 (quickstart).

Weights use ``nn.Linear``'s default init. Only the gates the spec uses get parameters, so
every parameter receives a gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..spec.model import MemorySpec

ALPHA_INIT = 0.97
ETA_INIT = 0.1
GAMMA_INIT = 0.9
THETA_INIT = 0.9


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class Gates(NamedTuple):
    """Per-head gates ``[B, T, H]`` as the ops take them (``None`` where unused)."""

    alpha: Tensor | None
    eta: Tensor
    gamma: Tensor
    theta: Tensor | None


class MemoryGates(nn.Module):
    """``x [B, T, d_model] -> Gates`` for one memory mixer (see the module docstring)."""

    def __init__(self, d_model: int, n_heads: int, mem: MemorySpec) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.lr_scale = mem.lr_max / mem.window
        self.retention = mem.retention
        self.ema_momentum = mem.optimizer == "momentum"
        names = ["eta"]
        inits = [ETA_INIT]
        if mem.retention == "gated":
            names.append("alpha")
            inits.append(ALPHA_INIT)
        if mem.window_gate:
            names.append("gamma")
            inits.append(GAMMA_INIT)
        if mem.optimizer != "gd":
            names.append("theta")
            inits.append(THETA_INIT)
        self.names = tuple(names)
        self.proj = nn.Linear(d_model, len(names) * n_heads)
        with torch.no_grad():
            bias = torch.tensor([_logit(p) for p in inits]).repeat_interleave(n_heads)
            self.proj.bias.copy_(bias)
        if mem.retention == "fixed":
            h = torch.arange(n_heads, dtype=torch.float64)
            # logit(1 - 2^(-5-h)) in a form that stays finite for any h (1 - 2^-54 == 1)
            logit = torch.log1p(-(2.0 ** (-5.0 - h))) + (5.0 + h) * math.log(2.0)
            self.alpha_logit = nn.Parameter(logit.float())

    def forward(self, x: Tensor) -> Gates:
        b, t, _ = x.shape
        z = torch.sigmoid(self.proj(x)).view(b, t, len(self.names), self.n_heads)
        g = dict(zip(self.names, z.unbind(2), strict=True))
        alpha = g.get("alpha")
        if self.retention == "fixed":
            alpha = torch.sigmoid(self.alpha_logit).to(x.dtype).expand(b, t, self.n_heads)
        gamma = g.get("gamma")
        if gamma is None:
            gamma = x.new_ones(b, t, self.n_heads)
        eta = g["eta"] * self.lr_scale
        if self.ema_momentum:
            eta = eta * (1.0 - g["theta"])
        return Gates(alpha, eta, gamma, g.get("theta"))
