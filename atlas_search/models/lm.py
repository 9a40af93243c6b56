"""The language model (DESIGN.md §5): token embedding, ``n_layers`` pre-norm blocks, final
RMSNorm, output head tied to the embedding. Parallel ``forward`` for training and a
recurrent ``step`` / ``generate_logits`` for inference that equals it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..spec.model import ModelSpec
from .block import Block, BlockState
from .norm import RMSNorm

EMBED_STD = 0.02


class LM(nn.Module):
    """``forward(tokens [B, T]) -> logits [B, T, V]`` (see :meth:`forward` for ``positions``)."""

    def __init__(self, spec: ModelSpec, vocab_size: int) -> None:
        super().__init__()
        self.spec = spec
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, spec.d_model)
        nn.init.normal_(self.embed.weight, std=EMBED_STD)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.n_layers))
        self.norm_f = RMSNorm(spec.d_model)

    def _head(self, h: Tensor) -> Tensor:
        return self.norm_f(h) @ self.embed.weight.t()

    def hidden(self, tokens: Tensor) -> Tensor:
        """Final hidden states ``[B, T, d_model]`` before the final norm."""
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        """Logits at every position ``[B, T, V]``, or only at ``positions``:

        * bool ``[B, T]`` mask -> ``[N, V]`` (``N`` = number of True, row-major order,
          the same order as ``logits_full[mask]``);
        * bool ``[T]`` mask or long ``[P]`` -> ``[B, P, V]`` (the same positions in every row);
        * long ``[B, P]`` -> ``[B, P, V]`` (per-row positions).

        The blocks always run on the whole sequence (they are causal); only the final norm
        and the ``V``-wide head are restricted.
        """
        h = self.hidden(tokens)
        if positions is None:
            return self._head(h)
        if positions.dtype == torch.bool and positions.dim() == 2:
            return self._head(h[positions])
        if positions.dim() == 1:
            return self._head(h[:, positions])
        idx = positions.unsqueeze(-1).expand(-1, -1, h.shape[-1])
        return self._head(torch.gather(h, 1, idx))

    # ------------------------------------------------------------------ recurrent path

    def init_cache(self, batch_size: int) -> list[BlockState]:
        """Empty per-block recurrent state for ``batch_size`` sequences."""
        p = self.embed.weight
        return [b.init_state(batch_size, p.device, p.dtype) for b in self.blocks]

    def forward_chunk(
        self, tokens: Tensor, cache: list[BlockState]
    ) -> tuple[Tensor, list[BlockState]]:
        """Continue ``cache`` with ``tokens [B, T]``; returns ``(logits [B, T, V], cache)``."""
        x = self.embed(tokens)
        new = []
        for block, st in zip(self.blocks, cache, strict=True):
            x, st = block.forward_chunk(x, st)
            new.append(st)
        return self._head(x), new

    def step(self, token: Tensor, cache: list[BlockState]) -> tuple[Tensor, list[BlockState]]:
        """One token per sequence ``[B]`` -> ``(logits [B, V], cache)``."""
        logits, cache = self.forward_chunk(token[:, None], cache)
        return logits[:, 0], cache

    def generate_logits(self, tokens: Tensor) -> Tensor:
        """Logits ``[B, T, V]`` by a loop of :meth:`step` (equals :meth:`forward`)."""
        cache = self.init_cache(tokens.shape[0])
        out = []
        for t in range(tokens.shape[1]):
            logits, cache = self.step(tokens[:, t], cache)
            out.append(logits)
        return torch.stack(out, dim=1)
