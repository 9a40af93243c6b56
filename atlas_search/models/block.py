"""Pre-norm residual block (DESIGN.md §5): ``x + Mixer(RMSNorm(x))`` then
``x + SwiGLU(RMSNorm(x))``; with ``mixing: mal`` an SWA layer sits between the two
(memory layer, then SWA layer, each pre-norm residual, then the MLP)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..spec.model import ModelSpec
from .attention import AttentionMixer
from .hybrid import MAGMixer, swa_mixer
from .memory_mixer import MemoryMixer
from .mlp import SwiGLU
from .norm import RMSNorm


class BlockState(NamedTuple):
    mixer: Any
    swa: Any  # MAL's SWA layer state, else None


def build_mixer(spec: ModelSpec) -> nn.Module:
    """The token mixer a ModelSpec asks for (memory, attention, swa, or MAG hybrid)."""
    if spec.mixer == "memory":
        return MAGMixer(spec) if spec.mixing == "mag" else MemoryMixer(spec)
    return AttentionMixer(
        spec.d_model, spec.n_heads, spec.resolved_head_dim,
        window=spec.swa_window if spec.mixer == "swa" else None,
        short_conv=spec.short_conv, rope_theta=spec.rope_theta,
    )


class Block(nn.Module):
    """One block; ``forward(x)`` and the recurrent ``forward_chunk(x, state)``."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.norm_mixer = RMSNorm(spec.d_model)
        self.mixer = build_mixer(spec)
        mal = spec.mixer == "memory" and spec.mixing == "mal"
        self.norm_swa = RMSNorm(spec.d_model) if mal else None
        self.swa = swa_mixer(spec) if mal else None
        self.norm_mlp = RMSNorm(spec.d_model) if spec.mlp == "swiglu" else None
        self.mlp = SwiGLU(spec.d_model, spec.mlp_ratio) if spec.mlp == "swiglu" else None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.norm_mixer(x))
        if self.swa is not None:
            x = x + self.swa(self.norm_swa(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm_mlp(x))
        return x

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> BlockState:
        swa = None if self.swa is None else self.swa.init_state(batch_size, device, dtype)
        return BlockState(self.mixer.init_state(batch_size, device, dtype), swa)

    def forward_chunk(self, x: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        y, sm = self.mixer.forward_chunk(self.norm_mixer(x), state.mixer)
        x = x + y
        sa = None
        if self.swa is not None:
            y, sa = self.swa.forward_chunk(self.norm_swa(x), state.swa)
            x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.norm_mlp(x))
        return x, BlockState(sm, sa)

    def state_size(self, seq_len: int) -> int:
        n = self.mixer.state_size(seq_len)
        return n + (0 if self.swa is None else self.swa.state_size(seq_len))

    def describe(self) -> str:
        d = self.mixer.describe()
        if self.swa is not None:
            d = f"{d} | {self.swa.describe()} (mal)"
        return d + (" + swiglu" if self.mlp is not None else "")
