"""Rotary position embedding of the attention mixers (DESIGN.md §5-§6, Llama RoPE)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Rotary(nn.Module):
    """Rotate-half RoPE with base ``theta`` at absolute positions ``pos0 .. pos0 + T - 1``.

    Angles are computed in float64 on the fly (no buffer that ``.to(bfloat16)`` would
    round). An odd ``head_dim`` leaves its last channel unrotated.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.rot = head_dim - head_dim % 2
        self.theta = float(theta)

    def forward(self, x: Tensor, pos0: int = 0) -> Tensor:
        """``x [B, T, H, D]`` rotated as if its first token sat at position ``pos0``."""
        if self.rot == 0:
            return x
        t = x.shape[1]
        half = self.rot // 2
        inv = self.theta ** (
            -torch.arange(0, half, dtype=torch.float64, device=x.device) * 2 / self.rot
        )
        pos = torch.arange(pos0, pos0 + t, dtype=torch.float64, device=x.device)
        ang = pos[:, None] * inv[None, :]  # [T, half]
        cos = ang.cos().to(x.dtype)[None, :, None, :]
        sin = ang.sin().to(x.dtype)[None, :, None, :]
        x1, x2, rest = x[..., :half], x[..., half : self.rot], x[..., self.rot :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
