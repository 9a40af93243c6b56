"""titans-pytorch's ``NeuralMemory`` as a peer of our Titans memory layer (DESIGN §9: CPU
tokens/s against it on the same shapes).

The peer is built at the sizes of our layer: ``dim = d_model``, the same heads and head
dim, a 2-layer MLP memory with the same expansion, momentum, and ``chunk_size`` = our
chunk. Two settings are timed, since titans-pytorch's default is a cheaper algorithm:

* ``batch_size = chunk`` (``titans-pytorch c=chunk``): the memory weights are refreshed
  every ``chunk`` tokens and each chunk's gradients are taken at the weights of its start:
  the same sequential structure as our chunk-parallel form (T / chunk steps, parallel
  inside a chunk);
* ``batch_size = None`` (``titans-pytorch default``): every chunk's gradient is taken at
  the weights the call started with (one parallel pass, then a scan over the updates): not
  our recurrence, and cheaper.

The maths also differs in detail (per-chunk adaptive rates, its own projections and
norms, one weight set reading a chunk's queries where ours reads each token after its own
write), so these are rates of comparable layers, not of one equation. The package is an
optional peer (extra ``peers``); without it the rows are skipped with that reason.
"""

from __future__ import annotations

from torch import Tensor, nn

SETTINGS = ("chunk", "default")
"""Peer settings timed: ``batch_size = chunk`` and titans-pytorch's default (None)."""


def missing() -> str | None:
    """Why the peer cannot run here (None when titans-pytorch imports)."""
    try:
        import titans_pytorch  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (not installed, or a broken install)
        return (f"titans-pytorch is not importable ({type(exc).__name__}: {exc}); "
                "pip install -e '.[peers]'")
    return None


class PeerLayer(nn.Module):
    """``NeuralMemory`` returning only its retrieved values ``[B, T, dim]``."""

    def __init__(self, memory: nn.Module, d_model: int) -> None:
        super().__init__()
        self.memory = memory
        self.d_model = d_model

    def forward(self, x: Tensor) -> Tensor:
        return self.memory(x)[0]


def peer_layer(d_model: int, n_heads: int, head_dim: int, depth: int, expansion: float,
               chunk: int, setting: str) -> PeerLayer:
    """The titans-pytorch memory at these sizes, in one of :data:`SETTINGS`."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown peer setting {setting!r} (one of {', '.join(SETTINGS)})")
    from titans_pytorch import NeuralMemory

    memory = NeuralMemory(
        dim=d_model, chunk_size=chunk, batch_size=chunk if setting == "chunk" else None,
        dim_head=head_dim, heads=n_heads, momentum=True,
        default_model_kwargs={"depth": depth, "expansion_factor": float(expansion)})
    return PeerLayer(memory, d_model)


def label(setting: str, chunk: int) -> str:
    """The row name of a peer setting in tables."""
    return f"titans-pytorch c={chunk}" if setting == "chunk" else "titans-pytorch default"
