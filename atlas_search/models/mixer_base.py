"""What the attention and memory mixers share: the fused q/k/v projection with its
optional short causal conv, and the parallel / continued entry points over one ``_run``."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class QKVMixer(nn.Module):
    """Subclasses set ``self.qkv`` (``d_model -> 3 H Dh``) and ``self.conv`` (or None), and
    implement ``_run(x, state) -> (y, state)``; ``state`` carries the conv cache as
    ``state.conv``."""

    qkv: nn.Linear
    conv: nn.Module | None

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, None)[0]

    def forward_chunk(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Continue ``state`` with the tokens ``x [B, T, d_model]`` (any ``T >= 1``)."""
        return self._run(x, state)

    def _run(self, x: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def _project(self, x: Tensor, state: Any) -> tuple[Tensor, Tensor | None]:
        """``(qkv [B, T, 3 H Dh], new conv cache)``: projection, then the short conv."""
        qkv = self.qkv(x)
        if self.conv is None:
            return qkv, None
        return self.conv(qkv, None if state is None else state.conv)
