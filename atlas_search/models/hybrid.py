"""Memory + sliding-window-attention hybrids (DESIGN.md §5, Titans §4.2-4.3, ATLAS Tab 2).

MAG (this module): memory and SWA as parallel branches on the same (normed) input::

    y_m = RMSNorm_m(Memory(x)),   y_a = RMSNorm_a(SWA(x)),   g = sigmoid(W_g x + b_g)
    out = g * y_m + (1 - g) * y_a          (g per channel, W_g: d_model -> d_model, b_g = 0)

Each branch is normalised with its own learnable vector gain (Titans: "normalize the outputs
y and M(x) using learnable vector-valued weights") and the learned, input-dependent sigmoid
gate mixes them convexly (g = 1/2 at init up to the weight noise). MAL is a block layout
(memory layer, then SWA layer), see :mod:`.block`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..spec.model import ModelSpec
from .attention import AttentionMixer, AttentionState
from .memory_mixer import MemoryMixer, MemoryState
from .norm import RMSNorm


class MAGState(NamedTuple):
    memory: MemoryState
    swa: AttentionState


def swa_mixer(spec: ModelSpec) -> AttentionMixer:
    """The SWA layer of the hybrids: ``swa_window``, the spec's short conv and RoPE base."""
    return AttentionMixer(
        spec.d_model, spec.n_heads, spec.resolved_head_dim, window=spec.swa_window,
        short_conv=spec.short_conv, rope_theta=spec.rope_theta,
    )


class MAGMixer(nn.Module):
    """Gated parallel memory + SWA branches (see the module docstring for the exact form)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.memory = MemoryMixer(spec)
        self.swa = swa_mixer(spec)
        self.norm_m = RMSNorm(spec.d_model)
        self.norm_a = RMSNorm(spec.d_model)
        self.gate = nn.Linear(spec.d_model, spec.d_model)
        nn.init.zeros_(self.gate.bias)

    def _combine(self, x: Tensor, ym: Tensor, ya: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(x))
        return g * self.norm_m(ym) + (1.0 - g) * self.norm_a(ya)

    def forward(self, x: Tensor) -> Tensor:
        return self._combine(x, self.memory(x), self.swa(x))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MAGState:
        return MAGState(
            self.memory.init_state(batch_size, device, dtype),
            self.swa.init_state(batch_size, device, dtype),
        )

    def forward_chunk(self, x: Tensor, state: MAGState) -> tuple[Tensor, MAGState]:
        ym, sm = self.memory.forward_chunk(x, state.memory)
        ya, sa = self.swa.forward_chunk(x, state.swa)
        return self._combine(x, ym, ya), MAGState(sm, sa)

    def state_size(self, seq_len: int) -> int:
        return self.memory.state_size(seq_len) + self.swa.state_size(seq_len)

    def describe(self) -> str:
        return f"{self.memory.describe()} | {self.swa.describe()} (mag)"
