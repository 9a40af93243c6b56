"""Softmax attention mixer: global causal or sliding window, RoPE (DESIGN.md §5-§6).

``x -> q, k, v = W_{q,k,v} x -> optional short causal depthwise conv (no activation) ->
RoPE(q, k) -> SDPA -> W_o``. ``window = None`` is global causal attention (``mixer:
attention``); ``window = w`` lets query ``i`` see keys ``j`` with ``i - w < j <= i`` (``w``
tokens, itself included; ``mixer: swa`` and the SWA branch of MAG/MAL).

Recurrent path: :meth:`AttentionMixer.forward_chunk` keeps a KV cache of RoPE-rotated keys
(the last ``w`` only for SWA), the conv buffer and the absolute position.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ShortConv
from .mixer_base import QKVMixer
from .rope import Rotary


class AttentionState(NamedTuple):
    """``conv`` buffer (or ``None``), cached ``k, v [B, n, H, Dh]``, tokens seen ``pos``."""

    conv: Tensor | None
    k: Tensor
    v: Tensor
    pos: int


class AttentionMixer(QKVMixer):
    """Multi-head causal softmax attention ``[B, T, d_model] -> [B, T, d_model]``."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        *,
        window: int | None = None,
        short_conv: int = 0,
        rope_theta: float = 10000.0,
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.head_dim, self.window = d_model, n_heads, head_dim, window
        self.qkv = nn.Linear(d_model, 3 * n_heads * head_dim, bias=False)
        self.conv = ShortConv(3 * n_heads * head_dim, short_conv) if short_conv else None
        self.rope = Rotary(head_dim, rope_theta)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> AttentionState:
        conv = None if self.conv is None else self.conv.init_cache(batch_size, device, dtype)
        empty = torch.zeros(batch_size, 0, self.n_heads, self.head_dim, device=device, dtype=dtype)
        return AttentionState(conv, empty, empty, 0)

    def _run(self, x: Tensor, state: AttentionState | None) -> tuple[Tensor, AttentionState]:
        b, t, _ = x.shape
        h, dh = self.n_heads, self.head_dim
        qkv, conv_state = self._project(x, state)
        q, k, v = qkv.view(b, t, 3, h, dh).unbind(2)
        pos0 = 0 if state is None else state.pos
        q, k = self.rope(q, pos0), self.rope(k, pos0)
        if state is not None and state.k.shape[1]:
            k = torch.cat([state.k.to(k.dtype), k], dim=1)
            v = torch.cat([state.v.to(v.dtype), v], dim=1)
        n = k.shape[1]  # keys: absolute positions pos0 + t - n .. pos0 + t - 1
        qh, kh, vh = (z.transpose(1, 2) for z in (q, k, v))
        if self.window is None and n == t:
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        else:
            i = torch.arange(n - t, n, device=x.device)[:, None]  # query index in key coords
            j = torch.arange(n, device=x.device)[None, :]
            mask = j <= i
            if self.window is not None:
                mask = mask & (j > i - self.window)
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
        o = self.o_proj(o.transpose(1, 2).reshape(b, t, h * dh))
        keep = n if self.window is None else min(n, self.window)
        new = AttentionState(conv_state, k[:, n - keep :], v[:, n - keep :], pos0 + t)
        return o, new

    def state_size(self, seq_len: int) -> int:
        """KV cache ``2 * H * Dh * min(seq_len, window)`` plus the conv buffer."""
        n = seq_len if self.window is None else min(seq_len, self.window)
        conv = 0 if self.conv is None else self.conv.state_size()
        return 2 * self.n_heads * self.head_dim * n + conv

    def describe(self) -> str:
        return "attention" if self.window is None else f"swa w={self.window}"
