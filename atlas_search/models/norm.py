"""RMSNorm (DESIGN.md §5: pre-norm blocks, per-head output norm of the memory mixer)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """``x / rms(x) * w``, the rms over the last dim only; computed in >= float32.

    ``shape`` is the gain's trailing shape, e.g. ``d_model``, or ``(n_heads, head_dim)`` for
    ``x`` of shape ``[..., n_heads, head_dim]``: then each head is normalised over its own
    ``head_dim`` channels and every (head, channel) has its own gain.
    """

    def __init__(self, shape: int | tuple[int, ...], eps: float = 1e-6) -> None:
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.shape))

    def forward(self, x: Tensor) -> Tensor:
        work = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(work)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(work)).to(x.dtype)
