"""SwiGLU channel mixer of every block (DESIGN.md §5)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def swiglu_hidden(d_model: int, mlp_ratio: float) -> int:
    """``mlp_ratio * d_model`` rounded to the nearest multiple of 8 (at least 8)."""
    return max(8, 8 * round(mlp_ratio * d_model / 8))


class SwiGLU(nn.Module):
    """``W_2 (SiLU(W_1 x) * W_3 x)``, no biases, hidden width :func:`swiglu_hidden`."""

    def __init__(self, d_model: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = swiglu_hidden(d_model, mlp_ratio)
        self.w13 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)
