"""Causal depthwise short convolution on q/k/v (DESIGN.md §5; ATLAS §5.1, size 4)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShortConv(nn.Module):
    """Depthwise causal conv of ``size`` taps over time, no bias: ``y_t = sum_j w_j x_{t-j}``.

    ``forward(x [B, T, C], cache)`` continues from ``cache`` (the last ``size - 1`` inputs,
    ``[B, size-1, C]``; ``None`` = zeros before the sequence) and returns ``(y, new_cache)``,
    so token-by-token calls equal one call on the whole sequence (the rolling buffer of the
    recurrent path). Weights use ``nn.Conv1d``'s default init (uniform, bound 1/sqrt(size)).
    """

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"conv size must be >= 1, got {size}")
        self.channels, self.size = channels, size
        self.weight = nn.Parameter(torch.empty(channels, 1, size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def init_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch_size, self.size - 1, self.channels, device=device, dtype=dtype)

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, _, c = x.shape
        if cache is None:
            cache = self.init_cache(b, x.device, x.dtype)
        xx = torch.cat([cache.to(x.dtype), x], dim=1)  # [B, K-1+T, C]
        y = F.conv1d(xx.transpose(1, 2), self.weight.to(x.dtype), groups=c).transpose(1, 2)
        return y, xx[:, xx.shape[1] - (self.size - 1) :]

    def state_size(self) -> int:
        """Floats of the rolling buffer per sequence: ``(size - 1) * channels``."""
        return (self.size - 1) * self.channels
